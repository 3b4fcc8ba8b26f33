"""The HTTP server: loaded :class:`~spadim.inspect.Inspector` objects behind a JSON API and one page.

Models load once, before the port is served; each upload is decoded, scored and drawn in a worker
thread while the event loop keeps answering. One lock per model keeps two requests from running the
same model object at once: its extractor keeps per-call state (forward counter, shape cache) that is
not made for threads, and two batch-of-one inferences would only fight for the same cores. Different
models run in parallel. Every refusal is ``{"error": "..."}`` with a status that says whose fault
it is, and the server keeps serving after it.
"""

from __future__ import annotations

from contextlib import nullcontext

import base64
import hmac
import ipaddress
import math
import socket
import threading
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from spadim.data.guard import ImageRefused, check_header, max_pixels
from spadim.data.mvtec import decode_rgb
from spadim.errors import SpadimError
from spadim.inspect import Inspector, OperatingPoint
from spadim.decision.conformal import check_far
from spadim.record import RecordStore, decision_row, review_picture, sha256_bytes
from .audit import add_audit_routes
from .line import LineMetrics, add_line_routes
from .versions import ModelSlots

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small form fields, on top of the image itself
PAGE = "page.html"
OPEN_PATHS = (
    "/health",
    "/",
)  # load balancers probe /health; the page itself holds no data and asks for the key
DECODE_WAIT_S = 30.0  # how long an upload waits for decode memory before a 503
BYTES_PER_PIXEL = (
    24  # decoded RGB, the full-resolution map, mask and overlay of one image, with room to spare
)


# ------------------------------------------------------------------ loading and binding
def load_inspectors(
    paths: list[Path], weights: str | None = None, runtime: str = "torch", device: str = "cpu"
) -> dict[str, Inspector]:
    """Model files (or ONNX export folders) -> inspectors keyed by file stem (the name clients send as
    ``model``)."""
    names: dict[str, Path] = {}
    for path in paths:
        path = Path(path)
        if path.stem in names:
            raise SpadimError(
                f"models {names[path.stem]} and {path} share the name {path.stem!r}: the "
                f"server tells models apart by file stem, so rename one"
            )
        names[path.stem] = path
    return {
        name: Inspector.load(path, weights=weights, runtime=runtime, device=device)
        for name, path in names.items()
    }


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, so a port in use fails here, in one line, before any model is served."""
    if not 0 <= port <= 65535:
        raise SpadimError(f"`port` must be between 0 and 65535 (got {port})")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise SpadimError(
            f"cannot serve on host {host!r}: {exc.strerror}; give `host` an address such as 127.0.0.1"
        ) from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
    try:
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise SpadimError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc}; stop whatever holds the "
            f"port or pick another `port`"
        ) from None
    return listener


# ------------------------------------------------------------------ the app
class UploadLimit:
    """Refuses an oversized body as it streams in (413), so a huge upload is never held whole."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            return await _error(413, self._message())(scope, receive, send)
        received = 0

        async def capped_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, capped_receive, send)

    def _message(self) -> str:
        limit = _megabytes(self.max_body - FORM_OVERHEAD)
        return f"upload is over the server's limit of {limit}: send a smaller image"


