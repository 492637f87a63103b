"""GLAE: general and long-tailed facial age estimation.

An image goes: ``glae.data.images.read_rgb`` (decode) -> ``glae.faces`` (detect, align)
-> ``glae.data.transforms`` (resize, normalize) -> ``glae.models.AgeModel`` (backbone,
Feature Rearrangement, Pixel-level Auxiliary heads) -> ``glae.routing.route`` (Adaptive
Routing between the vanilla and balanced head) -> ``glae.losses.expected_age`` (the
predicted age). ``glae.AgeEstimator`` runs that whole path on photos.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``glae.AgeEstimator`` and ``glae.PredictOptions`` import torch only when used, so ``import glae`` stays light."""
    if name == "AgeEstimator":
        from .estimator import AgeEstimator

        return AgeEstimator
    if name == "PredictOptions":
        from .predict_options import PredictOptions

        return PredictOptions
    raise AttributeError(f"module 'glae' has no attribute {name!r}")


__all__ = ["AgeEstimator", "PredictOptions", "__version__"]
