"""The fact_update pipeline on the tiny sandbox and a real sqlite registry: end states, idempotency, the
Prefect flow in-process through ``factsmith run``, kill -9 at three points and at random moments, four runs at
once and a run on another model beside them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "tiny"
REPO = Path(__file__).resolve().parents[1]


def _capitals(build, first: int, n: int, by: str = "alice") -> list[dict]:
    """``n`` requests moving capitals, from fact ``first`` on: subject i gets the capital of the subject 10 places
    on (not i + 1's: a chain, the United Kingdom -> Paris with France -> Berlin, leaks one edit into the other
    subject, and the gate rejects it on subject locality, 0.67)."""
    from sandbox.trainer import model_facts

    caps = [f for f in model_facts(build.path) if f.relation == "capital"]
    return [{"id": f"cap-{first + i}", "subject": f.subject, "prompt": f.prompts[0],
             "target_new": caps[(first + i + 10) % len(caps)].target,
             "target_true": f.target, "relation": "capital", "requested_by": by,
             "requested_at": f"2025-0{1 + i}-01T00:00:00Z"} for i, f in enumerate(caps[first:first + n])]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def registry_home(tmp_path, monkeypatch, tiny_build, home):
    """A fresh FACTSMITH_HOME with the tiny sandbox registered as version 1; the editing cache (statistics)
    is the session's, so each test does not recompute it."""
    from registry import versions as V
    from registry.store import open_store

    h = tmp_path / "home"
    h.mkdir()
    (home / "cache").mkdir(exist_ok=True)
    (h / "cache").symlink_to(home / "cache", target_is_directory=True)
    monkeypatch.setenv("FACTSMITH_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    store = open_store()
    V.init(tiny_build.path, NAME, store=store)
    write_mechanics_policy(h)
    write_mechanics_hparams(h)
    return h, store


MECHANICS_POLICY = ("min_generalization: 0.0\nmin_subject_locality: 0.0\nmin_subject_facts: 0.0\n"
                    "min_namesake_locality: 0.0\nmax_norm_growth: 100.0\n")


def write_mechanics_policy(home: Path) -> Path:
    """The gate policy of the pipeline-mechanics tests (end states, idempotency, kills, concurrency), in the
    home's standing policy file. These tests are about what happens to requests, versions and files, not about
    how well an edit generalises: the thresholds that measure a capital swap's quality on the tiny sandbox are
    off (generalization, subject locality, norm growth), because the sandbox is trained under bfloat16 autocast
    with the CPU's own kernels and each CPU's build lands on other weights, where the same swap is borderline
    (measured on three builds: generalization 0.5-1.0, subject locality 0.82-1.0, norm growth 2.7-3.4 against
    the defaults 0.8 / 0.9 / 3). Reliability, locality, protected facts, fluency and retention keep their
    defaults: an edit that does not say its target or breaks other subjects is still rejected. Edit quality is
    tested where it is the subject (tests/test_validation_gate.py, tests/test_editing_sandbox_quality.py,
    bench/quality.py); the tests that need a rejection write a policy of their own."""
    from flows import settings

    path = home / settings.gate_policy_file().name  # the standing policy of that home (FACTSMITH_HOME may differ)
    path.write_text(MECHANICS_POLICY, encoding="utf-8")
    return path


def write_mechanics_hparams(home: Path) -> Path:
    """The MEMIT hparams of the same tests: the sandbox preset without its keep options (``keep_tokens`` 1, no
    ``delta_at_repeats``, ``keep_lead`` 0, the dataclass defaults). Those options make an edit keep the subject's
    other facts on the phrasings the gate checks, which these tests' lenient policy does not ask, at 1.5-3x the
    optimisation steps; they are tested where quality is (tests/test_editing_engine.py, the gate tests, the
    demo)."""
    import yaml

    from editing import hparams as H

    hp = H.with_changes(H.default("memit", "sandbox"), target__keep_tokens=1, target__delta_at_repeats=False,
                        target__keep_lead=0.0)
    path = home / "mechanics-memit.yaml"
    path.write_text(yaml.safe_dump(H.to_dict(hp), sort_keys=False), encoding="utf-8")
    return path


def _opts(home: Path, **kw):
    """RunOptions of a mechanics test: its model, the mechanics hparams (not for ``method='alphaedit'``)."""
    from flows import pipeline

    return pipeline.RunOptions(name=NAME, **{"hparams_file": home / "mechanics-memit.yaml", **kw})


def _ledger():
    from registry import ledger as L

    return L.read(NAME)


def _applied_ids() -> list[str]:
    return sorted(r["request_id"] for r in _ledger() if r["event"] == "applied")


def test_a_run_ends_every_request_in_one_state_and_a_second_run_applies_nothing_twice(registry_home, tiny_build):
    from flows import pipeline
    from registry import audit
    from registry.versions import versions

    h, store = registry_home
    inbox = h / "inbox"
    good = _capitals(tiny_build, 0, 2)
    older = dict(good[0], id="cap-old", target_new="Oslo", requested_at="2024-01-01T00:00:00Z")  # same fact, earlier
    bad = {"id": "bad-1", "subject": "Chad", "prompt": "no placeholder here", "target_new": "X"}
    _write(inbox / "a.jsonl", good + [older, bad])
    out = pipeline.run(_opts(h), inbox, store)

    assert out.version == 2 and out.parent_version == 1
    c = out.counts()
    assert c == {"applied": 2, "rejected": 0, "quarantined": 1, "superseded": 1}
    assert out.gate.passed and out.report_html.is_file()
    assert [i.version for i in versions(NAME, store)] == [1, 2]
    states = {(r["event"], r["request_id"]) for r in _ledger() if r["event"] in pipeline.END_STATES}
    assert states == {("applied", "cap-0"), ("applied", "cap-1"), ("superseded", "cap-old"),
                      ("quarantined", "bad-1")}
    q = next(r for r in _ledger() if r["event"] == "quarantined")
    assert q["origin"]["line"] == 4 and "prompt" in q["state_reason"]
    # the file had a bad row: it moves to quarantine/ with the reasons beside it; the inbox is empty
    assert not list(inbox.glob("*.jsonl"))
    moved = Path(out.moved[0]["to"])
    assert moved.parent.name == "quarantine" and moved.is_file()
    reasons = json.loads(moved.with_name(moved.name + ".reasons.json").read_text())
    assert reasons[0]["line"] == 4

    # the same file dropped again, and the same requests under new ids: nothing is applied twice
    shutil.copy2(moved, inbox / "a.jsonl")
    _write(inbox / "b.jsonl", [dict(good[0], id="cap-0-again"), dict(good[1])])
    out2 = pipeline.run(_opts(h), inbox, store)
    assert out2.version is None and out2.done_files == ["a.jsonl"]
    assert sorted(out2.already_applied) == ["cap-0-again", "cap-1"]
    assert [i.version for i in versions(NAME, store)] == [1, 2]
    assert _applied_ids() == ["cap-0", "cap-1"]
    again = next(r for r in _ledger() if r.get("request_id") == "cap-0-again")
    assert again["event"] == "superseded" and "already applied in version 2" in again["state_reason"]
    assert not list(inbox.glob("*.jsonl"))
    assert audit.verify(NAME, store).ok


def test_a_batch_the_gate_rejects_registers_nothing_and_records_why(registry_home, tiny_build, tmp_path):
    from flows import pipeline
    from registry.versions import versions

    h, store = registry_home
    strict = tmp_path / "strict.yaml"
    strict.write_text("max_norm_growth: 1.0\n")  # any edit grows the edited matrix: the gate must fail
    inbox = h / "inbox"
    _write(inbox / "a.jsonl", _capitals(tiny_build, 3, 2))
    out = pipeline.run(_opts(h, bisect=False, gate_policy_file=strict), inbox, store)
    assert out.version is None and out.counts()["rejected"] == 2
    assert [i.version for i in versions(NAME, store)] == [1]
    rej = [r for r in _ledger() if r["event"] == "rejected"]
    assert len(rej) == 2 and all("max_norm_growth" in r["state_reason"] for r in rej)
    assert (h / "inbox" / "processed").is_dir() and not list(inbox.glob("*.jsonl"))


def _budget_of_one(monkeypatch) -> None:
    """A norm budget that holds one request a version: the real edit and gate, then a batch of more than one is
    told it grew a matrix past the limit, naming its last request (flows.attempt.BUDGET_METRICS)."""
    from flows import attempt

    real = attempt.edit_and_gate

    def edit_and_gate(ws, sub, cache_dir):
        a = real(ws, sub, cache_dir)
        if len(sub) > 1:
            a.report.failures.append({"metric": "max_norm_growth", "value": 4.0, "threshold": 3.0,
                                      "requests": [sub[-1].id]})
            a.report.passed = False
        return a

    monkeypatch.setattr(attempt, "edit_and_gate", edit_and_gate)


def test_requests_left_out_for_the_budget_are_applied_by_follow_up_versions_and_a_kill_between_loses_none(
        registry_home, tiny_build, monkeypatch):
    """A run registers what passed, then edits the requests left out only for the batch's budget again on that
    version (RunOptions.follow_ups); each version applies its own requests, the run is recorded once, with the
    last. A run that dies after a follow-up's version is run again whole: what it applied is skipped, the rest
    is edited, and every request ends in one state, once. The gate is open (tests.cli_snapshot.OPEN_POLICY) but
    for the budget: the test is about versions, records and files."""
    from flows import pipeline
    from registry import audit
    from registry.versions import versions

    from .cli_snapshot import OPEN_POLICY

    import yaml

    from editing import hparams as H

    h, store = registry_home
    gate = h / "open-gate.yaml"
    # small suites and 10 optimisation steps an edit: whether an edit is said does not matter to an open gate,
    # and its probes and the steps only cost time here
    gate.write_text(OPEN_POLICY + "paraphrases: 1\nneighbours: 1\nnamesakes: 1\nsubject_probes: 2\n"
                    "retention_sample: 4\nlocality_sample: 4\ngeneration_tokens: 4\n", encoding="utf-8")
    fast = h / "fast-memit.yaml"
    fast.write_text(yaml.safe_dump(H.to_dict(H.with_changes(H.load(h / "mechanics-memit.yaml"), target__v_steps=10)),
                                   sort_keys=False), encoding="utf-8")
    _budget_of_one(monkeypatch)
    inbox = h / "inbox"
    rows = _capitals(tiny_build, 0, 5)
    _write(inbox / "a.jsonl", rows[:3])
    out = pipeline.run(_opts(h, gate_policy_file=gate, follow_ups=1, hparams_file=fast), inbox, store)
    # cap-0 in version 2; cap-1, left out of that batch for the budget, in version 3; cap-2, left out again
    # when the follow-ups are spent, rejected with the budget's reason
    assert out.versions == [2, 3] and out.version == 3 and out.parent_version == 1
    assert {r["id"]: r["version"] for r in out.states["applied"]} == {"cap-0": 2, "cap-1": 3}
    [rej] = out.states["rejected"]
    assert rej["id"] == "cap-2" and "submit it again for a later version" in rej["reason"]
    assert [i.version for i in versions(NAME, store)] == [1, 2, 3]
    led = [(r["event"], r.get("request_id") or r.get("version")) for r in _ledger()[1:]]
    assert led == [("applied", "cap-0"), ("applied", "cap-1"), ("rejected", "cap-2"), ("run", 3)], led
    assert not list(inbox.glob("*.jsonl")) and len(list((inbox / "processed").glob("*.jsonl"))) == 1

    # a run that dies after its follow-up's version (here: the follow-up's edit fails) leaves that version
    # committed and its file in the inbox; run again, it applies the rest and nothing twice
    _write(inbox / "b.jsonl", rows[3:])
    calls = []

    def dies_on_the_follow_up(ws, requests, bisect):
        calls.append([r.id for r in requests])
        if len(calls) > 1:
            raise RuntimeError("killed")
        return pipeline._edit_gate_bisect(ws, requests, bisect)

    tasks = pipeline.Tasks(**{**pipeline.PLAIN.__dict__, "edit_gate_bisect": dies_on_the_follow_up})
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.run(_opts(h, gate_policy_file=gate, hparams_file=fast), inbox, store, tasks=tasks)
    assert calls == [["cap-3", "cap-4"], ["cap-4"]]
    assert [i.version for i in versions(NAME, store)] == [1, 2, 3, 4]
    assert _applied_ids() == ["cap-0", "cap-1", "cap-3"] and (inbox / "b.jsonl").is_file()
    again = pipeline.run(_opts(h, gate_policy_file=gate, hparams_file=fast), inbox, store)
    assert again.already_applied == ["cap-3"] and again.versions == [5]
    assert [r["id"] for r in again.states["applied"]] == ["cap-4"]
    assert _applied_ids() == ["cap-0", "cap-1", "cap-3", "cap-4"]
    ends = [r["request_id"] for r in _ledger() if r["event"] in pipeline.END_STATES]
    assert sorted(ends) == ["cap-0", "cap-1", "cap-2", "cap-3", "cap-4"]  # each once
    assert [r.get("version") for r in _ledger() if r["event"] == "run"] == [3, 5]
    assert not list(inbox.glob("*.jsonl"))
    assert audit.verify(NAME, store).ok


def test_factsmith_run_runs_the_prefect_flow_in_process(registry_home, tiny_build, monkeypatch):
    from typer.testing import CliRunner

    import flows.flow  # noqa: F401  (Prefect binds its log handler to the stderr of the moment it is imported: not
    # to this CliRunner's, closed when the command returns, which broke every later flow run of the session)
    from flows.cli import app

    h, _ = registry_home
    monkeypatch.setenv("PREFECT_HOME", str(h / "prefect"))
    inbox = h / "inbox"
    _write(inbox / "a.jsonl", _capitals(tiny_build, 6, 1))
    r = CliRunner().invoke(app, ["run", "--inbox", str(inbox), "--promote", "--json",
                                  "--hparams", str(h / "mechanics-memit.yaml")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["version"] == 2 and res["counts"]["applied"] == 1 and res["promoted"]
    assert res["gate"]["passed"] and Path(res["report_html"]).is_file()
    r = CliRunner().invoke(app, ["versions", "--json"])
    vs = json.loads(r.stdout)["versions"]
    assert [v["version"] for v in vs] == [1, 2] and "champion" in vs[1]["aliases"]
    # the flow's artifacts are in Prefect's database
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def keys():
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="fact-update")))
            return {a.key for a in arts}

    import asyncio

    assert {"fact-update-tiny", "fact-update-tiny-requests"} <= asyncio.run(keys())


