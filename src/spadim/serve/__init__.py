"""``spadim serve``: fitted models behind an HTTP API and a drop-an-image page (FastAPI on uvicorn).

:func:`create_app` builds the app over loaded inspectors (tests drive it without a port),
:func:`bind` claims the port before models load, :func:`serve` runs uvicorn on it.
"""

from .app import (
    DEFAULT_HOST,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    DecodeBudget,
    bind,
    create_app,
    exposure_warning,
    load_inspectors,
    serve,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_PORT",
    "DecodeBudget",
    "bind",
    "create_app",
    "exposure_warning",
    "load_inspectors",
    "serve",
]
