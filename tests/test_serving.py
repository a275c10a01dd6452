"""Deployed models follow the registry: ``factsmith export`` writes a version out as a plain Hugging Face
directory, verified against the version's hash, atomically; ``factsmith serve-model`` answers with the champion
and follows it; every version is an MLflow pyfunc; promotion hooks tell deployments the champion moved."""

from __future__ import annotations

import copy
import os
import json
import time
from pathlib import Path

import pytest
import torch

from .test_flows import registry_home  # noqa: F401,F811 (a fixture, used by name)
from .test_registry import _env, gate_dir, make_edit, request, same_weights, save_base

pytestmark = pytest.mark.integration

NAME = "served"


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    """base (v1, champion) and one edit (v2) that changed two facts."""
    from editing.delta import Delta, LayerDelta, apply
    from registry import versions as V
    from registry.store import open_store
    from registry.weights import load_hf

    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, root / "home")
        base_dir = save_base(root / "base")
        store = open_store()
        v1, _ = V.init(base_dir, NAME, store=store)
        base, tok = load_hf(base_dir)
        m2, d2 = make_edit(base, 1, seed=1)
        # an edit large enough that greedy decoding of the random model changes (the server's answers must)
        d2 = Delta({k: LayerDelta(v.U * 300, v.V) for k, v in d2.layers.items()}, d2.meta)
        m2 = copy.deepcopy(base)
        apply(m2, d2)
        reqs = [request("r-pl", "Poland", "Nawrocki", "Duda"), request("r-fr", "France", "Bardella", "Macron", by="bob")]
        v2 = V.register(NAME, 1, m2, d2, requests=reqs, reports_dir=gate_dir(root / "gate2", True, 1.0),
                        edit_json={"format": "factsmith.edit/1", "method": "memit"}, store=store)
        yield {"store": store, "root": root, "base": base, "tok": tok, "m2": m2, "v1": v1, "v2": v2}


