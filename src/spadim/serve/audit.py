"""The audit over HTTP: the good images that stood apart when a served model was fitted or updated,
each kept or taken out (:mod:`spadim.inspect.audit_actions`); a take-out's new version is swapped in
before the answer.

Routes (behind the API key when the server has one): ``GET /models/{name}/audit``,
``GET /models/{name}/audit/thumbnail?image=NAME`` (the training file, when it is still readable),
``POST /models/{name}/audit/keep`` and ``POST /models/{name}/audit/take-out`` with JSON
``{"image": NAME, "reason": "..."}``. Only images the model's own audit names are read or acted on.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from spadim.errors import SpadimError
from spadim.inspect.audit_actions import audit_list, keep, take_out, training_set
from spadim.run.modelfile import load_model

THUMBNAIL = 160  # longest side of a thumbnail, pixels


def add_audit_routes(app: FastAPI, inspectors, stores: dict, writers: dict) -> None:
    """``writers``: a lock per model, held while a take-out writes a version (shared with the update)."""

    def model_of(name: str) -> Path:
        if name not in inspectors:
            raise HTTPException(404, f"no model named {name!r}: this server has {', '.join(inspectors)}")
        path = inspectors[name].model_path
        if path is None or inspectors[name].runtime != "torch":
            raise HTTPException(
                409, f"model {name!r} is not served from its model file: act on the audit there"
            )
        return Path(path)

    async def body_of(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            raise HTTPException(422, 'send JSON: {"image": "name as the audit lists it", "reason": "why"}')
        return body

    @app.get("/models/{name}/audit")
    async def listing(name: str) -> JSONResponse:
        model = model_of(name)
        try:
            entries = await run_in_threadpool(audit_list, model)
        except SpadimError as exc:
            raise HTTPException(409, str(exc)) from None
        return JSONResponse(
            {"model": name, "model_version": inspectors[name].model_version, "audit": entries}
        )

    @app.get("/models/{name}/audit/thumbnail")
    async def thumbnail(name: str, image: str) -> Response:
        model = model_of(name)
        picture = await run_in_threadpool(_thumbnail, model, image)
        if picture is None:
            raise HTTPException(404, f"no readable training file for {image!r} of model {name!r}")
        return Response(picture, media_type="image/jpeg")

    @app.post("/models/{name}/audit/keep")
    async def keep_image(name: str, request: Request) -> JSONResponse:
        model, body = model_of(name), await body_of(request)
        try:
            records = await run_in_threadpool(
                lambda: keep(model, [body["image"]], reason=body.get("reason"), store=stores.get(name))
            )
        except SpadimError as exc:
            raise HTTPException(404, str(exc)) from None
        return JSONResponse({"model": name, "model_version": inspectors[name].model_version, "kept": records})

    @app.post("/models/{name}/audit/take-out")
    async def take_out_image(name: str, request: Request) -> JSONResponse:
        model, body = model_of(name), await body_of(request)
        lines: list[str] = []
        weights = inspectors[name].load_options.get("weights")

        def refit() -> dict:
            with writers[name]:
                result = take_out(
                    model,
                    [body["image"]],
                    reason=body.get("reason"),
                    weights=weights,
                    store=stores.get(name),
                    say=lines.append,
                )
                inspectors.reload_now(name)
                return result

        try:
            result = await run_in_threadpool(refit)
        except SpadimError as exc:
            raise HTTPException(409, str(exc)) from None
        return JSONResponse(
            {
                "model": name,
                "model_version": inspectors[name].model_version,
                "removed": result["removed"],
                "level_before": result["level_before"],
                "level_after": result["level_after"],
                "lines": lines,
            }
        )


def _thumbnail(model: Path, image: str) -> bytes | None:
    """A small JPEG of an audited training image's file, or None when it is not readable."""
    try:
        audited = {entry["image"] for entry in audit_list(model)}
        _, meta = load_model(model)
    except SpadimError:
        return None
    files = {item["image"]: item["file"] for item in training_set(meta)}
    if image not in audited or image not in files or not Path(files[image]).is_file():
        return None
    picture = cv2.imread(files[image], cv2.IMREAD_COLOR)
    if picture is None:
        return None
    scale = THUMBNAIL / max(picture.shape[:2])
    if scale < 1:
        size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(picture), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return encoded.tobytes() if ok else None
