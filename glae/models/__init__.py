"""GLAE networks: backbones and heads by name (registries), and the two-head model."""

from .backbones import Backbone, BackboneError, create_backbone, list_backbones, register_backbone
from .glae import HEAD_NAMES, AgeModel, ModelConfig, count_parameters
from .pair import InferenceModel, ModelPair
from .heads import (
    HEADS,
    AgeHead,
    FeatureRearrangement,
    GAPHead,
    GLAEHead,
    HolisticBranch,
    OrdinalHead,
    RearrangedGAPHead,
    create_head,
    local_branch,
    register_head,
)

__all__ = [
    "HEADS",
    "HEAD_NAMES",
    "AgeHead",
    "AgeModel",
    "Backbone",
    "BackboneError",
    "FeatureRearrangement",
    "GAPHead",
    "GLAEHead",
    "HolisticBranch",
    "InferenceModel",
    "ModelConfig",
    "ModelPair",
    "OrdinalHead",
    "RearrangedGAPHead",
    "count_parameters",
    "create_backbone",
    "create_head",
    "list_backbones",
    "local_branch",
    "register_backbone",
    "register_head",
]