def test_export_loads_with_plain_transformers_and_is_the_versions_weights_bit_for_bit(reg, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from registry.export import export, read_manifest

    out = tmp_path / "v2"
    man = export(f"{NAME}/2", out, reg["store"])
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert same_weights(model, reg["m2"]) and not same_weights(model, reg["base"])
    assert tok("The head of state of Poland is")["input_ids"] == reg["tok"]("The head of state of Poland is")["input_ids"]
    assert not list(out.glob("*.bin")) and list(out.glob("*.safetensors"))
    assert read_manifest(out) == man
    assert man["model"] == NAME and man["version"] == 2 and man["weights_sha256"] == reg["v2"].weights_sha256
    assert [x["version"] for x in man["lineage"]] == [1, 2] and man["lineage"][1]["method"] == "memit"
    changed = {f["subject"]: f for f in man["facts_changed"]}
    assert set(changed) == {"Poland", "France"}
    assert (changed["France"]["old"], changed["France"]["new"], changed["France"]["requested_by"],
            changed["France"]["version"]) == ("Macron", "Bardella", "bob", 2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind

    champion = export(f"{NAME}@champion", tmp_path / "champion", reg["store"])
    assert champion["version"] == 1 and champion["facts_changed"] == [] and "champion" in champion["aliases"]


def test_export_refuses_a_full_directory_and_publishes_nothing_unverified(reg, tmp_path):
    from editing.modeldir import write_edited
    from registry.errors import IntegrityError, InvalidInputError
    from registry.export import export

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="--force"):
        export(f"{NAME}/2", out, reg["store"])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export(f"{NAME}/2", out, reg["store"], force=True)
    assert not (out / "keep.txt").exists() and json.loads((out / "factsmith.json").read_text())["version"] == 2

    def refuse(tmp):
        raise IntegrityError("no")

    with pytest.raises(IntegrityError):
        write_edited(reg["m2"], reg["tok"], out, tmp_path, {}, check=refuse)
    assert json.loads((out / "factsmith.json").read_text())["version"] == 2  # the old export, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]

    client = reg["store"].client()
    client.set_model_version_tag(NAME, "2", "weights_sha256", "0" * 64)
    try:
        with pytest.raises(IntegrityError, match="expected weights SHA-256 0000"):
            export(f"{NAME}/2", tmp_path / "tampered", reg["store"])
        assert not (tmp_path / "tampered").exists()
    finally:
        client.set_model_version_tag(NAME, "2", "weights_sha256", reg["v2"].weights_sha256)


def test_cli_export(reg, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()

    def run(*args):
        r = runner.invoke(app, list(args))
        lines = [x for x in r.stdout.splitlines() if x.strip()]
        return r.exit_code, json.loads(lines[-1]) if lines else None

    with pytest.MonkeyPatch.context() as mp:
        _env(mp, reg["root"] / "home")
        code, out = run("export", f"{NAME}/2", "--out", str(tmp_path / "x"), "--json")
        assert code == 0 and out["version"] == 2 and out["facts_changed"] == 2
        code, out = run("export", f"{NAME}/2", "--out", str(tmp_path / "x"), "--json")
        assert code == 2 and "--force" in out["error"]
        code, out = run("export", f"{NAME}/9", "--out", str(tmp_path / "y"), "--json")
        assert code == 2 and "9" in out["error"] and not (tmp_path / "y").exists()
    from safetensors.torch import load_file

    written = load_file(tmp_path / "x" / "model.safetensors")
    assert torch.equal(written["transformer.h.1.mlp.c_proj.weight"], reg["m2"].state_dict()["transformer.h.1.mlp.c_proj.weight"])


def _greedy(model, tok, prompt: str, n: int) -> str:
    """Greedy decoding the plain way (the whole sequence every step, no cache), up to the end-of-text token."""
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return tok.decode(new)


def test_the_server_answers_with_the_champion_follows_it_and_guards_reload(reg, monkeypatch):
    from fastapi.testclient import TestClient

    from flows.serving import ADMIN_TOKEN_ENV, ModelServer, create_app
    from registry import versions as V

    st = reg["store"]
    prompt = "The head of state of Poland is"
    want = {1: _greedy(reg["base"], reg["tok"], prompt, 8), 2: _greedy(reg["m2"], reg["tok"], prompt, 8)}
    assert want[1] != want[2]
    server = ModelServer(f"{NAME}@champion", st, poll_s=0.2)
    with TestClient(create_app(server, admin_token="s3cret")) as client:
        h = client.get("/health").json()
        assert (h["model"], h["version"], h["weights_sha256"]) == (NAME, 1, reg["v1"].weights_sha256)
        assert client.get("/v1/models").json()["data"][0]["id"] == NAME
        r = client.post("/v1/completions", json={"model": NAME, "prompt": [prompt, prompt], "max_tokens": 8})
        body = r.json()
        assert r.status_code == 200 and body["version"] == 1 and [c["text"] for c in body["choices"]] == [want[1]] * 2
        assert body["choices"][0]["finish_reason"] in ("length", "stop") and body["usage"]["completion_tokens"] > 0
        stop = want[1][len(want[1]) // 2:][:2]
        cut = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8, "stop": stop}).json()
        assert cut["choices"][0]["text"] == want[1][:want[1].index(stop)] and cut["choices"][0]["finish_reason"] == "stop"
        for bad, param in (({"prompt": prompt, "temperature": 0.7}, "temperature"), ({"prompt": ""}, "prompt"),
                           ({"prompt": prompt, "max_tokens": 0}, "max_tokens"), ({"prompt": prompt, "stop": [1]}, "stop")):
            r = client.post("/v1/completions", json=bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == param
        assert client.post("/v1/completions", json={"model": "other", "prompt": prompt}).status_code == 404

        V.promote(NAME, 2, store=st)  # the champion moves: the server follows within a few polls
        try:
            deadline = time.time() + 20
            while client.get("/health").json()["version"] != 2 and time.time() < deadline:
                time.sleep(0.1)
            assert client.get("/health").json()["version"] == 2
            body = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8}).json()
            assert body["version"] == 2 and body["choices"][0]["text"] == want[2]

            assert client.post("/admin/reload").status_code == 401
            assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
            V.promote(NAME, 1, store=st)
            server.poll_s = 3600  # no polling: only the reload moves it now
            r = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200 and r.json()["version"] == 1
        finally:
            V.promote(NAME, 1, store=st)
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    with TestClient(create_app(ModelServer(f"{NAME}@champion", st, poll_s=60))) as client:
        r = client.post("/admin/reload", headers={"Authorization": "Bearer "})
        assert r.status_code == 403 and ADMIN_TOKEN_ENV in r.json()["error"]["message"]