class ApiKey:
    """Every path but ``OPEN_PATHS`` needs the key, as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``:
    401 without one, 403 with a wrong one (compared in constant time)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        bearer = headers.get(b"authorization", b"")
        if given is None and bearer[:7].lower() == b"bearer ":
            given = bearer[7:].strip()
        if given is None:
            response = _error(401, "this server needs an API key: send it as the header X-API-Key")
            response.headers["WWW-Authenticate"] = 'Bearer realm="spadim"'
            return await response(scope, receive, send)
        if not hmac.compare_digest(given, self.key):
            return await _error(403, "wrong API key")(scope, receive, send)
        await self.app(scope, receive, send)


class DecodeBudget:
    """Caps the pixels being decoded and scored at once (so four 50-megapixel uploads cannot take the
    host's memory together): a request takes its image's pixel count before decoding and gives it back
    after; one that cannot get it within ``DECODE_WAIT_S`` is refused with 503."""

    def __init__(self, pixels: int):
        self.total, self.free = int(pixels), int(pixels)
        self._changed = threading.Condition()

    def take(self, pixels: int, wait: float = DECODE_WAIT_S) -> None:
        pixels = min(max(int(pixels), 1), self.total)  # an image at the limit may run alone
        with self._changed:
            if not self._changed.wait_for(lambda: self.free >= pixels, timeout=wait):
                raise HTTPException(503, "the server is busy decoding other large images: retry shortly")
            self.free -= pixels

    def give(self, pixels: int) -> None:
        with self._changed:
            self.free += min(max(int(pixels), 1), self.total)
            self._changed.notify_all()


def create_app(
    inspectors: dict[str, Inspector],
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20,
    api_key: str | None = None,
    decode_pixels: int | None = None,
    stores: dict[str, RecordStore | None] | None = None,
) -> FastAPI:
    """The API over already-loaded inspectors; the first one answers requests that name no model.
    ``api_key`` guards every path but /health and the page; ``decode_pixels`` caps the pixels decoded
    at once (default: twice the per-image limit); ``stores``: each model's record (None: not recorded).
    A recorded decision is answered only after its record has committed."""
    if not inspectors:
        raise SpadimError("no model to serve: give at least one model file")
    if max_upload_bytes < 1:
        raise SpadimError(f"`max_upload_bytes` must be positive (got {max_upload_bytes})")
    # an inspector whose scoring runs elsewhere (Ray Serve) takes concurrent calls: no lock, so they batch
    locks = {
        name: nullcontext() if inspector.concurrent else threading.Lock()
        for name, inspector in inspectors.items()
    }
    default_model = next(iter(inspectors))
    inspectors = ModelSlots(inspectors)  # the version in force of each model, swapped between requests
    app = FastAPI(title="spadim", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(UploadLimit, max_body=max_upload_bytes + FORM_OVERHEAD)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)  # added last, so it runs first: no body is read without it
    budget = DecodeBudget(decode_pixels or 2 * max_pixels())
    stores = {name: (stores or {}).get(name) for name in inspectors}
    metrics = LineMetrics()
    # an update or take-out and the swap to the version it made are one step per model: versions.writing
    # already serialises the writes (across processes too), and this lock keeps an earlier action's
    # reload from landing after a later one's (the server would then serve the older version)
    writers = {name: threading.Lock() for name in inspectors}
    add_line_routes(app, inspectors, stores, metrics, default_model, writers)
    add_audit_routes(app, inspectors, stores, writers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        return _error(500, f"internal error ({type(exc).__name__}: {exc}); the server is still running")

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath(PAGE).read_text(encoding="utf-8"))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "models": list(inspectors)}

    @app.get("/models")
    def models() -> JSONResponse:
        return _json(
            {
                "default": default_model,
                "max_upload_bytes": max_upload_bytes,
                "models": [_model_entry(name, inspector) for name, inspector in inspectors.items()],
            }
        )

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        form = await _read_form(request)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise HTTPException(
                422, "missing the image: send the picture as the multipart file field 'image'"
            )
        if upload.size is not None and upload.size > max_upload_bytes:
            raise HTTPException(
                413,
                f"image is {_megabytes(upload.size)}, over the server's limit of "
                f"{_megabytes(max_upload_bytes)}: send a smaller image",
            )
        name = _text(form, "model") or default_model
        if name not in inspectors:
            raise HTTPException(404, f"no model named {name!r}: this server has {', '.join(inspectors)}")
        inspector = inspectors[name]
        threshold, far = _number(form, "threshold"), _number(form, "far")
        point = _operating_point(inspector, threshold, far)
        data = await upload.read()
        filename = upload.filename or "upload"
        store = stores[name] if _text(form, "record") not in ("0", "false", "no") else None
        record = await run_in_threadpool(
            _predict_one, inspector, locks[name], data, filename, point, budget, store
        )
        metrics.observe(name, record["decision"], record["seconds"])
        return _json({"model": name, **record})

    return app


async def _read_form(request: Request):
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise HTTPException(
            415,
            f"send multipart/form-data with the image in the field 'image' "
            f"(got content type {kind or 'none'!r})",
        )
    return await request.form(max_files=1, max_fields=8)


def _text(form, field: str) -> str | None:
    value = form.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HTTPException(422, f"{field} must be a plain form field, not a file")
    return value.strip() or None  # an empty field (a cleared HTML input) means "not given"


def _number(form, field: str) -> float | None:
    text = _text(form, field)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise HTTPException(422, f"{field} must be a number (got {text!r})") from None


def _operating_point(inspector: Inspector, threshold: float | None, far: float | None) -> OperatingPoint:
    """The thresholds for one request; the inspector's messages name CLI flags, these name form fields."""
    if threshold is not None and far is not None:
        raise HTTPException(
            422, "give threshold or far, not both: far picks a threshold from the calibration"
        )
    if threshold is not None and not math.isfinite(threshold):
        raise HTTPException(422, f"threshold must be a finite score (got {threshold})")
    try:
        if far is not None:
            check_far(far, "far")
        return inspector.operating_point(threshold, far)
    except SpadimError as exc:
        raise HTTPException(422, str(exc)) from None


def _predict_one(
    inspector: Inspector,
    lock,
    data: bytes,
    filename: str,
    point: OperatingPoint,
    budget: DecodeBudget,
    store: RecordStore | None = None,
) -> dict:
    """Judge the header, take decode memory, decode, score under the model's lock, draw: the part of a
    request that runs in a worker thread."""
    try:
        width, height = check_header(data, filename)
    except ImageRefused as exc:
        raise HTTPException(413, str(exc)) from None
    pixels = width * height or max_pixels()  # a format Pillow cannot size counts as the largest
    budget.take(pixels)
    try:
        try:
            rgb = decode_rgb(data, filename)  # its header check passes again: the same bytes passed above
        except SpadimError as exc:
            raise HTTPException(415, str(exc)) from None
        started = time.perf_counter()
        with lock:
            (prediction,) = inspector.predict_batch([rgb], [filename], point)
            overlay = inspector.overlay(rgb, prediction, point)
        seconds = time.perf_counter() - started
    finally:
        budget.give(pixels)
    answer = prediction.to_json(point)
    record_id = None
    if store is not None:
        row = decision_row(
            answer,
            image_sha256=sha256_bytes(data),
            model_version=inspector.model_version,
            method=inspector.method.name,
            far=point.far,
            source="serve",
        )
        record_id = store.add(row, review_picture(overlay), data)["id"]
    low, high = inspector.colour_range(point)
    return {
        **answer,
        "model_version": inspector.model_version,
        "record_id": record_id,
        "point": asdict(point),
        "warnings": inspector.warnings(point),
        "colour_range": {"low": low, "high": high, "threshold": point.pixel_threshold},
        "seconds": seconds,
        "mask_png": _png(prediction.defect_mask.astype(np.uint8) * 255),
        "overlay_png": _png(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)),
    }


