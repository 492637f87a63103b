"""GLAE networks: backbones by name, the FR/PA heads and the two-head model."""

from .backbones import Backbone, BackboneError, create_backbone, list_backbones
from .glae import HEAD_NAMES, AgeModel, ModelConfig, count_parameters
from .heads import FeatureRearrangement, GAPHead, GLAEHead, HolisticBranch, RearrangedGAPHead, create_head, local_branch

__all__ = [
    "HEAD_NAMES",
    "AgeModel",
    "Backbone",
    "BackboneError",
    "FeatureRearrangement",
    "GAPHead",
    "GLAEHead",
    "HolisticBranch",
    "ModelConfig",
    "RearrangedGAPHead",
    "count_parameters",
    "create_backbone",
    "create_head",
    "list_backbones",
    "local_branch",
]
