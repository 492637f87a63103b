"""The limits one ``glae serve`` process enforces, checked once at startup."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..data.images import MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class ServeSettings:
    """What a request may cost. Every limit answers with a JSON error, never a traceback.

    Attributes:
        max_upload_mb: largest accepted file (413 above it, checked while the body streams
            in, so an oversized upload is never held whole in memory).
        max_pixels: largest decoded image (422), checked from the header before decoding;
            at most GLAE's own ``MAX_IMAGE_PIXELS``, which ``AgeEstimator`` enforces anyway.
        max_faces: faces estimated per photo; the largest are kept and the response says
            how many were found, so a crowd photo costs a bounded amount of model time.
        timeout_s: a request, upload plus queue plus inference, answers 504 after this.
        workers: inference threads; the event loop itself never runs the model.
        queue: requests allowed to wait for a worker; one more answers 503 at once.
        header_timeout_s: a connection whose request headers are not complete this long
            after it opened (or after its previous answer) is closed.
        max_connections: open connections; one more gets a 503 and is closed at once.

    How photos become ages (batch size, margin, face filter, device) is the estimator's
    ``PredictOptions``, the same as ``glae predict``'s.
    """

    max_upload_mb: float = 10.0
    max_pixels: int = 24_000_000
    max_faces: int = 20
    timeout_s: float = 30.0
    workers: int = 2
    queue: int = 32
    header_timeout_s: float = 10.0
    max_connections: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.max_pixels <= MAX_IMAGE_PIXELS:
            raise ValueError(f"--max-pixels must be in 1..{MAX_IMAGE_PIXELS}, got {self.max_pixels}")
        for name in ("max_upload_mb", "timeout_s", "header_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):  # nan passes `<= 0`, then fails every request
                raise ValueError(f"--{name.replace('_', '-').removesuffix('-s')} must be a positive finite number, got {value}")
        for name in ("max_faces", "workers", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.queue < 0:
            raise ValueError(f"--queue must be >= 0, got {self.queue}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