@pytest.mark.slow
def test_a_served_model_switches_to_the_promoted_version_without_a_failed_request(registry_home, tiny_build,
                                                                                   monkeypatch):
    """``factsmith serve-model tiny@champion`` in its own process; a client sends completions without pause while
    ``factsmith run --promote`` edits a capital and promotes the new version. The server switches within 10 s
    of the promotion, no request fails, and every answer is its version's greedy answer."""
    import socket
    import subprocess
    import sys
    import threading

    import httpx

    from flows.pipeline import run_lock
    from flows.serving import complete, load
    from registry import ledger as L

    from .test_flows import REPO, _capitals, _write

    h, store = registry_home
    monkeypatch.setenv("PREFECT_HOME", str(h / "prefect"))
    monkeypatch.setenv("FACTSMITH_ADMIN_TOKEN", "t0ken")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # the standing hooks file: the run's promotion tells the server (its poll is too slow to be what moves it)
    # and a command keeps the JSON it was given
    (h / "hooks.yaml").write_text(json.dumps({"timeout_s": 60, "hooks": [
        {"name": "reload", "url": f"{url}/admin/reload", "headers": {"Authorization": "Bearer ${FACTSMITH_ADMIN_TOKEN}"}},
        {"name": "keep", "command": [sys.executable, "-c",
                                     "import sys; open('delivered.json', 'wb').write(sys.stdin.buffer.read())"]}]}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve-model", "tiny@champion", "--port", str(port),
                             "--poll", "600"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    req = _capitals(tiny_build, 3, 1)[0]
    prompt = req["prompt"].replace("{}", req["subject"])
    log: list[tuple[float, int | None, str | None, str | None]] = []  # (time, version, text, error)
    stop = threading.Event()

    def client():
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6})
                    r.raise_for_status()
                    b = r.json()
                    log.append((time.time(), b["version"], b["choices"][0]["text"], None))
                except Exception as e:  # noqa: BLE001 -- every failure is counted
                    log.append((time.time(), None, None, f"{type(e).__name__}: {e}"))

    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).json()["version"] == 1:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.5)
        loop = threading.Thread(target=client)
        loop.start()
        _write(h / "inbox" / "a.jsonl", [req])
        # another run holds the model for the first 20 s: this one waits for it (--lock-timeout), then runs
        holding = threading.Event()

        def hold():
            with run_lock("tiny"):
                holding.set()
                time.sleep(20.0)

        threading.Thread(target=hold, daemon=True).start()
        assert holding.wait(30)
        t_run = time.time()
        run = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--inbox", str(h / "inbox"), "--promote",
                              "--json"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
                             capture_output=True, text=True, timeout=600)
        promoted_at = time.time()
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert promoted_at - t_run > 20
        assert json.loads(run.stdout.strip().splitlines()[-1])["promoted"]
        while time.time() < promoted_at + 10 and not any(v == 2 for _, v, _, _ in log):
            time.sleep(0.1)
        time.sleep(1.0)  # a few answers from the new version
        stop.set()
        loop.join(timeout=60)
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=30)
    errors = [e for _, _, _, e in log if e]
    assert errors == [] and len(log) > 10
    first_v2 = min(t for t, v, _, _ in log if v == 2)
    assert first_v2 - promoted_at < 10
    want = {v: complete(load(f"tiny/{v}", store), prompt, 6, [])[0] for v in (1, 2)}
    assert want[1].strip().startswith(req["target_true"]) and want[2].strip().startswith(req["target_new"])
    assert {v for _, v, _, _ in log} == {1, 2} and all(text == want[v] for _, v, text, _ in log)
    assert all(v == 2 for t, v, _, _ in log if t > first_v2)  # no going back
    got = json.loads((h / "delivered.json").read_text())
    assert (got["event"], got["model"], got["version"], got["previous_version"]) == ("promoted", "tiny", 2, 1)
    assert [(f["subject"], f["old"], f["new"]) for f in got["facts_changed"]] == [
        (req["subject"], req["target_true"], req["target_new"])]
    assert not [r for r in L.read("tiny") if r["event"] == "hook_failed"]


