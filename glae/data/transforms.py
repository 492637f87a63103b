"""Train and eval presets of Section V-A.

Pixels are normalized with the model's ``InputNormalization`` (``AgeModel.normalization``,
recorded in every model file): the paper's (x - 127.5) / 128 for networks trained from
scratch and for every documented config, or what a backbone's pretrained weights expect.
"""

from __future__ import annotations

from torchvision import transforms as T

from ..models.backbones import InputNormalization


def train_transform(input_size: int, normalization: InputNormalization, augment: bool = True, flip: bool = False) -> T.Compose:
    """Resize, then (``augment``) ColorJitter + RandAugment (N=2, M=9), then normalize.

    ``flip`` adds a random horizontal flip before the colour changes; the paper's
    augmentations (Section V-A) have none. ``augment=False`` keeps only resize (+ flip) and
    normalize, for ablations and debugging. Resize comes first and is deterministic, which
    is what lets ``glae.data.cache`` store its output once.
    """
    steps: list = [T.Resize((input_size, input_size), antialias=True)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if augment:
        steps += [
            T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
            T.RandAugment(num_ops=2, magnitude=9),
        ]
    steps += [T.ToTensor(), T.Normalize(normalization.mean, normalization.std)]
    return T.Compose(steps)


def eval_transform(input_size: int, normalization: InputNormalization) -> T.Compose:
    """Resize and normalize only: test-time flips happen on the batch (``AgeModel.predict_views``)."""
    return T.Compose([T.Resize((input_size, input_size), antialias=True), T.ToTensor(), T.Normalize(normalization.mean, normalization.std)])
