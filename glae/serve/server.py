"""``glae serve``: load the model once, then run the app under uvicorn."""

from __future__ import annotations

import os

from ..estimator import AgeEstimator, resolve_model_path
from ..errors import MissingExtraError
from ..predict_options import PredictOptions
from .settings import ServeSettings

try:
    import python_multipart  # noqa: F401  (Starlette's form parser)
    import uvicorn
    from fastapi import FastAPI

    from .app import create_app
    from .protocol import guarded_protocol
except ImportError as missing:
    raise MissingExtraError(f"glae serve needs {missing.name}: pip install 'glae[serve]'") from None


def serve(
    model: str | os.PathLike | None, options: PredictOptions, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000
) -> None:
    """Serve ``model`` (a .safetensors or .onnx file, None for the shipped one) until interrupted.

    The model loads before the socket opens, so a bad path fails the command with one
    line instead of a server that answers 500.
    """
    path = resolve_model_path(model)
    estimator = AgeEstimator.load(path, options)
    app = create_app(estimator, settings, path.name)
    uvicorn.Server(server_config(app, settings, host, port)).run()


def server_config(app: FastAPI, settings: ServeSettings, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's configuration with GLAE's connection limits (``glae.serve.protocol``)."""
    protocol = guarded_protocol(settings.max_connections, settings.header_timeout_s)
    return uvicorn.Config(app, host=host, port=port, http=protocol, log_level=log_level)
