"""Servers on 127.0.0.1 for the at-scale setup, started and stopped by a benchmark or a test: a private
PostgreSQL cluster (``initdb`` / ``pg_ctl`` in a temporary directory) and an ``mlflow server`` on it with basic
auth and proxied artifacts. Used by ``bench/registry.py --backend postgres`` and tests/test_flows_servers.py.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
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
def started(cmd: list[str], env: dict, log: Path):
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


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


@contextmanager
def postgres(password: str):
    """A private PostgreSQL cluster on 127.0.0.1 with databases ``mlflow`` and ``mlflow_auth``; yields the URI of
    the first (None where the server binaries are absent). Run as the ``postgres`` user when this is root (the
    server refuses root). Stopped (immediate) at the end."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        yield None
        return
    as_user: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="factsmith-pg-"))  # not under pytest's directories: they are 0700 root
    data = tmp / "pgdata"
    data.mkdir()
    pw = tmp / "pgpass"
    pw.write_text(password + "\n")
    if os.geteuid() == 0:
        import pwd

        try:
            u = pwd.getpwnam("postgres")
        except KeyError:
            yield None
            return
        as_user = ["runuser", "-u", "postgres", "--"]
        for p in (data, pw):
            os.chown(p, u.pw_uid, u.pw_gid)
        os.chmod(tmp, 0o755)
    port = free_port()
    subprocess.run(as_user + [initdb, "-D", str(data), "-U", "factsmith", "-A", "scram-sha-256", f"--pwfile={pw}",
                              "-E", "UTF8", "--no-instructions"], check=True, capture_output=True, timeout=120)
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "60", "-o",
                              f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=port, user="factsmith", password=password, dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
            cur.execute("CREATE DATABASE mlflow_auth")
        con.close()
        yield f"postgresql+psycopg2://factsmith:{password}@127.0.0.1:{port}"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def mlflow_server(tmp: Path, backend: str, env: dict, pg: str | None = None, admin_pw: str | None = None,
                  port: int | None = None):
    """An ``mlflow server`` on 127.0.0.1 (one worker, proxied artifacts under ``tmp``) on ``backend``; with
    ``pg`` (a :func:`postgres` URI) and ``admin_pw``, basic auth with its users in PostgreSQL too. Yields
    (the tracking URI, the environment a client needs: URI and, with auth, the admin's user and password)."""
    port = port or free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", str(tmp / "mlartifacts")]
    menv = dict(env)
    client = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    if pg and admin_pw:
        (tmp / "auth.ini").write_text(
            f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {pg}/mlflow_auth\nadmin_username = admin\n"
            f"admin_password = {admin_pw}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        cmd[2:2] = ["--app-name", "basic-auth"]
        menv.update(MLFLOW_AUTH_CONFIG_PATH=str(tmp / "auth.ini"), MLFLOW_FLASK_SERVER_SECRET_KEY="csrf-test-key")
        client.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin_pw)
    with started(cmd, menv, tmp / "mlflow.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/health", proc, tmp / "mlflow.log")
        yield client
