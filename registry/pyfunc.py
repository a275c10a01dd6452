"""Every registered version is also an MLflow pyfunc (models from code: :mod:`registry.pyfunc_code`): its
artifact folder holds an ``MLmodel`` beside factsmith's own files, naming the version's weights by hash."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

CODE = Path(__file__).with_name("pyfunc_code.py")


def stage_pyfunc(root: Path, name: str, weights_sha256: str) -> None:
    """Write the pyfunc files (``MLmodel``, the model code, its environment files) into ``root``."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    # the params a caller may pass (MLflow drops params a signature does not name)
    signature = infer_signature(["prompt"], ["completion"], params={"max_tokens": 16, "stop": ""})
    with tempfile.TemporaryDirectory(prefix="factsmith-pyfunc-") as tmp:
        out = Path(tmp) / "m"
        with warnings.catch_warnings():  # the prompts are the input example; the signature says so
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            mlflow.pyfunc.save_model(str(out), python_model=str(CODE), pip_requirements=[], signature=signature,
                                     model_config={"name": name, "weights_sha256": weights_sha256})
        for p in out.iterdir():  # copied (a temporary directory may be on another file system)
            if (root / p.name).exists():
                raise FileExistsError(f"{root / p.name}: the pyfunc's file would replace a version file")
            if p.is_dir():
                shutil.copytree(p, root / p.name)
            else:
                shutil.copy2(p, root / p.name)
