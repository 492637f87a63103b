"""Errors shared across GLAE's commands that are not about one module's data."""

from __future__ import annotations


class MissingExtraError(ImportError):
    """An optional dependency is not installed (ONNX, serving, plots, training); the message says how."""


class BackboneError(RuntimeError):
    """Clear, actionable error: unknown name, weights unavailable offline, bad weights file."""