def test_every_version_loads_as_an_mlflow_pyfunc_from_code_and_mlflow_serves_it(reg):
    """No pickle: the MLmodel names the model code and the weights' hash; the weights come from the registry."""
    import socket
    import subprocess
    import sys

    import httpx
    import mlflow.pyfunc
    import yaml

    from registry.lineage import artifacts_dir

    st = reg["store"]
    prompt = "The head of state of Poland is"
    want = {1: _greedy(reg["base"], reg["tok"], prompt, 8), 2: _greedy(reg["m2"], reg["tok"], prompt, 8)}
    for v in (1, 2):
        folder = artifacts_dir(st.client(), st, reg[f"v{v}"])
        flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
        assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
        assert flavor["config"] == {"name": NAME, "weights_sha256": reg[f"v{v}"].weights_sha256}
        assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
        m = mlflow.pyfunc.load_model(f"models:/{NAME}/{v}")
        assert m.predict([prompt, prompt], params={"max_tokens": 8}) == [want[v]] * 2
    assert mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict([prompt], params={"max_tokens": 8}) == [want[1]]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            # mlflow runs 'uvicorn' from PATH: the environment's, as in an activated venv
                            env={**os.environ, "OMP_NUM_THREADS": "1",
                                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.5)
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [prompt], "params": {"max_tokens": 8}},
                       timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == [want[1]]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class _Receiver:
    """A webhook receiver on loopback: records every POST; answers 500 to the first ``fail`` of them."""

    def __init__(self, fail: int = 0):
        import http.server
        import threading

        self.posts: list[tuple[dict, bytes]] = []
        self.fail = fail
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 -- the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = 500 if len(outer.posts) <= outer.fail else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no" if code == 500 else b"ok")

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_promotion_hooks_are_called_retried_signed_and_a_failure_is_recorded_not_undone(reg, tmp_path, monkeypatch):
    """Placed last: it leaves version 3 (version 1's weights) as the champion."""
    import hashlib
    import hmac
    import socket
    import sys

    import yaml

    from registry import hooks as HK
    from registry import ledger as L
    from registry import versions as V
    from registry.store import aliases

    st = reg["store"]
    _env(monkeypatch, reg["root"] / "home")
    monkeypatch.setenv("HOOK_TOKEN", "tok-1")
    monkeypatch.setenv("HOOK_SECRET", "shh")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/gone"
    rx = _Receiver(fail=1)
    try:
        cfg = tmp_path / "hooks.yaml"
        cfg.write_text(yaml.safe_dump({"backoff_s": 0.05, "timeout_s": 10, "hooks": [
            {"name": "web", "url": rx.url, "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
             "secret_env": "HOOK_SECRET"},
            {"name": "cmd", "command": [sys.executable, "-c", "import sys, os; open('got-' + os.environ["
                                        "'FACTSMITH_EVENT'] + '.json', 'wb').write(sys.stdin.buffer.read())"]},
            {"name": "down", "url": dead, "retries": 2},
            {"name": "other-model", "url": dead, "models": ["not-this-one"]}]}))
        seq0 = len(L.read(NAME))
        V.promote(NAME, 2, requested_by="carol", store=st, hooks=HK.load(cfg))
        assert aliases(st.client(), NAME)["champion"] == 2  # the failed hook undid nothing
        (h1, b1), (h2, b2) = rx.posts  # one 500, one retry that succeeded: the same delivery
        assert b1 == b2 and h1["x-factsmith-delivery"] == h2["x-factsmith-delivery"]
        assert h2["authorization"] == "Bearer tok-1" and h2["x-factsmith-event"] == "promoted"
        assert h2["x-factsmith-signature"] == "sha256=" + hmac.new(b"shh", b2, hashlib.sha256).hexdigest()
        doc = json.loads(b2)
        assert json.loads((tmp_path / "got-promoted.json").read_bytes()) == doc  # the command got the same JSON
        assert (doc["event"], doc["model"], doc["version"], doc["previous_version"], doc["champion"],
                doc["weights_sha256"], doc["requested_by"]) == ("promoted", NAME, 2, 1, 2, reg["v2"].weights_sha256,
                                                                "carol")
        facts = {f["subject"]: f for f in doc["facts_changed"]}
        assert {s: (f["old"], f["new"], f["requested_by"], f["reverted"]) for s, f in facts.items()} == {
            "Poland": ("Duda", "Nawrocki", "alice", False), "France": ("Macron", "Bardella", "bob", False)}
        failed = [r for r in L.read(NAME)[seq0:] if r["event"] == "hook_failed"]
        assert [(r["hook"], r["on"], r["version"], r["attempts"]) for r in failed] == [("down", "promoted", 2, 3)]
        assert dead in failed[0]["error"]

        rx.posts.clear()
        back = V.rollback_to(NAME, 1, promote_now=True, reason="audit", store=st, hooks=HK.load(cfg))
        assert aliases(st.client(), NAME)["champion"] == back.version == 3
        doc = json.loads(rx.posts[-1][1])
        assert (doc["event"], doc["version"], doc["previous_version"], doc["reason"]) == ("rollback", 3, 2, "audit")
        assert {f["subject"]: (f["old"], f["new"], f["reverted"]) for f in doc["facts_changed"]} == {
            "Poland": ("Nawrocki", "Duda", True), "France": ("Bardella", "Macron", True)}
        assert (tmp_path / "got-rollback.json").is_file()
        assert [r["on"] for r in L.read(NAME)[seq0:] if r["event"] == "hook_failed"] == ["promoted", "rollback"]

        from typer.testing import CliRunner

        from flows.cli import app

        r = CliRunner().invoke(app, ["audit", "--name", NAME])  # the audit shows the failures
        assert r.exit_code == 0 and "hook down FAILED on rollback of version 3" in r.stdout
        r = CliRunner().invoke(app, ["promote", "2", "--name", NAME, "--hooks", str(cfg), "--json"])
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert r.exit_code == 0 and out["version"] == 2 and [(d["hook"], d["ok"]) for d in out["hooks"]] == [
            ("web", True), ("cmd", True), ("down", False)]
        V.promote(NAME, 3, store=st, hooks=HK.NONE)
    finally:
        rx.close()


