"""Promotion hooks: tell whatever serves a model that its champion moved.

After a promotion (``champion`` moves to another version) or a rollback, every hook in ``hooks.yaml``
(``FACTSMITH_HOME/hooks.yaml``, or a file passed with ``--hooks``) is called with one JSON document: the model,
the event, the version and the previous one, the weights' SHA-256, and the facts that differ between the two
(old -> new, the request and who asked). A hook is a webhook (``url``: an HTTP POST of the JSON) or a command
(``command``: an argv list, the JSON on its standard input, run from the hooks file's directory). A call that
fails (a non-2xx answer, a non-zero exit, a timeout) is retried with exponential backoff; when every attempt
failed it is recorded in the ledger as a ``hook_failed`` event and logged. A hook never undoes a promotion:
the alias has moved and the ledger says so before the first hook is called.

The file is read *before* the promotion, so a malformed one refuses the promotion with an error naming the file,
the hook and the field, and nothing moves. Secrets stay out of it: ``${VAR}`` in a header value is read from the
environment (a variable that is not set is such an error), and ``secret_env`` names a variable whose value signs
the body (``X-Factsmith-Signature: sha256=<HMAC-SHA256 of the body>``) so a receiver can check the sender::

    retries: 3            # attempts after the first (default 3)
    backoff_s: 1.0        # the wait before the first retry, doubled before each next one (default 1)
    timeout_s: 30         # per attempt (default 30)
    hooks:
      - name: reload-server
        url: http://127.0.0.1:8000/admin/reload
        headers: {Authorization: "Bearer ${FACTSMITH_ADMIN_TOKEN}"}
      - name: log
        command: [sh, -c, "cat >> promotions.jsonl"]
        events: [promoted]  # default: promoted and rollback
        models: [demo]      # default: every model

Every call of one notification carries the same ``delivery`` id (in the JSON and the ``X-Factsmith-Delivery``
header) so that a receiver can recognise a retry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import shlex
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import InvalidInputError

log = logging.getLogger(__name__)

HOOKS_FILE = "hooks.yaml"
EVENTS = ("promoted", "rollback")
FORMAT = 1
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEYS = {"retries", "backoff_s", "timeout_s", "hooks"}
_HOOK_KEYS = {"name", "url", "command", "headers", "secret_env", "events", "models", "retries", "backoff_s",
              "timeout_s"}


class HookConfigError(InvalidInputError):
    """``hooks.yaml`` is not as expected; the message names the file, the hook and the field."""


@dataclass(frozen=True)
class Hook:
    name: str
    url: str | None = None
    command: tuple[str, ...] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # values may hold ${VAR}
    secret_env: str | None = None
    events: tuple[str, ...] = EVENTS
    models: tuple[str, ...] | None = None  # None: every model
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 30.0
    cwd: Path | None = None  # a command runs here (the hooks file's directory)

    def wants(self, event: str, model: str) -> bool:
        return event in self.events and (self.models is None or model in self.models)


@dataclass(frozen=True)
class Hooks:
    hooks: tuple[Hook, ...] = ()
    source: Path | None = None
    report: Callable[[str, "Delivery"], None] | None = None  # told each outcome (the CLI prints them)

    def __bool__(self) -> bool:
        return bool(self.hooks)


@dataclass(frozen=True)
class Delivery:
    """One hook's outcome for one notification."""

    hook: str
    ok: bool
    attempts: int
    detail: str  # "HTTP 200", "exit 0", or the last error

    def to_json(self) -> dict[str, Any]:
        return {"hook": self.hook, "ok": self.ok, "attempts": self.attempts, "detail": self.detail}


NONE = Hooks()


def default_file() -> Path:
    from .store import home

    return home() / HOOKS_FILE


def load(path: str | Path | None = None) -> Hooks:
    """The hooks of ``path``, or of ``FACTSMITH_HOME/hooks.yaml`` when ``path`` is None (no hooks when that file
    does not exist; a named file must exist)."""
    from editing.strict import read_yaml

    p = Path(path) if path is not None else default_file()
    if path is None and not p.is_file():
        return NONE
    return parse(read_yaml(p, HookConfigError, "the hooks file"), p)


