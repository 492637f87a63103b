"""The whole prediction as one module: ``AgeModel`` + Adaptive Routing, images in, ages out.

``glae predict`` runs it in PyTorch and ``glae export`` traces it into ONNX, so both
backends compute the same graph; its input and output names are that graph's contract.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..routing import RoutingMode, heads_for, route
from .pair import InferenceModel

INPUT_NAME = "images"
ROUTED_OUTPUTS = ("age", "probs", "used_balanced")
"""Outputs of every exported graph; ``vanilla_probs`` always follows, ``balanced_probs`` too
when the model has a trained balanced head."""


class RoutedAgeModel(nn.Module):
    """``AgeModel`` (or ``ModelPair``) + ``route`` as one module, so the whole prediction is one traceable graph.

    ``forward`` maps normalized images ``[B, 3, S, S]`` to ``(age [B], probs [B, K+1],
    used_balanced [B] bool, vanilla_probs [B, K+1][, balanced_probs [B, K+1]])``: the routed
    age and distribution, which images went to the balanced head, and each head's
    flip-averaged distribution. In ``vanilla`` mode the balanced head is never run (it was
    not trained), so ``balanced_probs`` is absent.
    """

    def __init__(self, model: InferenceModel, mode: RoutingMode) -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.heads = heads_for(mode)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        views = self.model.predict_views(images, self.heads)
        routed = route(views, self.mode)
        per_head = tuple(views[head].mean(0) for head in self.heads)
        return (routed.ages, routed.probs, routed.used_balanced, *per_head)