@pytest.mark.parametrize("doc, where", [
    ({"hooks": [{"url": "ftp://x"}]}, "hooks[0].url"),
    ({"hooks": [{"name": "a", "url": "http://127.0.0.1:9/x", "headers": {"X": "${FACTSMITH_NOT_SET_ANYWHERE}"}}]},
     "hooks[0].headers.X"),
    ({"hooks": [{"command": ["true"], "events": ["promoted", "deleted"]}]}, "hooks[0].events"),
    ({"hooks": [{"url": "http://h/x", "command": "true"}]}, "hooks[0]"),
    ({"hooks": [{"command": "true", "retries": -1}]}, "hooks[0].retries"),
    ({"hook": []}, "'hook'"),
])
def test_a_malformed_hooks_file_refuses_the_promotion_naming_file_and_field(reg, tmp_path, monkeypatch, doc, where):
    """The standing file (FACTSMITH_HOME/hooks.yaml) is read before anything moves; so is --hooks (exit 2)."""
    import yaml
    from typer.testing import CliRunner

    from flows.cli import app
    from registry import hooks as HK
    from registry import versions as V
    from registry.store import aliases

    _env(monkeypatch, reg["root"] / "home")
    cfg = reg["root"] / "home" / "hooks.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    try:
        before = aliases(reg["store"].client(), NAME)["champion"]
        with pytest.raises(HK.HookConfigError) as e:
            V.promote(NAME, 2, store=reg["store"])
        assert str(cfg) in str(e.value) and where in str(e.value)
        r = CliRunner().invoke(app, ["promote", "2", "--name", NAME, "--hooks", str(cfg), "--json"])
        assert r.exit_code == 2 and where in json.loads(r.stdout.strip().splitlines()[-1])["error"]
        assert aliases(reg["store"].client(), NAME)["champion"] == before
    finally:
        cfg.unlink()
