"""The web app: the page, ``POST /api/predict`` and ``GET /health``.

Every refusal is ``{"error": message}`` with its status (400, 404, 405, 413, 415, 422,
503, 504, and 500 for a bug, logged here, never sent); the model is loaded before the app
exists and is shared by the worker threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from ..estimator import AgeEstimator
from .errors import ApiError
from .inference import predict_upload
from .pool import InferencePool, PoolBusy
from .settings import ServeSettings
from .upload import read_image_upload

STATIC = Path(__file__).parent / "static"
log = logging.getLogger(__name__)


def create_app(estimator: AgeEstimator, settings: ServeSettings, model_name: str) -> FastAPI:
    """The app around a loaded ``estimator`` (its detector is built here, once, not per request)."""
    estimator.detector  # the detector's weights load now: a missing install fails at startup
    pool = InferencePool(settings.workers, settings.queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown()

    # No /docs: Swagger UI loads its scripts from a CDN, and this server works offline.
    app = FastAPI(title="GLAE", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name}

    @app.post("/api/predict")
    async def predict(request: Request) -> dict[str, Any]:
        """Ages of every face in the image sent as multipart field ``file``."""

        async def handle() -> dict[str, Any]:
            with pool.admit() as slot:
                data = await read_image_upload(request, settings.max_upload_bytes)
                return await slot.run(predict_upload, estimator, data, settings.max_pixels, settings.max_faces)

        try:
            return await asyncio.wait_for(handle(), settings.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than {settings.timeout_s:g} s") from None
        except PoolBusy as error:
            raise ApiError(503, str(error)) from None

    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Turn every failure into ``{"error": message}``: a client parses one shape, and sees no traceback."""

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error(500, "internal server error (logged on the server)")
