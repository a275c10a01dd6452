"""``factsmith serve-model``: an HTTP server that answers with a registered version and follows its alias.

OpenAI-compatible where it matters to a client (``POST /v1/completions``, ``GET /v1/models``), greedy only
(temperature 0: the answers the gate judged), plus ``GET /health`` naming the version served and its weights'
SHA-256. A background thread resolves the reference (``NAME@champion``) every ``poll_s`` seconds; when it names
another version, that version is rebuilt from the registry and verified against its hash *beside* the one
serving, then swapped in with one reference assignment. A request reads the current :class:`Loaded` once, at its
start, and finishes on it: requests in flight when the champion moves finish on the old weights, none fails.
``POST /admin/reload`` checks at once; it needs the token from ``FACTSMITH_ADMIN_TOKEN`` (refused when the
variable is unset or the token differs).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request  # at module level: the endpoints' annotations are resolved in this module's globals

log = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "FACTSMITH_ADMIN_TOKEN"
MAX_TOKENS = 512
MAX_PROMPTS = 64


@dataclass(frozen=True)
class Loaded:
    """One version in memory: never changed once built (a swap replaces the whole object)."""

    name: str
    version: int
    weights_sha256: str
    model: Any
    tokenizer: Any
    loaded_at: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time per model


def load(ref: str, store=None) -> Loaded:
    """The version behind ``ref``, rebuilt from the registry and verified against its hash."""
    from registry.lineage import rebuild, resolve
    from registry.store import open_store

    st = store or open_store()
    info = resolve(ref, st)
    model, tok, info = rebuild(info.name, info.version, st)
    model.eval()
    return Loaded(info.name, info.version, info.weights_sha256, model, tok)


def complete(m: Loaded, prompt: str, max_tokens: int, stop: list[str]) -> tuple[str, str, int, int]:
    """:func:`editing.generate.greedy_complete` on a loaded version, one generation at a time."""
    from editing.generate import greedy_complete

    with m.lock:
        return greedy_complete(m.model, m.tokenizer, prompt, max_tokens, stop)


class ModelServer:
    """The loaded version of ``ref`` and the thread that follows it."""

    def __init__(self, ref: str, store=None, poll_s: float = 2.0):
        from registry.refs import parse_ref

        self.ref = ref
        self.name = parse_ref(ref).name
        self.store = store
        self.poll_s = poll_s
        self.current = load(ref, store)
        self.swaps = 0
        self.last_load_s: float | None = None  # the last swap's load (rebuild and verify), seconds
        self.last_error: str | None = None
        self._check = threading.Lock()  # one load at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Resolve the reference; load and swap in the version it names when that is not the one serving.
        True when it swapped. A failed load keeps the version serving (the error is kept for /health)."""
        from registry.lineage import resolve

        with self._check:
            try:
                info = resolve(self.ref, self.store)
                if info.version == self.current.version:
                    return False
                t0 = time.perf_counter()
                new = load(f"{self.name}/{info.version}", self.store)
            except Exception as e:  # noqa: BLE001 -- a bad version must not take the server down
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("serve-model: could not load %s: %s", self.ref, self.last_error)
                return False
            old, self.current = self.current, new  # the swap: one assignment
            self.swaps += 1
            self.last_load_s = round(time.perf_counter() - t0, 3)
            self.last_error = None
            log.info("serve-model: %s now %s version %d (was %d; loaded in %.2f s)", self.ref, new.name,
                     new.version, old.version, time.perf_counter() - t0)
            return True

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.poll_s):
                self.check()

        self._thread = threading.Thread(target=loop, name="factsmith-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": None}})


def create_app(server: ModelServer, admin_token: str | None = None):
    """The FastAPI application over ``server`` (its polling thread runs while the application does)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool

    token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None

    @asynccontextmanager
    async def lifespan(_app):
        server.start()
        try:
            yield
        finally:
            server.stop()

    app = FastAPI(title="factsmith serve-model", lifespan=lifespan)

    @app.get("/health")
    def health():
        m = server.current
        return {"status": "ok", "ref": server.ref, "model": m.name, "version": m.version,
                "weights_sha256": m.weights_sha256, "loaded_at": m.loaded_at, "swaps": server.swaps,
                "last_load_s": server.last_load_s, "last_error": server.last_error}

    @app.get("/v1/models")
    def models():
        m = server.current
        return {"object": "list", "data": [{"id": m.name, "object": "model", "created": int(m.loaded_at),
                                            "owned_by": "factsmith", "version": m.version,
                                            "weights_sha256": m.weights_sha256}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "expected a JSON object")
        m = server.current  # this request's version, whatever happens to the champion meanwhile
        if body.get("model") not in (None, m.name, f"{m.name}/{m.version}"):
            return _error(404, f"model {body.get('model')!r} is not served here; this server serves {m.name!r}",
                          "model", "not_found_error")
        prompts = body.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts or len(prompts) > MAX_PROMPTS or \
                not all(isinstance(p, str) and p for p in prompts):
            return _error(400, f"'prompt': expected a non-empty string or a list of 1-{MAX_PROMPTS} of them", "prompt")
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS:
            return _error(400, f"'max_tokens': expected an integer in 1-{MAX_TOKENS}", "max_tokens")
        temperature = body.get("temperature", 0)
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature != 0:
            return _error(400, "'temperature': only 0 (greedy decoding) is served", "temperature")
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            return _error(400, "'stop': expected a string or a list of up to 4 non-empty strings", "stop")
        choices, p_tok, c_tok = [], 0, 0
        for i, prompt in enumerate(prompts):
            text, reason, pt, ct = await run_in_threadpool(complete, m, prompt, max_tokens, stop)
            choices.append({"text": text, "index": i, "logprobs": None, "finish_reason": reason})
            p_tok, c_tok = p_tok + pt, c_tok + ct
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": m.name, "version": m.version, "weights_sha256": m.weights_sha256, "choices": choices,
                "usage": {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok}}

    @app.post("/admin/reload")
    def reload(request: Request):
        if token is None:
            return _error(403, f"reload is disabled: set {ADMIN_TOKEN_ENV} for the server to enable it", None,
                          "permission_error")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _error(401, "expected 'Authorization: Bearer <token>' with the server's admin token", None,
                          "authentication_error")
        swapped = server.check()
        m = server.current
        return {"swapped": swapped, "model": m.name, "version": m.version, "weights_sha256": m.weights_sha256,
                "last_error": server.last_error}

    return app