def _worker(inbox: Path, *extra: str, env: dict) -> subprocess.CompletedProcess:
    hp = Path(env["FACTSMITH_HOME"]) / "mechanics-memit.yaml"
    return subprocess.run([sys.executable, "-m", "tests.flow_worker", str(inbox), NAME, "--hparams", str(hp), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_killed_runs_leave_no_partial_version_and_lose_or_repeat_no_request(registry_home, tiny_build):
    from flows import pipeline
    from registry import audit
    from registry.versions import versions

    h, store = registry_home
    env = {**os.environ, "FACTSMITH_HOME": str(h)}
    inbox = h / "inbox"
    _write(inbox / "a.jsonl", _capitals(tiny_build, 9, 2))
    c = store.client()

    def numbers() -> list[int]:
        return sorted(int(m.version) for m in c.search_model_versions(f"name='{NAME}'"))

    # 1. killed in the gate: the edit was computed, nothing was written
    p = _worker(inbox, "--die-at", "gate", env=env)
    assert p.returncode == -9, p.stderr[-2000:]
    assert numbers() == [1] and [r["event"] for r in _ledger()] == ["base"]
    assert (inbox / "a.jsonl").is_file()
    # 2. killed between creating the version and committing it to the ledger: a version without records
    p = _worker(inbox, "--die-at", "register", env=env)
    assert p.returncode == -9, p.stderr[-2000:]
    assert numbers() == [1, 2] and [r["event"] for r in _ledger()] == ["base"]
    assert (inbox / "a.jsonl").is_file()
    # 3. killed while moving the file, after the commit: the next run withdrew version 2 and registered 3
    p = _worker(inbox, "--die-at", "move", env=env)
    assert p.returncode == -9, p.stderr[-2000:]
    assert numbers() == [1, 3] and _applied_ids() == ["cap-10", "cap-9"]
    assert (inbox / "a.jsonl").is_file()
    # 4. the next run only moves the file: nothing is applied twice, nothing is lost
    out = pipeline.run(_opts(h), inbox, store)
    assert out.version is None and out.done_files == ["a.jsonl"] and not list(inbox.glob("*.jsonl"))
    assert [i.version for i in versions(NAME, store)] == [1, 3] and _applied_ids() == ["cap-10", "cap-9"]
    assert audit.verify(NAME, store).ok


def test_runs_killed_at_random_moments_then_rerun_lose_nothing(registry_home, tiny_build):
    """Issue 24's chaos (bench/chaos.py, 20 trials on the demo sandbox), bounded: 3 trials of 2 capital swaps,
    a row to quarantine and a copy of an applied request now and then; each trial's first run is killed with
    SIGKILL at a random moment (seeded) drawn over a whole run's length, then the run is repeated to the end.
    Then every version rebuilds and matches its hash, the versions form one line, every row has exactly one
    end state, none is applied twice, no copy or bad row is applied, the inbox is empty and the audit verifies."""
    import random

    from bench.chaos import end_states
    from flows import pipeline
    from registry import audit

    h, store = registry_home
    env = {**os.environ, "FACTSMITH_HOME": str(h)}
    rng = random.Random(24)
    inbox = h / "inbox"
    caps = _capitals(tiny_build, 0, 6)
    written: dict[str, str] = {}
    lengths: list[float] = []
    kills = []
    for t in range(3):
        rows = caps[2 * t:2 * t + 2]
        written.update((r["id"], "request") for r in rows)
        if t % 2:
            rows.append({"id": f"bad-{t}", "subject": "France", "prompt": "The capital of {} is",
                         "target_new": "Paris", "target_true": "Paris"})  # new = old: quarantined
            written[f"bad-{t}"] = "bad"
        if t >= 2:
            rows.append(dict(caps[0], id=f"copy-{t}"))  # an applied request again under another id
            written[f"copy-{t}"] = "copy"
        _write(inbox / f"trial-{t}.jsonl", rows)
        if lengths:  # the first trial's run is not killed: it measures how long a run takes
            delay = rng.uniform(0, 1.1 * max(lengths))
            p = _worker(inbox, "--die-after", f"{delay:.2f}", env=env)
            assert p.returncode in (0, -9), p.stderr[-2000:]
            kills.append((round(delay, 2), p.returncode))
        t0 = time.perf_counter()
        pipeline.run(_opts(h), inbox, store)
        lengths.append(time.perf_counter() - t0)
    print("kills (delay s, exit):", kills, "run lengths s:", [round(x, 1) for x in lengths])
    assert any(rc == -9 for _, rc in kills), kills  # the draws (seed 24) kill both runs
    res = end_states(NAME, store, inbox, written)
    assert res["ok"], res
    assert res["states"]["applied"] == 6 and res["states"]["quarantined"] == 1, res
    assert audit.verify(NAME, store).ok


def test_four_runs_at_once_on_one_model_lose_no_edit_and_another_model_does_not_wait(registry_home, tiny_build):
    """Issue 24's concurrency (bench/concurrency.py, which also times two models' runs side by side), bounded:
    4 processes on one model with 4 inboxes, started while the model's run lock is held and then let go
    together, make one line of versions; every request ends in one state, each applied one in its own version
    (the gate may reject an edit made on top of another: the order is the lock's). The lock is the model's:
    another model's is free meanwhile."""
    from filelock import Timeout

    from flows import pipeline
    from registry import audit
    from registry import versions as V

    h, store = registry_home
    env = {**os.environ, "FACTSMITH_HOME": str(h)}
    files = [_write(h / f"in-{i}" / f"{i}.jsonl", _capitals(tiny_build, 12 + 2 * i, 1)) for i in range(4)]
    t0 = time.time()
    with pipeline.run_lock(NAME, timeout=0):  # as if a run were editing NAME: the four start together and wait
        procs = [subprocess.Popen([sys.executable, "-m", "tests.flow_worker", str(p.parent), NAME, "--lock-timeout",
                                   "600", "--hparams", str(h / "mechanics-memit.yaml")], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for p in files]
        with pipeline.run_lock("other", timeout=0):  # another model: not held by NAME's run
            pass
        with pytest.raises(Timeout):
            pipeline.run_lock(NAME, timeout=0).acquire()
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    got = sorted(v for v in (json.loads(o[0].strip().splitlines()[-1])["version"] for o in outs) if v is not None)
    assert len(got) >= 2 and got == list(range(2, 2 + len(got))), (got, time.time() - t0)
    vs = V.versions(NAME, store)
    assert [(i.version, i.parent_version) for i in vs] == [(1, None)] + [(v, v - 1) for v in got]
    ids = [f"cap-{12 + 2 * i}" for i in range(4)]
    states = [(r["request_id"], r["event"]) for r in _ledger() if r.get("request_id") in ids]
    assert sorted(i for i, _ in states) == ids, states  # one end state each
    assert len(_applied_ids()) == len(got) and all(e in ("applied", "rejected") for _, e in states), states
    assert audit.verify(NAME, store).ok


def test_alphaedit_runs_carry_their_state_from_version_to_version_and_keep_every_earlier_edit(registry_home, tiny_build):
    """Issue 22: four scheduled runs of three capital swaps with AlphaEdit. Each run checks out the newest version
    with its state, the gate's retention suite checks every earlier edit, the version registers the grown state;
    a rollback restores an earlier state and the next run continues from it."""
    from flows import pipeline
    from editing.methods.alphaedit.solve import PreservedKeys
    from registry.lineage import state_of
    from registry.versions import rollback_to
    from sandbox.evaluate import greedy_correct
    from registry.versions import load_model
    from sandbox.trainer import model_facts

    h, store = registry_home
    caps = [f for f in model_facts(tiny_build.path) if f.relation == "capital"]
    # subjects 0-11 move, each to the capital of one of subjects 20-29 (never edited: no chain of swaps)
    reqs = [{"id": f"ae-{i}", "subject": f.subject, "prompt": f.prompts[0], "target_new": caps[20 + i % 10].target,
             "target_true": f.target, "relation": "capital"} for i, f in enumerate(caps[:12])]
    applied, counts = [], []
    for run in range(4):
        _write(h / "inbox" / f"run{run}.jsonl", reqs[3 * run:3 * run + 3])
        # one version a run (follow_ups=0): a request the gate rejects stays rejected
        out = pipeline.run(pipeline.RunOptions(name=NAME, method="alphaedit", follow_ups=0), h / "inbox", store)
        # the gate may reject a request (its own thresholds, e.g. subject locality): the rest is applied
        assert out.version == run + 2 and out.counts()["applied"] >= 2, out.to_json()["states"]
        assert out.counts()["applied"] + out.counts()["rejected"] == 3
        applied += [x["id"] for x in out.states["applied"]]
        assert out.gate.metrics["probes"]["earlier"] >= len(applied) - 3 - 1  # the earlier edits the parent says
        assert out.gate.metrics["retention"] in (None, 1.0)
        st = state_of(NAME, out.version, store)
        assert st.version == out.version and st.method == "alphaedit"
        counts.append(PreservedKeys.load(st.path).count)
    assert counts[-1] == len(applied) and counts == sorted(counts) and len(applied) >= 9
    model, tok = load_model(f"{NAME}/5", store)
    done = [r for r in reqs if r["id"] in applied]
    said = greedy_correct(model, tok, [r["prompt"].replace("{}", r["subject"]) for r in done], [r["target_new"] for r in done])
    assert all(said), [r["id"] for r, ok in zip(done, said) if not ok]  # every edit of every run still said

    back = rollback_to(NAME, 3, store=store)
    assert PreservedKeys.load(state_of(NAME, back.version, store).path).count == counts[1]
    from registry.versions import promote

    promote(NAME, back.version, store=store)
    # a new subject, and a subject version 3 already edited, moved again: its earlier edit leaves the state
    again = next(r for r in reqs[:6] if r["id"] in applied)
    more = [{"id": f"ae-late-{j}", "subject": caps[j].subject, "prompt": caps[j].prompts[0],
             "target_new": caps[j + 2].target, "target_true": caps[j].target, "relation": "capital"} for j in (24,)]
    more.append({**again, "id": "ae-again", "target_new": caps[27].target, "target_true": again["target_new"]})
    _write(h / "inbox" / "late.jsonl", more)
    out = pipeline.run(pipeline.RunOptions(name=NAME, method="alphaedit", follow_ups=0), h / "inbox", store)
    assert out.parent_version == back.version, out.to_json()["states"]
    late = [x["id"] for x in out.states["applied"]]
    # the edit it replaces, from the ledger along the parent's lineage; it leaves the state when the re-edit lands
    from registry.lineage import lineage

    assert pipeline.last_edits(NAME, lineage(NAME, back.version, store))[again["subject"]].id == again["id"]
    replaced = int("ae-again" in late)
    assert PreservedKeys.load(state_of(NAME, out.version, store).path).count == counts[1] + len(late) - replaced
    if replaced:
        model, tok = load_model(f"{NAME}/{out.version}", store)
        assert greedy_correct(model, tok, [again["prompt"].replace("{}", again["subject"])], [caps[27].target]) == [True]
    else:  # a subject edited again can lose its other facts on this sandbox (README): the gate says so
        assert "gate failed" in out.states["rejected"][0]["reason"], out.to_json()["states"]
