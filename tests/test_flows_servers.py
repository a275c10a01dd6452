"""At scale, for real: a ``prefect server`` and an ``mlflow server`` on 127.0.0.1, a process work pool and a
worker; the flow deployed from ``prefect.yaml``, triggered with an inbox, and its version, ledger records and
artifacts checked. Everything the test starts is stopped at the end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from .test_flows import _capitals, _write

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "tiny"
POOL = "factsmith-test"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url}: not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def _started(cmd: list[str], env: dict, log: Path):
    """A process in its own group, stopped (SIGINT twice, then SIGKILL) with its children at the end."""
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield p
    finally:
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
            if p.poll() is not None:
                break
            try:
                os.killpg(p.pid, sig)
                p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=30)


def _run(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_the_flow_deployed_to_a_work_pool_on_real_servers(tmp_path, tiny_build, home):
    h = tmp_path / "home"
    h.mkdir()
    (h / "cache").symlink_to(home / "cache", target_is_directory=True)
    from .test_flows import write_mechanics_policy

    write_mechanics_policy(h)
    mport, pport = _port(), _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(FACTSMITH_HOME=str(h), HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
               MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mport}", PREFECT_API_URL=f"http://127.0.0.1:{pport}/api",
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    inbox = tmp_path / "inbox"
    # Romania -> Ottawa: an edit the gate passes. The Czech Republic -> Washington, D.C. (fact 16) is refused on
    # generalization (0.0: the argmax stop leaves no margin and the held-out phrasings answer Prague)
    _write(inbox / "a.jsonl", _capitals(tiny_build, 17, 1))
    mlflow_cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
                  "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  "--artifacts-destination", str(tmp_path / "mlartifacts")]
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(pport)]
    with _started(mlflow_cmd, env, tmp_path / "mlflow.log") as ml, \
            _started(prefect_cmd, env, tmp_path / "prefect.log") as pf:
        _wait_http(f"http://127.0.0.1:{mport}/health", ml, tmp_path / "mlflow.log")
        _wait_http(f"http://127.0.0.1:{pport}/api/health", pf, tmp_path / "prefect.log")
        _run([str(BIN / "factsmith"), "registry", "init", "--model", str(tiny_build.path), "--name", NAME, "--json"], env)
        _run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], env)
        denv = {**env, "FACTSMITH_WORK_POOL": POOL, "FACTSMITH_INBOX": str(inbox), "FACTSMITH_MODEL": NAME}
        _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], denv)
        with _started([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"], env,
                      tmp_path / "worker.log"):
            r = _run([str(BIN / "prefect"), "deployment", "run", "fact_update/fact-update", "--watch",
                      "--watch-timeout", "600"], env, timeout=700)
            assert "Completed" in r.stdout + r.stderr, (r.stdout[-3000:], (tmp_path / "worker.log").read_text()[-4000:])

        # the version, on the MLflow server
        v = json.loads(_run([str(BIN / "factsmith"), "versions", "--json"], env).stdout)["versions"]
        assert [x["version"] for x in v] == [1, 2] and v[1]["gate_passed"] is True and "candidate" in v[1]["aliases"]
        # the ledger (under FACTSMITH_HOME, where the worker wrote it), intact
        audit = json.loads(_run([str(BIN / "factsmith"), "audit", "--verify", "--json"], env).stdout)
        assert audit["ok"]
        led = [json.loads(x) for x in (h / "registry" / "ledger" / f"{NAME}.jsonl").read_text().splitlines()]
        assert [(r["event"], r.get("version")) for r in led] == [("base", 1), ("applied", 2), ("run", 2)]
        # the inbox file moved; the flow's artifacts are on the Prefect server
        assert not list(inbox.glob("*.jsonl")) and len(list((inbox / "processed").glob("*.jsonl"))) == 1
        code = ("import asyncio\nfrom prefect.client.orchestration import get_client\n"
                "async def main():\n    async with get_client() as c:\n"
                "        print(sorted(a.key for a in await c.read_artifacts()))\nasyncio.run(main())\n")
        keys = _run([sys.executable, "-c", code], env).stdout
        assert "fact-update-tiny" in keys and "fact-update-tiny-requests" in keys
