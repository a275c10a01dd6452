"""At scale, for real: a PostgreSQL cluster (``initdb`` / ``pg_ctl`` in a temporary directory), an ``mlflow
server`` on it with basic auth and proxied artifacts, a ``prefect server``, a process work pool and a worker,
all on 127.0.0.1; the flow deployed from ``prefect.yaml``, triggered with an inbox, and its version, ledger
records and artifacts checked; a wrong password refused; two registrations racing from one parent through the
server, one refused by the optimistic check. Everything the test starts is stopped at the end. Where the
PostgreSQL server binaries are absent the servers run on a sqlite file and the PostgreSQL part is reported
skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.servers import BIN, REPO, free_port, mlflow_server, postgres, started, wait_http

from .test_flows import _capitals, _write

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "tiny"
POOL = "factsmith-test"


def _run(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_the_flow_deployed_to_a_work_pool_on_real_servers(tmp_path, tiny_build, home, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    (h / "cache").symlink_to(home / "cache", target_is_directory=True)
    from .test_flows import write_mechanics_hparams, write_mechanics_policy

    write_mechanics_policy(h)
    hparams = write_mechanics_hparams(h)
    mport, pport = free_port(), free_port()
    admin_pw = "s3cret-admin-pw"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(FACTSMITH_HOME=str(h), HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
               MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mport}", PREFECT_API_URL=f"http://127.0.0.1:{pport}/api",
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    inbox = tmp_path / "inbox"
    # Romania -> Ottawa: an edit the gate passes. The Czech Republic -> Washington, D.C. (fact 16) is refused on
    # generalization (0.0: the argmax stop leaves no margin and the held-out phrasings answer Prague)
    _write(inbox / "a.jsonl", _capitals(tiny_build, 17, 1))
    with postgres("pg-pw-1") as pg:
        _on_servers(tmp_path, h, env, inbox, tiny_build, mport, pport, pg, admin_pw, monkeypatch, hparams)
    if pg is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) or a 'postgres' user are absent: the servers ran on "
                    "a sqlite file; install Debian's postgresql package for the PostgreSQL part")


def _on_servers(tmp_path, h, env, inbox, tiny_build, mport, pport, pg, admin_pw, monkeypatch, hparams):
    backend = f"{pg}/mlflow" if pg else f"sqlite:///{tmp_path / 'mlflow.db'}"
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(pport)]
    # the Prefect server starts while the MLflow server does (each takes 15-20 s on 2 cores)
    with started(prefect_cmd, env, tmp_path / "prefect.log") as pf, \
            mlflow_server(tmp_path, backend, env, pg, admin_pw, port=mport) as client:
        env.update(client)
        wait_http(f"http://127.0.0.1:{pport}/api/health", pf, tmp_path / "prefect.log")
        _run([str(BIN / "factsmith"), "registry", "init", "--model", str(tiny_build.path), "--name", NAME, "--json"], env)
        _run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], env)
        denv = {**env, "FACTSMITH_WORK_POOL": POOL, "FACTSMITH_INBOX": str(inbox), "FACTSMITH_MODEL": NAME}
        _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], denv)
        with started([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"], env,
                      tmp_path / "worker.log"):
            r = _run([str(BIN / "prefect"), "deployment", "run", "fact_update/fact-update", "--param",
                      f"hparams_file={hparams}", "--watch", "--watch-timeout", "600"], env, timeout=700)
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
        if pg:
            _wrong_password_and_racing_registrations(tmp_path, env, monkeypatch)


def _wrong_password_and_racing_registrations(tmp_path, env, monkeypatch):
    """A wrong password is refused (exit 1, the server's 401 named); two processes registering from one parent
    through the server: one version; the other, behind it on the lock, refused by the newest-version check."""
    import multiprocessing

    from .test_registry import _race_worker, save_base

    race = "race"

    bad = subprocess.run([str(BIN / "factsmith"), "versions", "--json"], env={**env, "MLFLOW_TRACKING_PASSWORD": "nope"},
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "401" in bad.stdout + bad.stderr, (bad.stdout[-2000:], bad.stderr[-2000:])
    out = json.loads(bad.stdout.strip().splitlines()[-1])
    assert out["ok"] is False and "401" in out["error"]

    base_dir = save_base(tmp_path / "race-base")
    _run([str(BIN / "factsmith"), "registry", "init", "--model", str(base_dir), "--name", race, "--json"], env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(str(base_dir), seed, barrier, results, race))
             for seed in (21, 22)]
    for p in procs:
        p.start()
    got = [results.get(timeout=400) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(g[0] for g in got) == ["refused", "registered"], got
    v = json.loads(_run([str(BIN / "factsmith"), "versions", "--name", race, "--json"], env).stdout)["versions"]
    assert [x["version"] for x in v] == [1, 2]