def parse(data: Any, source: Path) -> Hooks:
    """:class:`Hooks` from the YAML document of ``source`` (strict: unknown keys and wrong types are errors)."""
    def err(where: str, msg: str) -> HookConfigError:
        return HookConfigError(f"{source}: {where}: {msg}")

    if data is None:
        return Hooks((), source)
    if not isinstance(data, dict):
        raise err("top level", f"expected a mapping with 'hooks', found {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise err(", ".join(map(repr, unknown)), f"unknown key (known: {', '.join(sorted(_KEYS))})")
    defaults = {k: _number(data[k], k, repr(k), err) for k in ("retries", "backoff_s", "timeout_s") if k in data}
    raw = data.get("hooks") or []
    if not isinstance(raw, list):
        raise err("'hooks'", f"expected a list, found {type(raw).__name__}")
    hooks, names = [], set()
    for i, h in enumerate(raw):
        hooks.append(_hook(h, i, defaults, source, err))
        if hooks[-1].name in names:
            raise err(f"hooks[{i}].name", f"{hooks[-1].name!r} names two hooks")
        names.add(hooks[-1].name)
    return Hooks(tuple(hooks), source)


def _number(v: Any, key: str, where: str, err: Callable[[str, str], HookConfigError]) -> float | int:
    if key == "retries":
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 10:
            raise err(where, f"expected an integer from 0 to 10, found {v!r}")
        return v
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 600:
        raise err(where, f"expected seconds from 0 to 600, found {v!r}")
    if key == "timeout_s" and v == 0:
        raise err(where, "expected a positive number of seconds, found 0")
    return float(v)


def _strings(v: Any, where: str, err, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
        raise err(where, f"expected a non-empty list of strings, found {v!r}")
    if allowed is not None:
        bad = [s for s in v if s not in allowed]
        if bad:
            raise err(where, f"{', '.join(map(repr, bad))}: expected one of {', '.join(allowed)}")
    return tuple(v)


def _hook(h: Any, i: int, defaults: Mapping[str, Any], source: Path, err) -> Hook:
    at = f"hooks[{i}]"
    if not isinstance(h, dict):
        raise err(at, f"expected a mapping with 'url' or 'command', found {type(h).__name__}")
    unknown = sorted(set(h) - _HOOK_KEYS)
    if unknown:
        raise err(f"{at}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_HOOK_KEYS))})")
    if ("url" in h) == ("command" in h):
        raise err(at, "expected exactly one of 'url' (a webhook) or 'command'")
    name = h.get("name", f"hook-{i}")
    if not isinstance(name, str) or not name.strip():
        raise err(f"{at}.name", f"expected a non-empty string, found {name!r}")
    url = command = None
    if "url" in h:
        url = h["url"]
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
            raise err(f"{at}.url", f"expected an http:// or https:// URL, found {url!r}")
    else:
        c = h["command"]
        if isinstance(c, str):
            try:
                c = shlex.split(c)
            except ValueError as e:
                raise err(f"{at}.command", f"cannot split {h['command']!r}: {e}") from None
        command = _strings(c, f"{at}.command", err)
    headers = h.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise err(f"{at}.headers", "expected a mapping of header names to string values")
    if headers and url is None:
        raise err(f"{at}.headers", "only a webhook ('url') has headers")
    for k, v in headers.items():
        for var in _VAR.findall(v):
            if var not in os.environ:
                raise err(f"{at}.headers.{k}", f"environment variable {var} is not set")
    secret_env = h.get("secret_env")
    if secret_env is not None:
        if url is None:
            raise err(f"{at}.secret_env", "only a webhook ('url') is signed")
        if not isinstance(secret_env, str) or secret_env not in os.environ:
            raise err(f"{at}.secret_env", f"environment variable {secret_env!r} is not set")
    events = _strings(h["events"], f"{at}.events", err, EVENTS) if "events" in h else EVENTS
    models = _strings(h["models"], f"{at}.models", err) if "models" in h else None
    own = {k: _number(h[k], k, f"{at}.{k}", err) for k in ("retries", "backoff_s", "timeout_s") if k in h}
    return Hook(name=name, url=url, command=command, headers=dict(headers), secret_env=secret_env, events=events,
                models=models, cwd=source.parent, **{**defaults, **own})


# --------------------------------------------------------------------------------------------------
# the notification


def payload(event: str, name: str, version: int, previous: int | None, store, *, champion: int | None,
            requested_by: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """The JSON every hook receives: what moved, and the facts that differ between ``previous`` and ``version``."""
    from .audit import diff
    from .lineage import facts_in, lineage
    from .store import aliases

    c = store.client()
    mv = c.get_model_version(name, str(version))
    facts = []
    if previous is None:  # the first champion: every fact its lineage changed
        for r in facts_in(name, [i.version for i in lineage(name, version, store)]).values():
            facts.append({"subject": r.get("subject"), "relation": r.get("relation"), "prompt": r.get("prompt"),
                          "old": r.get("old"), "new": r.get("new"), "reverted": False,
                          "request_id": r.get("request_id"), "requested_by": r.get("requested_by"),
                          "reason": r.get("reason"), "in_version": r.get("version")})
    else:
        for ch in diff(name, previous, version, store)["changed"]:
            a, b = ch["a"], ch["b"]
            facts.append({"subject": ch["subject"], "relation": ch["relation"], "prompt": ch["prompt"],
                          "old": a["answer"] if a else ch["base_answer"],
                          "new": b["answer"] if b else ch["base_answer"],
                          "reverted": b is None, "request_id": (b or a)["request_id"],
                          "requested_by": (b or a)["requested_by"], "reason": (b or a)["reason"],
                          "in_version": b["version"] if b else None})
    return {"format": FORMAT, "delivery": uuid.uuid4().hex, "event": event, "model": name, "version": version,
            "previous_version": previous, "champion": champion, "aliases": aliases(c, name),
            "weights_sha256": (mv.tags or {}).get("weights_sha256"), "requested_by": requested_by,
            "reason": reason, "at": _now(), "facts_changed": facts}


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _expand(v: str) -> str:
    return _VAR.sub(lambda m: os.environ.get(m.group(1), ""), v)


def call(hook: Hook, doc: Mapping[str, Any], sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """One hook, retried with exponential backoff until it succeeds or its attempts are spent."""
    body = json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()
    detail = ""
    attempts = 1 + hook.retries
    for n in range(1, attempts + 1):
        try:
            detail = _post(hook, body, doc) if hook.url else _run(hook, body, doc)
            return Delivery(hook.name, True, n, detail)
        except _Failed as e:
            detail = str(e)
            log.info("hook %s: attempt %d of %d failed: %s", hook.name, n, attempts, detail)
        if n < attempts:
            sleep(hook.backoff_s * 2 ** (n - 1))
    return Delivery(hook.name, False, attempts, detail)


class _Failed(Exception):
    pass


def _post(hook: Hook, body: bytes, doc: Mapping[str, Any]) -> str:
    headers = {"Content-Type": "application/json", "User-Agent": "factsmith-hooks/1",
               "X-Factsmith-Event": str(doc["event"]), "X-Factsmith-Delivery": str(doc["delivery"])}
    headers.update({k: _expand(v) for k, v in hook.headers.items()})
    if hook.secret_env:
        mac = hmac.new(os.environ.get(hook.secret_env, "").encode(), body, hashlib.sha256).hexdigest()
        headers["X-Factsmith-Signature"] = f"sha256={mac}"
    req = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=hook.timeout_s) as resp:
            return f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        text = e.read(300).decode("utf-8", "replace").strip()
        raise _Failed(f"HTTP {e.code} from {hook.url}" + (f": {text}" if text else "")) from None
    except (urllib.error.URLError, OSError) as e:  # refused, unreachable, timed out
        raise _Failed(f"{hook.url}: {getattr(e, 'reason', e)}") from None


def _run(hook: Hook, body: bytes, doc: Mapping[str, Any]) -> str:
    env = {**os.environ, "FACTSMITH_EVENT": str(doc["event"]), "FACTSMITH_MODEL": str(doc["model"]),
           "FACTSMITH_VERSION": str(doc["version"]), "FACTSMITH_PREVIOUS_VERSION": str(doc["previous_version"] or ""),
           "FACTSMITH_DELIVERY": str(doc["delivery"])}
    try:
        p = subprocess.run(list(hook.command), input=body, capture_output=True, cwd=hook.cwd, env=env,
                           timeout=hook.timeout_s)
    except subprocess.TimeoutExpired:
        raise _Failed(f"{hook.command[0]}: no exit within {hook.timeout_s:g} s") from None
    except OSError as e:
        raise _Failed(f"{hook.command[0]}: {e.strerror or e}") from None
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip()[-300:]
        raise _Failed(f"{hook.command[0]}: exit {p.returncode}" + (f": {err}" if err else ""))
    return "exit 0"


def notify(hooks: Hooks, event: str, name: str, version: int, previous: int | None, store, *,
           champion: int | None, requested_by: str | None = None, reason: str | None = None,
           sleep: Callable[[float], None] = time.sleep) -> list[Delivery]:
    """Call every hook that wants ``event`` for ``name``; record each that failed as ``hook_failed``.

    Called after the promotion is recorded and outside the model's lock (a hook may read the registry). Never
    raises for a hook's failure: the promotion stands."""
    chosen = [h for h in hooks.hooks if h.wants(event, name)]
    if not chosen:
        return []
    doc = payload(event, name, version, previous, store, champion=champion, requested_by=requested_by,
                  reason=reason)
    out = [call(h, doc, sleep) for h in chosen]
    failed = [d for d in out if not d.ok]
    for d in out:
        (log.info if d.ok else log.warning)(
            "hook %s (%s of %s version %d): %s after %d attempt(s)%s", d.hook, event, name, version,
            "delivered" if d.ok else "FAILED", d.attempts, f": {d.detail}" if not d.ok else "")
        if hooks.report is not None:
            hooks.report(event, d)
    if failed:
        from . import ledger as L
        from .versions import record

        record(name, [L.model_record("hook_failed", version, hook=d.hook, on=event, delivery=doc["delivery"],
                                     attempts=d.attempts, error=d.detail) for d in failed], store=store)
    return out
