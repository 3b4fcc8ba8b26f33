"""The record over HTTP: recent decisions with their overlays, verdicts, the watch, Prometheus metrics.

Routes (behind the API key when the server has one): ``GET /records``, ``GET /records/{id}/overlay``,
``POST /records/{id}/verdict``, ``GET /status``, ``GET /metrics``. Each model's record is the store
it was served with; ``model`` names it as in ``/predict``.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from spadim.errors import SpadimError
from spadim.inspect.watching import model_status
from spadim.record import VERDICTS, RecordStore

SHOWS = ("recent", "defect", "near", "unreviewed")
NEAR = 0.2  # "near the level": a region score within 20% of it


class LineMetrics:
    """The server's Prometheus metrics, in a registry of its own (two apps in one process never mix)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "spadim_decisions", "decisions answered", ["model", "decision"], registry=self.registry
        )
        self.latency = Histogram(
            "spadim_predict_seconds", "scoring time of one image", ["model"], registry=self.registry
        )
        self.false_alarm_rate = Gauge(
            "spadim_false_alarm_rate",
            "flagged share of images confirmed good",
            ["model"],
            registry=self.registry,
        )
        self.false_alarm_bound = Gauge(
            "spadim_false_alarm_upper_bound",
            "anytime-valid upper bound of the false-alarm rate",
            ["model"],
            registry=self.registry,
        )
        self.alert = Gauge(
            "spadim_alert", "1 while an alert holds", ["model", "kind"], registry=self.registry
        )

    def observe(self, model: str, decision: str, seconds: float) -> None:
        self.decisions.labels(model, decision).inc()
        self.latency.labels(model).observe(seconds)

    def refresh(self, model: str, status: dict) -> None:
        watch = status["false_alarms"]
        self.false_alarm_rate.labels(model).set(
            watch["observed"] if watch["observed"] is not None else float("nan")
        )
        self.false_alarm_bound.labels(model).set(watch["upper_bound"])
        self.alert.labels(model, "false_alarms").set(float(watch["alert"]))
        self.alert.labels(model, "drift").set(float(status["drift"]["alert"]))


def add_line_routes(
    app: FastAPI,
    inspectors,
    stores: dict[str, RecordStore | None],
    metrics: LineMetrics,
    default_model: str,
    writers: dict,
) -> None:
    """``writers``: a lock per model, held while an update writes a version (shared with the take-out)."""

    def chosen(model: str | None) -> tuple[str, RecordStore]:
        name = model or default_model
        if name not in inspectors:
            raise HTTPException(404, f"no model named {name!r}: this server has {', '.join(inspectors)}")
        store = stores.get(name)
        if store is None:
            raise HTTPException(404, f"model {name!r} is served without a record store")
        return name, store

    @app.get("/records")
    def records(model: str | None = None, show: str = "recent", limit: int = 50) -> JSONResponse:
        name, store = chosen(model)
        if show not in SHOWS:
            raise HTTPException(422, f"show must be one of {', '.join(SHOWS)} (got {show!r})")
        filters = {"recent": {}, "defect": {"decision": "defect"}, "near": {"near": NEAR}}.get(show, {})
        if show == "unreviewed":
            filters = {"unreviewed": True}
        rows = store.query(limit=max(1, min(limit, 500)), newest_first=True, **filters)
        return JSONResponse({"model": name, "show": show, "records": [_plain(row) for row in rows]})

    @app.get("/records/{decision_id}/overlay")
    def overlay(decision_id: int, model: str | None = None) -> Response:
        _, store = chosen(model)
        picture = store.overlay(decision_id)
        if picture is None:
            raise HTTPException(404, f"decision {decision_id} has no overlay in the record")
        return Response(picture, media_type="image/jpeg")

    @app.post("/records/{decision_id}/verdict")
    async def verdict(decision_id: int, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(422, 'send JSON: {"verdict": "good" or "defect", "by": "name"}') from None
        name, store = chosen(body.get("model"))
        if body.get("verdict") not in VERDICTS:
            raise HTTPException(422, f"verdict must be one of {', '.join(VERDICTS)}")
        try:
            row = await run_in_threadpool(
                store.review, decision_id, body["verdict"], body.get("by"), body.get("note")
            )
        except SpadimError as exc:
            raise HTTPException(404, str(exc)) from None
        return JSONResponse(
            {"model": name, "record": _plain(row), "history": len(store.history(decision_id))}
        )

    @app.post("/models/{name}/update")
    async def update(name: str, request: Request) -> JSONResponse:
        """Grow the model with every record confirmed good that it does not hold; serve the new version.
        Images that stand apart from the calibration are left out and named, unless the body says
        ``{"keep_apart": true}``: a second, explicit step of the operator who confirmed them."""
        from spadim.inspect.update import update_model

        name, store = chosen(name)
        inspector = inspectors[name]
        body = await request.body()
        try:
            options = json.loads(body) if body.strip() else {}
        except ValueError:
            options = None
        if not isinstance(options, dict) or not isinstance(options.get("keep_apart", False), bool):
            raise HTTPException(422, 'send no body, or JSON: {"keep_apart": true or false}')
        keep_apart = options.get("keep_apart", False)
        lines: list[str] = []

        def grow() -> dict:
            with writers[name]:
                result = update_model(
                    inspector.model_path,
                    store=store,
                    weights=inspector.load_options.get("weights"),
                    keep_apart=keep_apart,
                    reason="confirmed good on the page"
                    + ("; those that stood apart added by the operator" if keep_apart else ""),
                    say=lines.append,
                )
                if result["added"]:
                    inspectors.reload_now(name)
                return result

        try:
            result = await run_in_threadpool(grow)
        except SpadimError as exc:
            raise HTTPException(409, str(exc)) from None
        return JSONResponse(
            {
                "model": name,
                "model_version": inspectors[name].model_version,
                "added": result["added"],
                "set_apart": result["set_apart"],
                "stood_apart": result["stood_apart"],
                "n_images": result.get("n_images"),
                "level_before": result["level_before"],
                "level_after": result["level_after"],
                "lines": lines,
            }
        )

    @app.get("/status")
    async def status(model: str | None = None) -> JSONResponse:
        name, store = chosen(model)
        try:
            result = await run_in_threadpool(model_status, inspectors[name], store)
        except SpadimError as exc:
            raise HTTPException(409, str(exc)) from None
        metrics.refresh(name, result)
        return JSONResponse({"model_name": name, **result})

    @app.get("/metrics")
    async def prometheus() -> Response:
        for name, store in stores.items():
            if store is None:
                continue
            try:
                metrics.refresh(name, await run_in_threadpool(model_status, inspectors[name], store))
            except SpadimError:
                continue  # an uncalibrated model has no promise to watch
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _plain(row: dict) -> dict:
    return {key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in row.items()}
