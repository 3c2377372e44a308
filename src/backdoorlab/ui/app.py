"""``backdoorlab ui``: the interactive audit tool of Sun et al. (App. D, Fig. 20) as a local web app.

:func:`create_app` builds the FastAPI app for one workspace ("home"): the page (plain HTML/CSS/JS shipped in
``ui/static``, nothing fetched from the internet) and a JSON API to

- **inspect** a model (Fig. 20a): pick a stored model or upload a safetensors file, pick the data set and the
  attack (SmoothAdv on Denoised Smoothing, Smoothing, Basic Adv), ε, σ, steps; the attack runs as a background
  job whose progress the page polls; the result is the grid of clean images and adversarial examples with
  the class each is predicted as;
- **build a trigger** (Fig. 20b): a colour patch (colours picked from a pixel or a picker, a shape and a size)
  or a box cropped from an adversarial image, pasted on held-out clean images at random or chosen places,
  with the success rate toward every class; kept, named, downloaded; compared with the audit's automatic
  candidates;
- **browse** the run store (configs, metrics, HTML reports) and the reproduction reports;
- **decide**: mark a model poisoned or clean with a note, and score the verdicts like Table 2.

Security: the server binds to 127.0.0.1 unless a host is given explicitly (then :func:`run_ui_cli` warns);
requests must carry the loopback ``Host`` (DNS rebinding) and state-changing ones the ``X-Backdoorlab`` header
(cross-site requests cannot set it without a CORS preflight, which is never granted); bodies are size-limited
(uploads to ``max_upload_bytes``, JSON to ``max_body_bytes``); uploads are loaded only as safetensors
(:func:`backdoorlab.models.load_model`, never ``torch.load``); files are served only from the static folder
(a fixed list) and from the workspace's run reports and ``reproductions/<name>/`` (names checked by pattern and
resolved paths checked to stay inside); every error is JSON ``{"error": "field: message and fix"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from backdoorlab.errors import BackdoorLabError
from backdoorlab.ui import schemas as S
from backdoorlab.ui.decisions import APPROACHES, DecisionStore
from backdoorlab.ui.images import data_url, png_bytes, with_alpha
from backdoorlab.ui.jobs import JOB_ID, JobManager, TooManyJobs
from backdoorlab.ui.registry import MODEL_ID, MODEL_NAME, DataCache, ModelRegistry, NotFound
from backdoorlab.ui.sessions import (
    ATTACK_ID,
    METHODS,
    SessionStore,
    defaults,
    prepare,
    run_attack,
    run_candidates,
)
from backdoorlab.ui.triggers import (
    LAYOUTS,
    SHAPES,
    TRIGGER_ID,
    TriggerShelf,
    color_shape_trigger,
    crop_patch_trigger,
    export_safetensors,
    measure_trigger,
    parse_hex,
    patched_examples,
    slug,
)

log = logging.getLogger("backdoorlab.ui")

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 64 * 1024 * 1024
DEFAULT_MAX_BODY = 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]", "testserver")
CLIENT_HEADER = "x-backdoorlab"
UPLOAD_PATH = "/api/models/upload"
REPRO_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
REPRO_FILE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_-]{0,100}(\.[A-Za-z0-9_-]{1,20})*\.(html|png|svg|jpg|json|md|csv|txt)$"
)
_RUN_ID = re.compile(S.RUN_ID)
_MEDIA = {
    "html": "text/html; charset=utf-8",
    "png": "image/png",
    "svg": "image/svg+xml",
    "jpg": "image/jpeg",
    "json": "text/plain; charset=utf-8",
    "md": "text/plain; charset=utf-8",
    "csv": "text/plain; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}
APP_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'self'"
)
# reports are self-contained (inline CSS, base64 images) and need no script: sandbox them
REPORT_CSP = (
    "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; frame-ancestors 'self'; sandbox"
)


_SHARED_DATA = DataCache()


# -- errors ---------------------------------------------------------------------------------------------------
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    """One readable line per invalid field (at most five): ``field.path: message and fix``."""
    parts = []
    for err in exc.errors()[:5]:
        kind = err.get("type")
        if kind == "json_invalid":
            ctx = err.get("ctx") or {}
            return 400, f"body: malformed JSON ({ctx.get('error', 'cannot parse')}); send one JSON object"
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        # drop the union tag pydantic adds after "trigger" (e.g. trigger.color.size → trigger.size)
        loc = [p for i, p in enumerate(loc) if not (i and loc[i - 1] == "trigger" and p in _TRIGGER_KINDS)]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = "unknown field; remove it (see the API's request models)"
        elif kind == "missing":
            msg = "required; give a value"
        elif kind in ("model_attributes_type", "dict_type", "model_type"):
            msg = "must be a JSON object; send Content-Type: application/json with an object body"
        parts.append(f"{'.'.join(loc) or 'body'}: {msg}")
    return 422, "; ".join(parts) or "invalid request"


_TRIGGER_KINDS = ("color", "crop", "candidate", "saved")


# -- the guard: hosts, client header, body size, security headers -----------------------------------------
class Guard:
    """ASGI middleware in front of everything (see the module docstring, "Security")."""

    def __init__(
        self, app: Any, *, allowed_hosts: tuple[str, ...] | None, max_body: int, max_upload: int
    ) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts  # None: any (explicit non-loopback host)
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        hostname = urlsplit(f"//{host}").hostname or ""
        if (
            self.allowed_hosts is not None
            and hostname not in self.allowed_hosts
            and host not in self.allowed_hosts
        ):
            await _send_json(
                send, 421, f"host: {host!r} is not served here; open the address the tool printed"
            )
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD", "OPTIONS"):
            if headers.get(CLIENT_HEADER) != "1":
                await _send_json(
                    send,
                    403,
                    "request refused: missing header X-Backdoorlab: 1 (send requests from the tool's page)",
                )
                return
            origin = headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != host:
                await _send_json(send, 403, f"request refused: origin {origin!r} is not this tool")
                return
        limit = self.max_upload if scope.get("path") == UPLOAD_PATH else self.max_body
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await _send_json(send, 400, "content-length: not a number")
                return
            if int(length) > limit:
                await _send_json(send, 413, _too_large(limit, scope.get("path") == UPLOAD_PATH))
                return
        received = 0
        started = responded = False

        async def limited_receive() -> dict:
            # past the limit: answer 413 now and tell the app the client went away (its reply is dropped)
            nonlocal received, responded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not started and not responded:
                        responded = True
                        await _send_json(send, 413, _too_large(limit, scope.get("path") == UPLOAD_PATH))
                    return {"type": "http.disconnect"}
            return message

        async def secured_send(message: dict) -> None:
            nonlocal started
            if responded:
                return
            if message["type"] == "http.response.start":
                started = True
                hdrs = list(message.get("headers", []))
                names = {k.lower() for k, _ in hdrs}
                extra = {
                    b"x-content-type-options": b"nosniff",
                    b"referrer-policy": b"no-referrer",
                    b"x-frame-options": b"SAMEORIGIN",
                    b"content-security-policy": APP_CSP.encode(),
                    b"cache-control": b"no-store",
                }
                hdrs += [(k, v) for k, v in extra.items() if k not in names]
                message = {**message, "headers": hdrs}
            await send(message)

        try:
            await self.app(scope, limited_receive, secured_send)
        except Exception:
            if not responded:
                raise


def _too_large(limit: int, upload: bool) -> str:
    what = "file: the upload" if upload else "body: the request"
    return f"{what} is larger than {limit:,} bytes; " + (
        "choose a smaller model file (or start the tool with a larger max_upload_bytes)"
        if upload
        else "send less"
    )


async def _send_json(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- the app --------------------------------------------------------------------------------------------------
@dataclass
class UIState:
    home: Path
    registry: ModelRegistry
    data: DataCache
    jobs: JobManager
    sessions: SessionStore
    shelf: TriggerShelf
    decisions: DecisionStore
    blind: bool
    denoiser_settings: dict[str, Any] | None
    max_upload: int


def create_app(
    home: Path,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS,
    blind: bool = False,
    workers: int = 1,
    denoiser_settings: dict[str, Any] | None = None,
    data_cache: DataCache | None = None,
) -> FastAPI:
    """The web tool for workspace ``home`` (runs in ``home/store.sqlite``, reports under ``home/runs``,
    reproductions under ``home/reproductions``, uploads in ``home/ui/models``, verdicts in
    ``home/decisions.sqlite``, cached denoisers under ``home/cache``).

    ``max_upload_bytes`` bounds an uploaded model file (413 above), ``max_body_bytes`` every other body;
    ``allowed_hosts`` the ``Host`` headers accepted (None: any — for an explicit non-loopback host);
    ``blind`` hides model names, runs and ground truth (a user study, Sun et al. App. D.2); ``workers``
    background threads; ``denoiser_settings`` overrides the audit's DnCNN settings
    (:data:`backdoorlab.audit.pipeline.DENOISER_DEFAULTS`, e.g. a tiny one for tests); ``data_cache``
    the loaded data sets (default: one cache shared by every app of the process).
    """
    home = Path(home).expanduser()
    for name, value in (("max_upload_bytes", max_upload_bytes), ("max_body_bytes", max_body_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BackdoorLabError(f"{name} must be a positive number of bytes, got {value!r}")
    home.mkdir(parents=True, exist_ok=True)
    state = UIState(
        home=home,
        registry=ModelRegistry(home),
        data=_SHARED_DATA if data_cache is None else data_cache,
        jobs=JobManager(workers=workers),
        sessions=SessionStore(),
        shelf=TriggerShelf(),
        decisions=DecisionStore(home / "decisions.sqlite"),
        blind=blind,
        denoiser_settings=denoiser_settings,
        max_upload=max_upload_bytes,
    )
    app = FastAPI(title="backdoorlab ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = state
    app.add_middleware(
        Guard, allowed_hosts=allowed_hosts, max_body=max_body_bytes, max_upload=max_upload_bytes
    )
    _install_errors(app)
    _static_routes(app)
    _model_routes(app, state)
    _attack_routes(app, state)
    _trigger_routes(app, state)
    _browse_routes(app, state)
    _decision_routes(app, state)
    return app


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return _error(status, message)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(TooManyJobs)
    async def _busy(request: Request, exc: TooManyJobs) -> JSONResponse:
        return _error(429, str(exc))

    @app.exception_handler(BackdoorLabError)
    async def _user(request: Request, exc: BackdoorLabError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"not found: {request.url.path[:200]}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path[:200]}"
        return _error(exc.status_code, detail)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}; see the server's log")


def _http_error(status: int, message: str) -> StarletteHTTPException:
    return StarletteHTTPException(status_code=status, detail=message)


def _check_id(value: str, regex: str, field: str, fix: str) -> str:
    if not re.match(regex, value or ""):
        raise _http_error(422, f"{field}: {value[:40]!r} is malformed; {fix}")
    return value


# -- static ---------------------------------------------------------------------------------------------------
def _static_routes(app: FastAPI) -> None:
    # the only files served from the package: a fixed list made at start-up, looked up by name
    files = {
        p.name: p
        for p in STATIC_DIR.iterdir()
        if p.is_file() and p.suffix in (".html", ".js", ".css", ".svg")
    }
    media = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
    }

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(files["index.html"].read_bytes(), media_type=media[".html"])

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        path = files.get(name)
        if path is None:
            raise _http_error(404, f"static: no file {name[:60]!r} in the tool's static folder")
        return Response(path.read_bytes(), media_type=media[path.suffix])

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)


# -- models ---------------------------------------------------------------------------------------------------
def _model_list(state: UIState) -> list[dict[str, Any]]:
    entries = state.registry.list()
    decided: dict[str, list[dict[str, Any]]] = {}
    for d in state.decisions.list():
        decided.setdefault(d.model_id, []).append(
            {"analyst": d.analyst, "verdict": d.verdict, "note": d.note}
        )
    out = []
    order = {e.id: i + 1 for i, e in enumerate(sorted(entries, key=lambda e: e.id))}
    for e in entries:
        row = e.public(state.blind, order[e.id])
        row["decisions"] = decided.get(e.id, [])
        out.append(row)
    return out


def _model_routes(app: FastAPI, state: UIState) -> None:
    @app.get("/api/info")
    def info() -> dict[str, Any]:
        datasets = state.data.names()
        for d in datasets:
            if d["shape"][0]:
                d["defaults"] = defaults(tuple(d["shape"]))
        return {
            "version": _version(),
            "home": str(state.home),
            "blind": state.blind,
            "methods": METHODS,
            "shapes": list(SHAPES),
            "layouts": list(LAYOUTS),
            "approaches": list(APPROACHES),
            "datasets": datasets,
            "max_upload_bytes": state.max_upload,
            "patterns": {"model_id": MODEL_ID, "name": MODEL_NAME, "run_id": S.RUN_ID},
        }

    @app.get("/api/models")
    def models() -> dict[str, Any]:
        return {"models": _model_list(state)}

    @app.get("/api/models/{model_id}")
    def model(model_id: str) -> dict[str, Any]:
        _check_id(model_id, MODEL_ID, "model_id", "pick a model from /api/models")
        entry = state.registry.get(model_id)
        rows = [r for r in _model_list(state) if r["id"] == entry.id]
        return rows[0]

    @app.post(UPLOAD_PATH)
    async def upload(request: Request, name: str | None = None) -> JSONResponse:
        if name is not None and not re.match(MODEL_NAME, name):
            raise _http_error(422, "name: use 1-80 letters, digits, spaces and . , : ( ) + # @ -")
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/"):
            raise _http_error(
                415,
                "file: send the model file as the raw request body (application/octet-stream), not a form",
            )
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > state.max_upload:
                raise _http_error(413, _too_large(state.max_upload, True))
            chunks.append(chunk)
        entry = await run_in_threadpool(state.registry.add_upload, b"".join(chunks), name)
        return JSONResponse({"model": entry.public(state.blind)}, status_code=201)


# -- attacks and jobs -----------------------------------------------------------------------------------------
def _load_for(state: UIState, model_id: str, dataset: str):
    entry = state.registry.get(model_id)
    options = entry.data_options if dataset == entry.data else {}
    train, test = state.data.get(dataset, options)
    if len(entry.classes) != test.num_classes:
        raise BackdoorLabError(
            f"dataset: the model has {len(entry.classes)} classes but {dataset!r} has {test.num_classes}; "
            "pick the data set the model was trained on"
        )
    return entry, train, test


def _attack_routes(app: FastAPI, state: UIState) -> None:
    @app.post("/api/attacks", status_code=202)
    def start_attack(req: S.AttackRequest) -> dict[str, Any]:
        entry, train, test = _load_for(state, req.model_id, req.dataset)
        if req.classes is not None:
            bad = [c for c in req.classes if not 0 <= c < test.num_classes]
            if bad:
                raise BackdoorLabError(f"classes: {bad[0]} is not a class index 0..{test.num_classes - 1}")
        model, _ = state.registry.load(req.model_id)
        with state.registry.lock(req.model_id):  # named errors now, not in the job
            prepare(model, test, req.classes, req.n_images, req.n_eval, req.seed)
        private, _ = state.registry.copy(req.model_id)

        def work(job) -> dict[str, Any]:
            session = run_attack(
                job,
                private,
                entry.id,
                req.dataset,
                train,
                test,
                method=req.method,
                eps=req.eps,
                sigma=req.sigma,
                steps=req.steps,
                m=req.m,
                classes=req.classes,
                n_images=req.n_images,
                n_eval=req.n_eval,
                seed=req.seed,
                workspace=state.home,
                denoiser_settings=state.denoiser_settings,
            )
            state.sessions.add(session)
            return session.to_json()

        job = state.jobs.submit("attack", work)
        return {"job_id": job.id, "status": job.status}

    @app.get("/api/attacks/{attack_id}")
    def get_attack(attack_id: str) -> dict[str, Any]:
        return _session(state, attack_id).to_json()

    @app.get("/api/jobs")
    def jobs() -> dict[str, Any]:
        return {"jobs": [j.to_json(result=False) for j in state.jobs.list()]}

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        _check_id(job_id, JOB_ID, "job_id", "use the id returned when the job was started")
        try:
            return state.jobs.get(job_id).to_json()
        except KeyError:
            raise _http_error(
                404, f"job_id: no job {job_id}; it finished long ago or never existed"
            ) from None


def _session(state: UIState, attack_id: str):
    _check_id(attack_id, ATTACK_ID, "attack_id", "generate adversarial examples first")
    try:
        return state.sessions.get(attack_id)
    except KeyError:
        raise _http_error(
            404, f"attack_id: no attack {attack_id} (results are kept in memory; generate them again)"
        ) from None


# -- triggers -------------------------------------------------------------------------------------------------
def _build_trigger(state: UIState, session, spec) -> Any:
    channels = int(session.x.shape[1])
    if spec.kind == "color":
        return color_shape_trigger(parse_hex(spec.colors), spec.shape, spec.size, channels, spec.layout)
    if spec.kind == "crop":
        if spec.index >= len(session.x):
            raise BackdoorLabError(
                f"trigger.index: image {spec.index} does not exist; use 0..{len(session.x) - 1}"
            )
        source = session.adv if spec.image == "adversarial" else session.x
        return crop_patch_trigger(source[spec.index], spec.row, spec.col, spec.size)
    if spec.kind == "candidate":
        if not session.candidates:
            raise BackdoorLabError("trigger.index: no candidates yet; run the automatic candidates first")
        if spec.index >= len(session.candidates):
            raise BackdoorLabError(
                f"trigger.index: candidate {spec.index} does not exist; use 0..{len(session.candidates) - 1}"
            )
        return session.candidates[spec.index].trigger("random")
    try:
        kept = state.shelf.get(spec.trigger_id)
    except KeyError:
        raise _http_error(404, f"trigger_id: no kept trigger {spec.trigger_id}") from None
    if kept.trigger.channels not in (1, channels):
        raise BackdoorLabError(
            f"trigger_id: {kept.name!r} has {kept.trigger.channels} channels, these images {channels}"
        )
    return kept.trigger


def _apply(state: UIState, req: S.ApplyRequest) -> tuple[Any, Any, dict[str, Any]]:
    session = _session(state, req.attack_id)
    trigger = _build_trigger(state, session, req.trigger)
    if req.placement == "fixed" and req.at is None:
        raise BackdoorLabError("at: a fixed placement needs [row, col] of the trigger's top-left corner")
    model, _ = state.registry.load(session.model_id)
    with state.registry.lock(session.model_id):
        res = measure_trigger(
            model,
            trigger,
            session.xe,
            session.ye,
            session.num_classes,
            placement=req.placement,
            at=req.at,
            reps=req.reps,
        )
        target = int(res.success.argmax())
        patched, labels, before, after = patched_examples(
            model, trigger, session.xe, session.ye, target=target, placement=req.placement, at=req.at
        )
    c = int(session.x.shape[1])
    result = res.to_json(session.classes)
    body = {
        "trigger": {
            "pattern": data_url(trigger.pattern.expand(c, *trigger.size)),
            "png": data_url(with_alpha(trigger.pattern.expand(c, *trigger.size), trigger.mask)),
            "size": list(trigger.size),
            "spec": req.trigger.model_dump(),
        },
        "result": result,
        "examples": [
            {
                "image": data_url(patched[i]),
                "label": int(labels[i]),
                "pred_clean": int(before[i]),
                "pred": int(after[i]),
            }
            for i in range(len(patched))
        ],
        "classes": list(session.classes),
    }
    return session, trigger, body


def _kept_json(kept) -> dict[str, Any]:
    out = kept.describe()
    out["pattern"] = data_url(kept.trigger.pattern)
    out["downloads"] = {
        f: f"/api/triggers/{kept.id}/download?format={f}" for f in ("png", "safetensors", "json")
    }
    return out


def _trigger_routes(app: FastAPI, state: UIState) -> None:
    @app.post("/api/triggers/apply")
    def apply(req: S.ApplyRequest) -> dict[str, Any]:
        return _apply(state, req)[2]

    @app.post("/api/triggers", status_code=201)
    def keep(req: S.KeepRequest) -> dict[str, Any]:
        session, trigger, body = _apply(state, req)
        kept = state.shelf.add(
            name=req.name,
            trigger=trigger,
            spec={**req.trigger.model_dump(), "placement": req.placement, "at": req.at, "reps": req.reps},
            model_id=session.model_id,
            attack_id=session.id,
            result={**body["result"], "classes": list(session.classes)},
        )
        return _kept_json(kept)

    @app.get("/api/triggers")
    def kept_list() -> dict[str, Any]:
        return {"triggers": [_kept_json(k) for k in state.shelf.list()]}

    def _kept(trigger_id: str):
        _check_id(trigger_id, TRIGGER_ID, "trigger_id", "pick one of your kept triggers")
        try:
            return state.shelf.get(trigger_id)
        except KeyError:
            raise _http_error(404, f"trigger_id: no kept trigger {trigger_id}") from None

    @app.delete("/api/triggers/{trigger_id}")
    def delete_trigger(trigger_id: str) -> dict[str, Any]:
        kept = _kept(trigger_id)
        state.shelf.delete(kept.id)
        return {"deleted": kept.id}

    @app.get("/api/triggers/{trigger_id}/download")
    def download(trigger_id: str, format: str = "png") -> Response:
        kept = _kept(trigger_id)
        name = slug(kept.name)
        if format == "png":
            t = kept.trigger
            img = t.pattern if t.pattern.shape[0] in (1, 3) else t.pattern[:3]
            body, media, ext = png_bytes(with_alpha(img, t.mask)), "image/png", "png"
        elif format == "safetensors":
            body, media, ext = export_safetensors(kept), "application/octet-stream", "safetensors"
        elif format == "json":
            body = json.dumps(kept.describe(), indent=2, default=str).encode()
            media, ext = "application/json", "json"
        else:
            raise _http_error(422, f"format: {format[:20]!r} is not one of png, safetensors, json")
        return Response(
            body, media_type=media, headers={"content-disposition": f'attachment; filename="{name}.{ext}"'}
        )

    @app.post("/api/candidates", status_code=202)
    def candidates(req: S.CandidatesRequest) -> dict[str, Any]:
        session = _session(state, req.attack_id)
        h, w = session.x.shape[-2:]
        size = req.size or int(session.settings.get("patch_size") or defaults((1, h, w))["patch_size"])
        if size > min(h, w):
            raise BackdoorLabError(f"size: {size} is larger than the {h}×{w} images; use at most {min(h, w)}")
        private, _ = state.registry.copy(session.model_id)
        kept = [
            (k.id, k.name, k.trigger, k.spec) for k in state.shelf.list() if k.model_id == session.model_id
        ]

        def work(job) -> dict[str, Any]:
            return run_candidates(
                job, private, session, size=size, n_colors=req.n_colors, reps=req.reps, kept=kept
            )

        job = state.jobs.submit("candidates", work)
        return {"job_id": job.id, "status": job.status}


# -- browsing -------------------------------------------------------------------------------------------------
def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(root.resolve(strict=True))
    except (ValueError, OSError):
        return False
    return True


def _run_summary(rec) -> dict[str, Any]:
    cfg = rec.config if isinstance(rec.config, dict) else {}
    victim = (rec.metrics or {}).get("victim", {}) if isinstance(rec.metrics, dict) else {}
    clean = (rec.metrics or {}).get("clean", {}) if isinstance(rec.metrics, dict) else {}
    attack = cfg.get("attack") or {}
    return {
        "id": rec.id,
        "name": rec.name,
        "created": rec.created_iso,
        "seconds": round(float(rec.seconds), 1),
        "data": (cfg.get("data") or {}).get("name"),
        "model": (cfg.get("model") or {}).get("name"),
        "attack": attack.get("name") if isinstance(attack, dict) else None,
        "clean_acc": victim.get("clean_acc"),
        "asr": victim.get("asr"),
        "reference_clean_acc": clean.get("clean_acc") if isinstance(clean, dict) else None,
        "report": f"/runs/{rec.id}/report" if rec.report else None,
    }


def _report_response(path: Path) -> Response:
    ext = path.suffix.lstrip(".").lower()
    return FileResponse(
        path,
        media_type=_MEDIA.get(ext, "application/octet-stream"),
        headers={"content-security-policy": REPORT_CSP, "x-content-type-options": "nosniff"},
    )


def _browse_routes(app: FastAPI, state: UIState) -> None:
    def blind_guard() -> None:
        if state.blind:
            raise _http_error(403, "runs: hidden in a blind study (they reveal which models are poisoned)")

    def store():
        from backdoorlab.experiments.store import RunStore

        return RunStore(state.home / "store.sqlite")

    def record(run_id: str):
        _check_id(run_id, S.RUN_ID, "run_id", "pick a run from /api/runs")
        try:
            return store().get(run_id)
        except BackdoorLabError as exc:
            raise _http_error(404, f"run_id: {exc}") from None

    @app.get("/api/runs")
    def runs(limit: int = 200) -> dict[str, Any]:
        blind_guard()
        if not 1 <= limit <= 10_000:
            raise _http_error(422, "limit: must be 1..10000")
        return {"runs": [_run_summary(r) for r in store().list(limit)]}

    @app.get("/api/runs/{run_id}")
    def run(run_id: str) -> dict[str, Any]:
        blind_guard()
        rec = record(run_id)
        models = [m for m in _model_list(state) if rec.id in m["runs"]]
        return {
            **_run_summary(rec),
            "config": rec.config,
            "metrics": rec.metrics,
            "models": [{"id": m["id"], "role": m["role"], "name": m["name"]} for m in models],
        }

    @app.get("/api/sweeps")
    def sweeps() -> dict[str, Any]:
        """The sweeps of the store with their counts, and their aggregated report when one was written."""
        blind_guard()
        out = []
        for sw in store().sweeps():
            report = state.home / "sweeps" / sw.id / "report.html"
            out.append(
                {
                    "id": sw.id,
                    "name": sw.name,
                    "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(sw.created)),
                    "counts": sw.counts,
                    "total": sw.total,
                    "report": f"/sweeps/{sw.id}/report" if report.is_file() else None,
                }
            )
        return {"sweeps": out}

    @app.get("/sweeps/{sweep_id}/report", include_in_schema=False)
    def sweep_report(sweep_id: str) -> Response:
        blind_guard()
        _check_id(sweep_id, S.RUN_ID, "sweep_id", "pick a sweep from /api/sweeps")
        try:
            sw = store().get_sweep(sweep_id)
        except BackdoorLabError as exc:
            raise _http_error(404, f"sweep_id: {exc}") from None
        root = state.home / "sweeps"
        path = root / sw.id / "report.html"
        if not path.is_file() or not _inside(path, root):
            raise _http_error(
                404, f"sweep_id: sweep {sw.id} has no report yet (`backdoorlab sweep report {sw.id}`)"
            )
        return _report_response(path.resolve())

    @app.get("/runs/{run_id}/report", include_in_schema=False)
    def run_report(run_id: str) -> Response:
        blind_guard()
        rec = record(run_id)
        if not rec.report:
            raise _http_error(404, f"run_id: run {rec.id} has no report (`backdoorlab runs report {rec.id}`)")
        path = Path(rec.report)
        if path.suffix.lower() != ".html" or not _inside(path, state.home) or not path.is_file():
            raise _http_error(404, f"run_id: the report of run {rec.id} is missing or outside the workspace")
        return _report_response(path.resolve())

    def repro_root() -> Path:
        return state.home / "reproductions"

    @app.get("/api/reproductions")
    def reproductions() -> dict[str, Any]:
        blind_guard()
        root = repro_root()
        out = []
        if root.is_dir():
            for folder in sorted(root.iterdir()):
                if not folder.is_dir() or not REPRO_NAME.match(folder.name) or not _inside(folder, root):
                    continue
                files = sorted(
                    p.name
                    for p in folder.iterdir()
                    if p.is_file() and REPRO_FILE.match(p.name) and _inside(p, folder)
                )
                report = next((f for f in ("report.html", "index.html") if f in files), None)
                out.append(
                    {
                        "name": folder.name,
                        "report": None if report is None else f"/reproductions/{folder.name}/{report}",
                        "files": [{"name": f, "url": f"/reproductions/{folder.name}/{f}"} for f in files],
                        "images": [
                            f"/reproductions/{folder.name}/{f}"
                            for f in files
                            if f.endswith((".png", ".jpg", ".svg"))
                        ],
                        "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(folder.stat().st_mtime)),
                    }
                )
        return {"reproductions": out}

    @app.get("/reproductions/{name}/{file}", include_in_schema=False)
    def reproduction_file(name: str, file: str) -> Response:
        blind_guard()
        if not REPRO_NAME.match(name):
            raise _http_error(404, f"name: {name[:60]!r} is not a reproduction name (a-z, 0-9, _ and -)")
        if not REPRO_FILE.match(file):
            raise _http_error(404, f"file: {file[:60]!r} is not a report file name")
        root = repro_root()
        folder = root / name
        path = folder / file
        # both the folder and the file must resolve inside the workspace's reproductions (no symlinks out)
        if not _inside(folder, root) or not _inside(path, folder) or not path.is_file():
            raise _http_error(404, f"file: no {file} in reproduction {name}")
        return _report_response(path.resolve())


# -- decisions ------------------------------------------------------------------------------------------------
def _decision_routes(app: FastAPI, state: UIState) -> None:
    def truths() -> dict[str, str | None]:
        return {e.id: e.truth for e in state.registry.list()}

    @app.post("/api/decisions", status_code=201)
    def decide(req: S.DecisionRequest) -> dict[str, Any]:
        entry = state.registry.get(req.model_id)
        name = entry.public(state.blind)["name"]
        d = state.decisions.put(
            entry.id, req.verdict, req.note, analyst=req.analyst, approach=req.approach, model_name=name
        )
        return d.to_json(None)

    @app.get("/api/decisions")
    def decisions() -> dict[str, Any]:
        t = {} if state.blind else truths()
        return {"decisions": [d.to_json(t.get(d.model_id)) for d in state.decisions.list()]}

    @app.delete("/api/decisions/{model_id}")
    def undecide(model_id: str, analyst: str = "") -> dict[str, Any]:
        _check_id(model_id, MODEL_ID, "model_id", "pick a model from /api/models")
        if not re.match(S.ANALYST, analyst):
            raise _http_error(422, "analyst: use up to 40 letters, digits, spaces and . @ -")
        if not state.decisions.delete(model_id, analyst):
            raise _http_error(
                404, f"model_id: no decision on {model_id[:12]}… by {analyst or 'the anonymous analyst'}"
            )
        return {"deleted": model_id, "analyst": analyst}

    @app.get("/api/study")
    def study() -> dict[str, Any]:
        if state.blind:
            raise _http_error(403, "study: scored after the blind session (restart the tool without blind)")
        return state.decisions.study(truths())


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("backdoorlab")
    except Exception:  # not installed as a distribution
        return "unknown"


# -- serving --------------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class RunningServer:
    """A server started by :func:`start_server` in a background thread (tests, notebooks)."""

    url: str
    server: Any
    thread: threading.Thread
    app: FastAPI

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.app.state.ui.jobs.shutdown()


def _bind(host: str, port: int) -> socket.socket:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise BackdoorLabError(f"port must be 0 (any free port) or 1..65535, got {port!r}")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise BackdoorLabError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port (0 picks a free one)"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown.strip("[]"):
        shown = f"[{shown.strip('[]')}]"
    return f"http://{shown}:{port}/"


def _uvicorn_server(app: FastAPI) -> Any:
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise BackdoorLabError(
            "backdoorlab ui needs uvicorn, which is not installed; pip install 'backdoorlab[ui]'"
        ) from None

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    return uvicorn.Server(config)


def start_server(home: Path, host: str = "127.0.0.1", port: int = 0, **app_kwargs: Any) -> RunningServer:
    """Serve the tool for ``home`` from a background thread; returns when it accepts connections."""
    if not is_loopback(host) and "allowed_hosts" not in app_kwargs:
        app_kwargs["allowed_hosts"] = None
    app = create_app(home, **app_kwargs)
    sock = _bind(host, port)
    server = _uvicorn_server(app)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    end = time.time() + 15
    while not server.started:
        if not thread.is_alive() or time.time() > end:
            raise BackdoorLabError(f"the ui server on {host}:{port} did not start")
        time.sleep(0.02)
    return RunningServer(_url(host, sock), server, thread, app)


def serve(
    home: Path, host: str = "127.0.0.1", port: int = 0, open_browser: bool = False, **app_kwargs: Any
) -> None:
    """Serve the tool for ``home`` until interrupted (Ctrl+C); prints the address first."""
    explicit_remote = not is_loopback(host)
    if explicit_remote and "allowed_hosts" not in app_kwargs:
        app_kwargs["allowed_hosts"] = None
    app = create_app(home, **app_kwargs)
    sock = _bind(host, port)
    url = _url(host, sock)
    print(f"backdoorlab ui: {url}  (workspace {Path(home).expanduser()}; Ctrl+C stops it)", flush=True)
    if open_browser:
        threading.Timer(0.5, lambda: webbrowser.open(url)).start()
    server = _uvicorn_server(app)
    try:
        server.run(sockets=[sock])
    finally:
        app.state.ui.jobs.shutdown()
        with contextlib.suppress(OSError):
            sock.close()


def run_ui_cli(home: Path, host: str | None, port: int, open_browser: bool, *, blind: bool = False) -> int:
    """``backdoorlab ui [--host H] [--port N] [--open]``: print the address (and a warning for a non-loopback
    host) and serve until Ctrl+C. ``host`` None binds to 127.0.0.1; ``blind`` hides model names, runs and the
    ground truth for a user study (App. D.2). Returns the exit status."""
    bind = "127.0.0.1" if host is None else host
    if host is not None and not is_loopback(host):
        print(
            f"WARNING: serving on {host}: anyone who can reach this address can use the tool, upload models and "
            "read your runs and reports — there is no login. Use the default 127.0.0.1 unless you mean it.",
            file=sys.stderr,
            flush=True,
        )
    if blind:
        serve(Path(home), bind, port, open_browser, blind=True)
    else:
        serve(Path(home), bind, port, open_browser)
    return 0


__all__ = [
    "DEFAULT_MAX_UPLOAD",
    "RunningServer",
    "create_app",
    "is_loopback",
    "run_ui_cli",
    "serve",
    "start_server",
]