def _model_entry(name: str, inspector: Inspector) -> dict:
    """``describe()`` plus what a client needs to pick a threshold: the default point, or why none."""
    entry = {"name": name, "model_version": inspector.model_version, **inspector.describe()}
    try:
        point = inspector.operating_point()
    except SpadimError as exc:  # an uncalibrated model still serves requests that give a threshold
        return {**entry, "default_point": None, "warnings": [str(exc)]}
    low, high = inspector.colour_range(point)
    return {
        **entry,
        "default_point": asdict(point),
        "warnings": inspector.warnings(point),
        "colour_range": {"low": low, "high": high, "threshold": point.pixel_threshold},
    }


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The start-up warning for a server that others can reach with no key, or None."""
    try:
        loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if api_key or loopback:
        return None
    return (
        f"warning: serving on {host} without an API key: anyone who can reach the port can use the "
        f"models; give an API key (api_key, or $SPADIM_API_KEY), or bind 127.0.0.1"
    )


def _png(picture: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def _finite(value):
    """JSON has no NaN or infinity: such numbers go out as null instead of failing the response."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _json(content: dict, status: int = 200) -> JSONResponse:
    return JSONResponse(_finite(content), status_code=status)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _megabytes(size: int) -> str:
    return f"{size / (1 << 20):.3g} MB"


# ------------------------------------------------------------------ running
def serve(
    inspectors: dict[str, Inspector],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20,
    listener: socket.socket | None = None,
    say: Callable[[str], None] = print,
    started: Callable[[uvicorn.Server, str], None] | None = None,
    log_level: str = "info",
    api_key: str | None = None,
    stores: dict[str, RecordStore | None] | None = None,
) -> None:
    """Serve until Ctrl-C (or ``server.should_exit``). ``listener`` is a socket from :func:`bind`
    (the CLI binds before loading models); ``started(server, url)`` lets a caller stop the server."""
    app = create_app(inspectors, max_upload_bytes, api_key, stores=stores)
    listener = listener or bind(host, port)
    bound_host, bound_port = listener.getsockname()[:2]
    warning = exposure_warning(bound_host, api_key)
    if warning:
        say(warning)
    url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/"
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    for name, inspector in inspectors.items():
        about = inspector.describe()
        say(f"model {name}: {about['method']} for class {about['class_name']}, {inspector.backbone_text()}")
    for name, store in (stores or {}).items():
        if store is not None:
            say(f"model {name}: recording every decision in {store.target}")
    say(f"serving {len(inspectors)} model(s) on {url} (Ctrl-C stops)")
    if started is not None:
        started(server, url)
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
