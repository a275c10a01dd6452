"""Where the registry lives, and the locks that make its check-and-create steps atomic.

Embedded default: MLflow tracking and model registry in ``sqlite:///$FACTSMITH_HOME/registry/mlflow.db``,
artifacts under ``$FACTSMITH_HOME/registry/artifacts``; no server. A set ``MLFLOW_TRACKING_URI`` (a tracking
server, or another database) is used unchanged for both tracking and registry.

Why the locks: on a fresh sqlite file, concurrent first use crashed 5 of 6 processes in MLflow's schema
creation (../shared/FINDINGS.md), so :func:`open_store` opens the store once under ``mlflow.db.schema.lock``
before anything else touches it. Registrations take a per-model lock (``mlflow.db.<name>.versions.lock``, next to the
sqlite file) around "is my parent still the newest version? then create mine", which makes optimistic
concurrency exact for every process on the machine. A remote server is shared by machines a file lock does
not reach; there :mod:`registry.versions` also checks *after* creating a version that no other version was
created between the parent and its own (MLflow numbers versions in one database transaction), and deletes its
own version if one was: the lower number wins, the other caller gets :class:`~registry.errors.ConcurrencyError`.
For a remote server the lock file lives under ``$FACTSMITH_HOME/registry/locks`` and serialises this machine's
processes only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .errors import NotFoundError
from .refs import check_name

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 300.0  # a registration holds the lock for well under a second; minutes mean a stuck process
EXPERIMENT_PREFIX = "factsmith/"


def home() -> Path:
    """The state directory, ``FACTSMITH_HOME`` (default ``~/.factsmith``), created on first use. The one rule:
    flows.settings and the benchmarks import it from here, the lowest layer that keeps state."""
    raw = os.environ.get("FACTSMITH_HOME")
    path = Path(raw).expanduser() if raw else Path.home() / ".factsmith"
    path.mkdir(parents=True, exist_ok=True)
    return path


def registry_dir() -> Path:
    return home() / "registry"


def default_uri() -> str:
    return f"sqlite:///{(registry_dir() / 'mlflow.db').resolve()}"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set (unchanged), else the embedded sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for anything else)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///"):].split("?", 1)[0]))


def local_path(uri: str) -> Path | None:
    """The local directory behind a ``file://`` URI or a plain path; None for a remote artifact URI."""
    p = urlparse(uri)
    if p.scheme == "file":
        return Path(unquote(p.path))
    if p.scheme == "" or (len(p.scheme) == 1 and os.name == "nt"):  # a bare path (or a Windows drive letter)
        return Path(uri)
    return None


@dataclass(frozen=True)
class Store:
    """An opened registry: its URI, where new experiments keep artifacts, and where the lock files go."""

    uri: str
    artifact_root: Path | None  # None: the server decides (remote tracking server)
    lock_dir: Path
    lock_prefix: str

    @property
    def embedded(self) -> bool:
        """True when every writer shares this machine's file system (a sqlite file): the lock is exact."""
        return sqlite_path(self.uri) is not None

    @cached_property
    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def client(self):
        """One MlflowClient per opened store (building one costs tens of milliseconds)."""
        return self._client

    def lock(self, name: str, what: str = "versions"):
        """A per-model file lock (a context manager): ``versions`` is held around check-and-create and the
        ledger anchor, ``experiment`` around creating the model's experiment. Not reentrant."""
        from filelock import FileLock

        check_name(name)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lock_dir / f"{self.lock_prefix}{name}.{what}.lock"), timeout=LOCK_TIMEOUT_S)

    def experiment_id(self, name: str) -> str:
        """The experiment holding the runs of model ``name`` (created with our artifact root on first use)."""
        client = self.client()
        exp_name = EXPERIMENT_PREFIX + check_name(name)
        exp = client.get_experiment_by_name(exp_name)
        if exp is not None:
            return exp.experiment_id
        with self.lock(name, "experiment"):
            exp = client.get_experiment_by_name(exp_name)
            if exp is not None:
                return exp.experiment_id
            loc = (self.artifact_root / name).as_uri() if self.artifact_root is not None else None
            return client.create_experiment(exp_name, artifact_location=loc)


def open_store(uri: str | None = None) -> Store:
    """Open (and on first use create) the registry; the schema is created or upgraded under a file lock."""
    from filelock import FileLock

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    uri = uri or tracking_uri()
    db = sqlite_path(uri)
    if db is not None:
        db = db.resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        store = Store(uri, db.parent / "artifacts", db.parent, f"{db.name}.")
        schema_lock = db.parent / f"{db.name}.schema.lock"
    else:
        locks = registry_dir() / "locks"
        store = Store(uri, None, locks, "")
        locks.mkdir(parents=True, exist_ok=True)
        schema_lock = locks / "schema.lock"
    with FileLock(str(schema_lock), timeout=LOCK_TIMEOUT_S):
        client = store.client()  # MLflow creates or upgrades the schema on the first query
        client.search_experiments(max_results=1)  # creates / upgrades the tracking schema
        client.search_registered_models(max_results=1)  # and the registry's
    log.debug("registry store %s", uri)
    return store


def is_not_found(e: BaseException) -> bool:
    return getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def get_version(client, name: str, version: int) -> Any:
    """The MLflow ModelVersion, or :class:`NotFoundError` naming the versions that exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        if not is_not_found(e):
            raise
    have = sorted(int(m.version) for m in client.search_model_versions(f"name='{check_name(name)}'"))
    if not have:
        raise NotFoundError(f"no registered model {name!r} (run: factsmith registry init --model DIR --name {name})")
    raise NotFoundError(f"model {name!r} has no version {version}; versions: {', '.join(map(str, have))}")


def all_versions(client, name: str) -> list[Any]:
    """Every version of ``name``, oldest first (empty when the model is not registered)."""
    mvs = client.search_model_versions(f"name='{check_name(name)}'")
    return sorted(mvs, key=lambda m: int(m.version))


def aliases(client, name: str) -> dict[str, int]:
    """alias -> version (search_model_versions leaves ``aliases`` empty on sqlite; the model has them)."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException as e:
        if is_not_found(e):
            raise NotFoundError(f"no registered model {name!r}") from None
        raise
    return {a: int(v) for a, v in (rm.aliases or {}).items()}


def model_names(client) -> list[str]:
    """Registered models that factsmith created (they carry the ``factsmith`` tag)."""
    out = []
    token = None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        out += [m.name for m in page if (m.tags or {}).get("factsmith") == "1"]
        token = page.token
        if not token:
            return sorted(out)


def default_name(client, name: str | None, flag: str) -> str:
    """``name`` if it is registered; without one, the only registered model (``flag``, the option that names
    one, is in the message when several are): NotFoundError, or ValueError for several."""
    if name is not None:
        aliases(client, check_name(name))  # NotFoundError for a model that is not registered
        return name
    names = model_names(client)
    if len(names) == 1:
        return names[0]
    if not names:
        raise NotFoundError("no registered model (run: factsmith registry init --model DIR --name NAME)")
    raise ValueError(f"{flag}: expected one of {', '.join(names)} (several models are registered)")
