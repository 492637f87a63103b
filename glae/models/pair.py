"""Two trained networks as one model: the first reads the image, the second its mirror image.

Routed inference runs a network twice per face, on the image and on its flip, because
Adaptive Routing compares the two views (Eq. 11). ``ModelPair`` spends those two passes on
two independently trained networks instead, so a prediction costs what one model's does
while averaging two models' errors. Each head's "flip" view is then the other member's
answer on the mirror image: Υ measures how much the answer moves under the flip *and* a
change of weights, and the routed distribution is the mean of both members' (Eq. 11 and 3
unchanged). ``glae pair`` builds one; docs/better_model.md measures it.
"""

from __future__ import annotations

from typing import TypeAlias

import torch
from torch import Tensor, nn

from ..calibration import IntervalCalibration
from .backbones import InputNormalization
from .glae import HEAD_NAMES, AgeModel, ModelConfig


class ModelPair(nn.Module):
    """``AgeModel`` ``first`` on the image, ``second`` on its horizontal flip.

    It offers what inference reads from an ``AgeModel`` (``config``, ``normalization``,
    ``calibration``, ``predict_views``), so evaluation, calibration, ``RoutedAgeModel`` and
    the ONNX export take it unchanged. Both members must read the same input (size, pixel
    normalization) and score the same ages; ``config`` is the first member's.
    """

    def __init__(self, first: AgeModel, second: AgeModel) -> None:
        super().__init__()
        check_pairable(first, second)
        self.members = nn.ModuleList([first, second])
        self.calibration: IntervalCalibration | None = None  # the pair's own, fitted on its routed output

    @property
    def config(self) -> ModelConfig:
        return self.first.config

    @property
    def normalization(self) -> InputNormalization:
        return self.first.normalization  # check_pairable: the second member's is the same

    @property
    def first(self) -> AgeModel:
        return self.members[0]  # type: ignore[return-value]

    @property
    def second(self) -> AgeModel:
        return self.members[1]  # type: ignore[return-value]

    def member_settings(self) -> list[dict]:
        """Each member's ``ModelConfig`` as a record, first then second: what a pair's file and export store."""
        return [member.config.to_dict() for member in (self.first, self.second)]

    @torch.no_grad()
    def predict_views(self, images: Tensor, heads: tuple[str, ...] = HEAD_NAMES) -> dict[str, Tensor]:
        """``{head: [2, B, K+1]}`` as ``AgeModel.predict_views``: index 0 the first member on the
        images, index 1 the second member on their flips."""
        seen = self.first.predict_probabilities(images, heads)
        mirrored = self.second.predict_probabilities(images.flip(-1), heads)
        return {head: torch.stack([seen[head], mirrored[head]]) for head in heads}


def check_pairable(first: AgeModel, second: AgeModel) -> None:
    """Refuse members that would read different pixels or score different ages, naming the setting."""
    for name in ("input_size", "max_age"):
        a, b = getattr(first.config, name), getattr(second.config, name)
        if a != b:
            raise ValueError(f"the two models differ in model.{name} ({a} and {b}); a pair needs both to read the same input and score the same ages")
    if first.normalization != second.normalization:
        raise ValueError(
            f"the two models expect different pixel normalizations ({first.normalization} and {second.normalization}); "
            "a pair feeds both the same normalized image"
        )


InferenceModel: TypeAlias = AgeModel | ModelPair
"""What a model file holds and inference runs: one network, or a pair."""
