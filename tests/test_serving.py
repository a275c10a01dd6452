"""Deployed models follow the registry: ``factsmith export`` writes a version out as a plain Hugging Face
directory, verified against the version's hash, atomically."""

from __future__ import annotations

import json

import pytest
import torch

from .test_registry import _env, gate_dir, make_edit, request, same_weights, save_base

pytestmark = pytest.mark.integration

NAME = "served"


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    """base (v1, champion) and one edit (v2) that changed two facts."""
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
