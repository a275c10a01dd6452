"""The registry on a real sqlite MLflow store: init, register, aliases, promotion, bit-exact loading and
rollback, audit and diff, ledger tamper detection, and two processes racing to register from one parent."""

from __future__ import annotations

import copy
import json
import multiprocessing
import shutil
from pathlib import Path

import pytest
import torch

from .tiny_models import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.integration

NAME = "tiny"


# --------------------------------------------------------------------------------------------------
# helpers


def _env(mp, home: Path) -> None:
    mp.setenv("FACTSMITH_HOME", str(home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'registry' / 'mlflow.db'}")
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.setenv("DO_NOT_TRACK", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")


def save_base(path: Path, seed: int = 0) -> Path:
    model = tiny_model("gpt2", seed=seed, vocab=300)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def make_edit(model, layer: int, seed: int, base_sha: str | None = None):
    """(edited copy of ``model``, its delta): random rank-2 factors on one MLP output matrix."""
    from editing.arch import edit_matrix, spec_for, weight_out_in
    from editing.delta import Delta, LayerDelta, apply, weights_sha256

    g = torch.Generator().manual_seed(seed)
    W = weight_out_in(edit_matrix(model, layer))  # (out, in)
    d = Delta({spec_for(model).mlp_out_at(layer): LayerDelta(torch.randn(W.shape[0], 2, generator=g) * 0.1,
                                                             torch.randn(W.shape[1], 2, generator=g) * 0.1)},
              {"method": "memit", "hparams": {"layers": [layer], "seed": seed},
               "base_weights_sha256": base_sha or weights_sha256(model)})
    edited = copy.deepcopy(model)
    apply(edited, d)
    return edited, d


def request(rid: str, subject: str, new: str, old: str, relation: str = "head_of_state", by: str = "alice"):
    from validation.requests import Request

    return Request(id=rid, subject=subject, prompt="The head of state of {} is", target_new=new, target_true=old,
                   relation=relation, requested_by=by, source="news", reason="election")


def gate_dir(path: Path, passed: bool, reliability: float) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    metrics = {"reliability": reliability, "generalization": 0.8, "locality": 0.97, "kl": 0.01}
    (path / "gate.json").write_text(json.dumps({"passed": passed, **metrics, "metrics": metrics}))
    (path / "gate.md").write_text(f"# Gate: {'PASSED' if passed else 'FAILED'}\n")
    (path / "gate.html").write_text("<html><body>gate</body></html>\n")
    return path


def client_metrics(reg, info) -> dict[str, float]:
    return reg["store"].client().get_run(info.run_id).data.metrics


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------------
# one store for the module: base (v1), a passing edit (v2), a failing edit that supersedes a fact (v3)


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    from registry import versions as V
    from registry.store import open_store
    from registry.weights import load_hf

    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, root / "home")
        base_dir = save_base(root / "base")
        store = open_store()
        v1, created = V.init(base_dir, NAME, store=store)
        base, tok = load_hf(base_dir)
        m2, d2 = make_edit(base, 1, seed=1)
        r_pl, r_fr = request("r-pl", "Poland", "Nawrocki", "Duda"), request("r-fr", "France", "Bardella", "Macron")
        v2 = V.register(NAME, 1, m2, d2, requests=[r_pl, r_fr], reports_dir=gate_dir(root / "gate2", True, 1.0),
                        edit_json={"format": "factsmith.edit/1", "method": "memit"}, store=store)
        m3, d3 = make_edit(m2, 2, seed=2)
        r_pl2 = request("r-pl2", "Poland", "Tusk", "Nawrocki", by="bob")
        # a real gate report; the strict norm-growth threshold makes it fail
        from validation.gate.metrics import run_gate
        from validation.gate.policy import GatePolicy
        from validation.gate.report import write_reports

        # a random model's edit moves p(new) past p(old) (reliability_p) without making greedy decoding say it:
        # only the norm-growth threshold is meant to fail here
        report = run_gate(m2, m3, tok, [r_pl2], GatePolicy(max_norm_growth=1.0, min_reliability=0.0,
                                                           min_generalization=0.0))
        write_reports(report, root / "gate3")
        v3 = V.register(NAME, 2, m3, d3, requests=[r_pl2], reports_dir=root / "gate3",
                        rejected=[(request("r-de", "Germany", "Merz", "Scholz"), "gate: reliability 0.0 < 0.9")],
                        store=store)
        yield {"store": store, "root": root, "base_dir": base_dir, "base": base, "m2": m2, "m3": m3, "d2": d2,
               "v1": v1, "v2": v2, "v3": v3, "created": created, "report3": report}


# --------------------------------------------------------------------------------------------------
# names, URIs


def test_tracking_uri_defaults_to_sqlite_under_home_and_honours_the_env(tmp_path, monkeypatch):
    from registry.store import tracking_uri

    monkeypatch.setenv("FACTSMITH_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{(tmp_path / 'registry' / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking_uri() == "http://mlflow.internal:5000"


def test_names_and_references_are_strict():
    from registry.errors import InvalidInputError
    from registry.refs import Ref, check_name, parse_ref

    for bad in ("", "..", ".x", "a/b", "a b", "x'", "../etc", "a\\b", "-x", "x" * 101):
        with pytest.raises(InvalidInputError, match="model name"):
            check_name(bad)
    assert parse_ref("tiny@champion") == Ref("tiny", alias="champion")
    assert parse_ref("models:/tiny/3") == Ref("tiny", version=3)
    for bad in ("tiny", "tiny/0", "tiny/x", "../x/1", "tiny@"):
        with pytest.raises(InvalidInputError):
            parse_ref(bad)


# --------------------------------------------------------------------------------------------------
# init, register, aliases, promotion


def test_init_registers_version_1_as_champion_and_is_idempotent(reg, tmp_path):
    from editing.delta import weights_sha256
    from registry import versions as V
    from registry.errors import InvalidInputError, RegistryError
    from registry.store import local_path

    v1 = reg["v1"]
    assert reg["created"] and v1.version == 1 and v1.kind == "base" and "champion" in V.resolve(f"{NAME}/1").aliases
    assert v1.weights_sha256 == weights_sha256(reg["base"])
    again, created = V.init(reg["base_dir"], NAME, store=reg["store"])
    assert not created and again.version == 1
    other = save_base(tmp_path / "other", seed=7)
    with pytest.raises(RegistryError, match="already registered with base weights"):
        V.init(other, NAME, store=reg["store"])
    pickled = tmp_path / "pickled"  # pickled weights beside the safetensors are never stored
    shutil.copytree(reg["base_dir"], pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not safe to unpickle")
    info, _ = V.init(pickled, "pickled", store=reg["store"])
    stored = local_path(info.source) / "model"
    assert (stored / "model.safetensors").is_file() and (stored / "config.json").is_file()
    assert not (stored / "pytorch_model.bin").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="safetensors"):
        V.init(tmp_path / "empty", "other", store=reg["store"])
    assert [i.version for i in V.versions(NAME, reg["store"])][:3] == [1, 2, 3]


def test_register_records_lineage_tags_metrics_and_artifacts(reg):
    from editing.delta import Delta
    from registry import versions as V
    from registry.store import local_path
    from registry.weights import load_patch

    v2, v3 = reg["v2"], reg["v3"]
    assert v2.version == 2 and v2.kind == "edit" and v2.parent_version == 1 and v2.gate_passed is True
    assert v3.version == 3 and v3.parent_version == 2 and v3.gate_passed is False
    t = v2.tags
    for key in ("weights_sha256", "base_weights_sha256", "method", "hparams_sha256", "requests_sha256",
                "factsmith_version", "gate_passed", "gate.reliability", "gate.locality"):
        assert t.get(key), key
    assert t["base_weights_sha256"] == reg["v1"].weights_sha256 and t["method"] == "memit"
    report = reg["report3"]
    assert not report.passed and [f["metric"] for f in report.failures] == ["max_norm_growth"]
    assert float(v3.tags["gate.max_norm_growth"]) == pytest.approx(report.metrics["max_norm_growth"], rel=1e-5)
    assert v3.tags["gate.reliability"] == f"{report.metrics['reliability']:.6g}"
    assert client_metrics(reg, v3)["max_norm_growth"] == pytest.approx(report.metrics["max_norm_growth"])
    assert V.resolve(f"{NAME}@candidate", reg["store"]).version >= 3  # the newest registration is the candidate
    client = reg["store"].client()
    run = client.get_run(v2.run_id)
    assert run.data.metrics["reliability"] == 1.0 and run.data.metrics["locality"] == 0.97
    art = local_path(v2.source)
    for f in ("patch/weights.safetensors", "delta/delta.safetensors", "gate/gate.json", "gate/gate.md",
              "gate/gate.html", "edit.json", "requests.jsonl"):
        assert (art / f).is_file(), f
    patch = load_patch(art / "patch" / "weights.safetensors")
    assert list(patch) == ["transformer.h.1.mlp.c_proj.weight"]  # only the edited matrix, in full
    assert torch.equal(patch["transformer.h.1.mlp.c_proj.weight"], reg["m2"].transformer.h[1].mlp.c_proj.weight)
    assert set(Delta.load(art / "delta" / "delta.safetensors").layers) == set(reg["d2"].layers)
    assert [json.loads(x)["id"] for x in (art / "requests.jsonl").read_text().splitlines()] == ["r-pl", "r-fr"]


def test_load_model_is_bit_exact_and_verified_against_the_hash(reg):
    from registry import versions as V
    from registry.errors import IntegrityError

    st = reg["store"]
    m, tok = V.load_model(f"{NAME}/3", st)
    assert same_weights(m, reg["m3"]) and tok("Poland")["input_ids"]
    assert same_weights(V.load_model(f"{NAME}/2", st)[0], reg["m2"])
    assert same_weights(V.load_model(f"{NAME}/1", st)[0], reg["base"])
    client = st.client()
    good = reg["v2"].weights_sha256
    client.set_model_version_tag(NAME, "2", "weights_sha256", "0" * 64)
    try:
        with pytest.raises(IntegrityError, match="expected weights SHA-256 0000"):
            V.load_model(f"{NAME}/2", st)
    finally:
        client.set_model_version_tag(NAME, "2", "weights_sha256", good)


def test_register_refuses_a_stale_parent_foreign_weights_and_changes_outside_the_delta(reg):
    from registry import versions as V
    from registry.errors import ConcurrencyError, InvalidInputError

    st = reg["store"]
    before = len(V.versions(NAME, st))
    m, d = make_edit(reg["m2"], 0, seed=5)
    with pytest.raises(ConcurrencyError, match="expected version 2 to be the newest"):
        V.register(NAME, 2, m, d, requests=[request("x", "Chile", "Kast", "Boric")], gate_passed=True, store=st)
    newest = V.versions(NAME, st)[-1].version
    m, d = make_edit(reg["m2"], 0, seed=5)  # computed on version 2's weights, registered on the newest's
    with pytest.raises(InvalidInputError, match="the delta was computed on weights"):
        V.register(NAME, newest, m, d, requests=[request("x", "Chile", "Kast", "Boric")], gate_passed=True, store=st)
    parent, _ = V.load_model(f"{NAME}/{newest}", st)
    m, d = make_edit(parent, 0, seed=6)
    with torch.no_grad():
        m.transformer.wte.weight[0, 0] += 1.0  # a change the delta does not explain
    with pytest.raises(InvalidInputError, match="only in the delta's matrices"):
        V.register(NAME, newest, m, d, requests=[request("x", "Chile", "Kast", "Boric")], gate_passed=True, store=st)
    assert len(V.versions(NAME, st)) == before


def test_promote_moves_champion_and_refuses_a_failed_gate(reg):
    from registry import versions as V
    from registry.errors import PromotionError

    st = reg["store"]
    champion = V.resolve(f"{NAME}@champion", st).version
    with pytest.raises(PromotionError, match="version 3: expected a version whose gate passed"):
        V.promote(NAME, 3, store=st)
    assert V.resolve(f"{NAME}@champion", st).version == champion
    info = V.promote(NAME, 2, requested_by="carol", store=st)
    assert "champion" in info.aliases and V.resolve(f"{NAME}@champion", st).version == 2
    assert same_weights(V.load_model(f"{NAME}@champion", st)[0], reg["m2"])


# --------------------------------------------------------------------------------------------------
# audit, diff, ledger


def test_audit_history_tracks_each_fact_across_versions(reg):
    from registry.audit import history

    poland = history(NAME, "poland")
    assert len(poland) == 1
    ev = [(e["event"], e["version"], e["request_id"]) for e in poland[0]["events"]]
    assert ev[:3] == [("applied", 2, "r-pl"), ("superseded", 3, "r-pl"), ("applied", 3, "r-pl2")]
    first = poland[0]["events"][0]
    assert (first["old"], first["new"], first["requested_by"], first["source"]) == ("Duda", "Nawrocki", "alice", "news")
    germany = history(NAME, "Germany")[0]["events"]
    assert germany[0]["event"] == "rejected" and germany[0]["version"] is None and "reliability" in germany[0]["state_reason"]
    assert {f["subject"] for f in history(NAME)} >= {"Poland", "France", "Germany"}


def test_diff_lists_the_facts_that_changed_and_the_requests_behind_them(reg):
    from registry.audit import diff

    d = diff(NAME, 1, 3, reg["store"])
    got = {c["subject"]: (c["a"], c["b"]["answer"], c["b"]["request_id"]) for c in d["changed"]}
    assert got == {"Poland": (None, "Tusk", "r-pl2"), "France": (None, "Bardella", "r-fr")}
    d = diff(NAME, 2, 3, reg["store"])
    assert [(c["subject"], c["a"]["answer"], c["b"]["answer"]) for c in d["changed"]] == [("Poland", "Nawrocki", "Tusk")]
    assert diff(NAME, 2, 2, reg["store"])["changed"] == []


@pytest.fixture
def ledger_backup(reg):
    from registry import ledger as L

    paths = [L.ledger_path(NAME), L.head_path(NAME)]
    saved = {p: p.read_bytes() for p in paths}
    yield paths[0]
    for p, b in saved.items():
        p.write_bytes(b)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder", "truncate", "truncate_and_rewrite_head"])
def test_ledger_verify_detects_tampering(reg, ledger_backup, tamper):
    from registry import audit
    from registry import ledger as L

    assert audit.verify(NAME, reg["store"]).ok
    path = ledger_backup
    lines = _lines(path)
    assert len(lines) >= 5
    if tamper == "edit":
        rec = json.loads(lines[1])
        rec["new"] = "Someone Else"
        lines[1] = json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n"
    elif tamper == "delete":
        del lines[2]
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        del lines[-1]
    path.write_text("".join(lines), encoding="utf-8")
    if tamper == "truncate_and_rewrite_head":  # the file alone now looks whole; the registry's anchor does not
        L.head_path(NAME).write_text(json.dumps({"count": L.head(NAME).count, "hash": L.head(NAME).hash}))
        assert L.verify(NAME).ok
    check = audit.verify(NAME, reg["store"])
    assert not check.ok, tamper
    expect = {"edit": "was edited", "delete": "removed", "reorder": "reordered", "truncate": "removed from the end",
              "truncate_and_rewrite_head": "registry anchor"}[tamper]
    assert any(expect in p for p in check.problems), check.problems
    from registry import versions as V

    champion = V.resolve(f"{NAME}@champion", reg["store"]).version
    with pytest.raises(L.LedgerError, match="the ledger is broken"):  # the registry appends nothing to a broken ledger
        V.promote(NAME, 1, store=reg["store"])
    assert V.resolve(f"{NAME}@champion", reg["store"]).version == champion


# --------------------------------------------------------------------------------------------------
# rollback


def test_rollback_creates_a_version_with_the_exact_weights_and_keeps_history(reg):
    from editing.delta import weights_sha256
    from registry import audit
    from registry import versions as V

    st = reg["store"]
    newest = V.versions(NAME, st)[-1].version
    before = [i.version for i in V.versions(NAME, st)]
    info = V.rollback_to(NAME, 2, reason="Tusk edit was wrong", requested_by="dave", store=st)
    assert info.version == newest + 1 and info.kind == "rollback" and info.parent_version == 2
    assert info.tags["rollback_from"] == str(newest) and "candidate" in info.aliases
    assert [i.version for i in V.versions(NAME, st)] == before + [info.version]  # nothing rewritten
    m, _ = V.load_model(f"{NAME}/{info.version}", st)
    assert same_weights(m, reg["m2"]) and weights_sha256(m) == reg["v2"].weights_sha256
    assert audit.diff(NAME, 2, info.version, st)["changed"] == []
    ev = [(e["event"], e["version"]) for e in audit.history(NAME, "Poland")[0]["events"]]
    assert ("reverted", info.version) in ev and ("applied", info.version) in ev  # r-pl2 reverted, r-pl back
    assert audit.verify(NAME, st).ok
    promoted = V.rollback_to(NAME, 1, promote_now=True, store=st)
    assert V.resolve(f"{NAME}@champion", st).version == promoted.version
    assert same_weights(V.load_model(f"{NAME}@champion", st)[0], reg["base"])


def test_revert_request_recomputes_the_other_edits_gates_and_registers(reg, tmp_path):
    from editing import hparams as H
    from editing.delta import apply
    from editing.engine import compute_edit
    from editing.methods.rome import RomeHparams
    from editing.score import score_targets
    from editing.store import Cache
    from registry import audit
    from registry import versions as V
    from flows.revert import revert_request
    from registry.weights import load_hf
    from validation.gate.policy import GatePolicy
    from validation.requests import Request

    st = reg["store"]
    base_dir = tmp_path / "sharp"  # a sharper random model, as the engine tests use: edits take hold
    tiny_model("gpt2", vocab=300, d_model=48, d_mlp=96, init_range=0.2).save_pretrained(base_dir)
    tiny_tokenizer().save_pretrained(base_dir)
    V.init(base_dir, "rv", store=st)
    model, tok = load_hf(base_dir)
    base = copy.deepcopy(model)
    target = H.TargetHparams(v_steps=12, v_lr=0.5, context_templates=((4, 2),), kl_factor=0.0625,
                             v_weight_decay=1e-4, clamp_norm_factor=1000.0)
    hp = RomeHparams(layer=1, target=target, stats=H.StatsHparams(mom2_samples=64, sample_tokens=16))
    policy = GatePolicy(paraphrases=1, neighbours=2, generation_tokens=4)  # small probe suites: seconds
    cache = Cache(tmp_path / "cache")
    ra = Request("ra", "France", "The capital of {}", "Warsaw", "Paris", requested_by="eve")
    rb = Request("rb", "Poland", "The head of state of {}", "Japanese", "Andrzej Duda")
    rc = Request("rc", "Japan", "The official language of {}", "Berlin", "Japanese")
    for parent, reqs in ((1, [ra, rb]), (2, [rc])):
        res = compute_edit(model, tok, [r.to_edit_request() for r in reqs], hp, cache)
        apply(model, res.delta)
        V.register("rv", parent, model, res.delta, requests=reqs, gate_passed=True, store=st)
    v3 = copy.deepcopy(model)

    out = revert_request("rv", "ra", policy=policy, reason="wrong city", requested_by="eve",
                         cache_dir=tmp_path / "cache", store=st)
    info = out.version
    assert info.version == 4 and info.kind == "revert" and info.parent_version == 1 and out.recomputed == (2, 3)
    assert info.tags["reverts"] == "ra" and info.tags["reverted_from"] == "3"
    assert info.gate_passed == out.gate.passed and {r["id"] for r in out.gate.requests} == {"rb", "rc"}
    m4, _ = V.load_model("rv/4", st)  # rebuilt from the base and the revert's own patch, hash-verified

    def logp(m, r):
        return score_targets(m, tok, [r.text], [r.target_new])[0].logprob

    assert abs(logp(m4, ra) - logp(base, ra)) < abs(logp(v3, ra) - logp(base, ra))  # France's edit is gone
    assert logp(m4, rb) > logp(base, rb) + 1.0 and logp(m4, rc) > logp(base, rc) + 1.0  # the others hold
    d = audit.diff("rv", 3, 4, st)
    assert [(c["subject"], c["a"]["answer"], c["b"]) for c in d["changed"]] == [("France", "Warsaw", None)]
    france = [(e["event"], e["version"]) for e in audit.history("rv", "France")[0]["events"]]
    assert france == [("applied", 2), ("reverted", 4)]
    assert audit.verify("rv", st).ok
    again = revert_request("rv", "rb", policy=policy, cache_dir=tmp_path / "cache", store=st)  # a revert of a revert version
    assert again.version.parent_version == 1 and again.recomputed == (4,)
    assert [c["subject"] for c in audit.diff("rv", 1, again.version.version, st)["changed"]] == ["Japan"]


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_registry_commands(reg, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from registry.versions import load_model

    runner = CliRunner()

    def run(*args):
        r = runner.invoke(app, list(args))
        lines = [x for x in r.stdout.splitlines() if x.strip()]
        return r.exit_code, json.loads(lines[-1]) if lines else None

    code, out = run("registry", "init", "--model", str(reg["base_dir"]), "--name", NAME, "--json")
    assert code == 0 and out["created"] is False and out["version"] == 1
    code, out = run("versions", "--name", NAME, "--json")
    assert code == 0 and [v["version"] for v in out["versions"]][:3] == [1, 2, 3]
    code, out = run("promote", "3", "--name", NAME, "--json")
    assert code == 1 and out["ok"] is False and out["kind"] == "PromotionError"
    code, out = run("promote", "99", "--name", NAME, "--json")
    assert code == 2 and "no version 99" in out["error"]
    code, out = run("audit", "--name", NAME, "--subject", "France", "--verify", "--json")
    assert code == 0 and out["verify"]["ok"] and [f["subject"] for f in out["facts"]] == ["France"]
    code, out = run("diff", "1", "2", "--name", NAME, "--json")
    assert code == 0 and {c["subject"] for c in out["changed"]} == {"Poland", "France"}
    code, rb = run("rollback", "--to", "2", "--name", NAME, "--json")
    assert code == 0 and rb["kind"] == "rollback" and rb["parent_version"] == 2
    code, out = run("rollback", "--name", NAME, "--json")
    assert code == 2 and "exactly one of --to VERSION or --revert REQUEST_ID" in out["error"]
    code, out = run("rollback", "--revert", "no-such-request", "--name", NAME, "--json")
    assert code == 2 and "'no-such-request' is not applied in the newest version" in out["error"]
    code, out = run("versions", "--name", "../etc", "--json")
    assert code == 2 and "model name" in out["error"]
    code, out = run("audit", "--name", "nobody", "--verify", "--json")
    assert code == 2 and "no registered model 'nobody'" in out["error"]
    edited = tmp_path / "edited"  # the layout 'factsmith edit --out' writes
    parent_model, tok = load_model(f"{NAME}/{rb['version']}", reg["store"])
    m, d = make_edit(parent_model, 0, seed=9)
    m.save_pretrained(edited)
    tok.save_pretrained(edited)
    d.meta["requests"] = [request("r-cl", "Chile", "Kast", "Boric").to_json()]
    d.save(edited / "delta.safetensors")
    code, out2 = run("registry", "register", "--model", str(edited), "--report", str(gate_dir(tmp_path / "g", True, 0.95)),
                     "--parent", str(rb["version"]), "--name", NAME, "--json")
    assert code == 0 and out2["version"] == rb["version"] + 1 and out2["gate_passed"] is True, out2
    code, out3 = run("registry", "register", "--model", str(edited), "--report", str(tmp_path / "g"),
                     "--parent", str(rb["version"]), "--name", NAME, "--json")
    assert code == 1 and out3["kind"] == "ConcurrencyError"


class _AnotherMachine:
    """A real client on the same store that registers a competing version between the check and the create:
    the interleaving a remote server allows (no shared file lock), made deterministic."""

    def __init__(self, client, run_id: str):
        self._c, self._run_id = client, run_id

    def __getattr__(self, attr):
        return getattr(self._c, attr)

    def create_model_version(self, name, **kw):
        self._c.create_model_version(name, source=kw["source"], run_id=self._run_id,
                                     tags={"kind": "edit", "parent_version": "1"})
        return self._c.create_model_version(name, **kw)


def test_without_a_shared_lock_the_later_version_is_withdrawn(reg, tmp_path):
    from registry import versions as V
    from registry.commit import create_checked
    from registry.errors import ConcurrencyError

    st = reg["store"]
    V.init(reg["base_dir"], "remote", store=st)
    c = st.client()
    run = c.create_run(st.experiment_id("remote"))
    with pytest.raises(ConcurrencyError, match="found version 2 registered concurrently; version 3 was withdrawn"):
        create_checked(_AnotherMachine(c, run.info.run_id), st, "remote", 1, run, {"kind": "edit"},
                       run.info.artifact_uri, "register from version 1")
    assert [i.version for i in V.versions("remote", st)] == [1, 2]
    assert "lost to" in c.get_run(run.info.run_id).data.tags["factsmith.refused"]


def test_quarantined_and_rejected_requests_are_recorded_with_the_registry_anchor(reg):
    from registry import audit
    from registry import ledger as L
    from registry import versions as V
    from validation.requests import Origin, Problem, Quarantined

    st = reg["store"]
    q = Quarantined(Origin("inbox.jsonl", 7, 6, "native"), {"id": "q1", "subject": "Peru", "prompt": 3},
                    (Problem("prompt", "expect_column_values_to_be_of_type", "'prompt' must be a string"),), "q1")
    head = V.record(NAME, [L.quarantined_record(q)], st)
    rec = L.read(NAME)[-1]
    assert rec["event"] == "quarantined" and rec["request_id"] == "q1" and rec["subject"] == "Peru"
    assert rec["prompt"] is None and "must be a string" in rec["state_reason"] and rec["origin"]["line"] == 7
    assert audit.verify(NAME, st).ok
    assert st.client().get_registered_model(NAME).tags["ledger_head"] == str(head)
    assert audit.history(NAME, "Peru")[0]["events"][0]["event"] == "quarantined"


# --------------------------------------------------------------------------------------------------
# two processes racing from one parent


def _open_worker(barrier, results) -> None:
    try:
        from mlflow import MlflowClient  # noqa: F401  (imported before the barrier: only the first use races)

        from registry.store import open_store

        barrier.wait(timeout=300)
        store = open_store()
        store.client().search_registered_models()
        results.put("ok")
    except BaseException as e:  # reported to the test, which fails on it
        results.put(repr(e))


def test_concurrent_first_use_of_a_fresh_store_creates_the_schema_once(tmp_path, monkeypatch):
    _env(monkeypatch, tmp_path / "home")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_open_worker, args=(barrier, results)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [results.get(timeout=400) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert got == ["ok"] * 3, got


def _race_worker(base_dir: str, seed: int, barrier, results, name: str = NAME) -> None:
    from editing.delta import weights_sha256
    from registry import versions as V
    from registry.errors import ConcurrencyError
    from registry.store import open_store
    from registry.weights import load_hf

    try:
        base, _ = load_hf(Path(base_dir))
        m, d = make_edit(base, 1, seed=seed, base_sha=weights_sha256(base))
        store = open_store()
        barrier.wait(timeout=300)
        info = V.register(name, 1, m, d, requests=[request(f"r{seed}", f"Country{seed}", "X", "Y")], gate_passed=True,
                          store=store)
        results.put(("registered", seed, info.version))
    except ConcurrencyError as e:
        results.put(("refused", seed, str(e)))
    except BaseException as e:  # reported to the test, which fails on it
        results.put(("error", seed, repr(e)))


def test_two_processes_racing_from_one_parent_make_one_version_and_one_refusal(tmp_path, monkeypatch):
    from registry import audit, ledger
    from registry import versions as V
    from registry.store import open_store
    from registry.weights import load_hf

    _env(monkeypatch, tmp_path / "home")
    base_dir = save_base(tmp_path / "base")
    store = open_store()
    V.init(base_dir, NAME, store=store)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(str(base_dir), s, barrier, results)) for s in (11, 12)]
    for p in procs:
        p.start()
    got = [results.get(timeout=400) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    kinds = sorted(g[0] for g in got)
    assert kinds == ["refused", "registered"], got
    assert [i.version for i in V.versions(NAME, store)] == [1, 2]
    refused = next(g for g in got if g[0] == "refused")
    assert "expected version 1 to be the newest, found version 2" in refused[2]
    winner = next(g for g in got if g[0] == "registered")
    applied = [r for r in ledger.read(NAME) if r["event"] == "applied"]
    assert [r["request_id"] for r in applied] == [f"r{winner[1]}"]  # the loser left no ledger record
    assert audit.verify(NAME, store).ok
    # branching from an older version is allowed when the caller says which newest version it saw
    base, _ = load_hf(base_dir)
    m, d = make_edit(base, 2, seed=13)
    info = V.register(NAME, 1, m, d, requests=[request("r13", "Peru", "X", "Y")], gate_passed=True, expected_latest=2,
                      store=store)
    assert info.version == 3 and info.parent_version == 1
    from typer.testing import CliRunner

    from flows.cli import app

    r = CliRunner().invoke(app, ["versions", "--json"])  # the only registered model is the default
    assert r.exit_code == 0 and [v["version"] for v in json.loads(r.stdout)["versions"]] == [1, 2, 3]


def _die_before_recording(base_dir: str, seed: int) -> None:
    """Register, but die by SIGKILL at the commit point: the version exists, the ledger never hears of it."""
    import os
    import signal

    from registry import versions as V
    from registry.weights import load_hf

    V.append_records = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # the commit point of register
    base, _ = load_hf(Path(base_dir))
    m, d = make_edit(base, 1, seed=seed)
    V.register(NAME, 1, m, d, requests=[request(f"r{seed}", f"Country{seed}", "X", "Y")], gate_passed=True)


def test_a_registration_killed_before_its_ledger_record_leaves_no_version(tmp_path, monkeypatch):
    from registry import audit, ledger
    from registry import versions as V
    from registry.store import open_store
    from registry.weights import load_hf

    _env(monkeypatch, tmp_path / "home")
    base_dir = save_base(tmp_path / "base")
    store = open_store()
    V.init(base_dir, NAME, store=store)
    p = multiprocessing.get_context("spawn").Process(target=_die_before_recording, args=(str(base_dir), 21))
    p.start()
    p.join(timeout=300)
    assert p.exitcode == -9
    c = store.client()
    assert sorted(int(m.version) for m in c.search_model_versions(f"name='{NAME}'")) == [1, 2]  # the orphan
    assert audit.verify(NAME, store).ok  # the ledger itself is intact: it never heard of version 2
    # the next change withdraws the orphan and registers from version 1 as if the dead one never happened
    base, _ = load_hf(base_dir)
    m, d = make_edit(base, 1, seed=22)
    info = V.register(NAME, 1, m, d, requests=[request("r22", "Chile", "Kast", "Boric")], gate_passed=True,
                      store=store)
    assert info.version == 3 and info.parent_version == 1 and info.aliases == ("candidate",)
    assert [i.version for i in V.versions(NAME, store)] == [1, 3]
    assert [r["request_id"] for r in ledger.read(NAME) if r["event"] == "applied"] == ["r22"]
    orphan_run = [r for r in c.search_runs([store.experiment_id(NAME)]) if r.data.tags.get("factsmith.withdrawn")]
    assert len(orphan_run) == 1 and orphan_run[0].info.status == "FAILED"
    assert audit.verify(NAME, store).ok
