"""Training losses of GLAE (Section III of the paper), as pure functions of tensors.

A sample's age ``y`` becomes a Gaussian label distribution ``z`` over the ages
``k = 0..K`` (Eq. 1). A head's logits give the predicted distribution ``p`` by a
softmax; the loss of one prediction is the KL divergence from ``z`` to ``p``
(Eq. 2) plus the absolute error of the expected age (Eqs. 3-4), which is
``l_base`` (Eq. 5). The local branch applies it to every pixel of the
rearranged feature map (Eq. 7), the holistic branch to its single prediction
(Eq. 9), and GLAE trains on their sum (Eq. 10).

Shapes are batch-first: ``B`` samples, ``C = K + 1`` age classes, ``N = H'W'``
pixels of the local branch. Every function works on any device and keeps the
logits' dtype. Shapes and hyper-parameters are validated up front; the values
of data tensors are not, since that would synchronise the GPU at every step. The one
exception is a per-sample ``sigma`` (annotated label stds, LAP 2015), which must be positive:
a zero std would make the label distribution NaN without any other sign.

Example:
    >>> import torch
    >>> logits = torch.zeros(2, 101)
    >>> ages = torch.tensor([30.0, 50.0])
    >>> loss = compute_loss("base", {"logits": logits}, ages)
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import age_class

LossFunction = Callable[[dict[str, Tensor], Tensor, "float | Tensor"], Tensor]
"""``loss(outputs, ages, sigma) -> scalar``: a head's outputs dict, ``[B]`` ages, Eq. 1's σ."""

LOSSES: dict[str, LossFunction] = {}
"""Training losses by the name used in configs (``loss``); each head lists the ones it takes."""


def register_loss(name: str) -> Callable[[LossFunction], LossFunction]:
    """Decorator: the function becomes the loss ``name`` of :func:`compute_loss`."""

    def decorator(function: LossFunction) -> LossFunction:
        LOSSES[name] = function
        return function

    return decorator


def _check_ages(ages: Tensor) -> None:
    if not isinstance(ages, Tensor) or ages.dim() != 1:
        shape = tuple(ages.shape) if isinstance(ages, Tensor) else type(ages).__name__
        raise ValueError(f"ages must be a 1-D tensor [B], got {shape}")


def _check_logits(logits: Tensor, ages: Tensor, dim: int, name: str) -> None:
    _check_ages(ages)
    if logits.dim() != dim:
        expected = "[B, C]" if dim == 2 else "[B, N, C]"
        raise ValueError(f"{name} must be {expected}, got shape {tuple(logits.shape)}")
    if logits.shape[0] != ages.shape[0]:
        raise ValueError(
            f"{name} has batch size {logits.shape[0]} but ages has {ages.shape[0]}"
        )


def gaussian_label_distribution(
    ages: Tensor, num_classes: int, sigma: float | Tensor = 1.0
) -> Tensor:
    """Gaussian label distribution of each age over the classes ``k = 0..K`` (Eq. 1).

    ``z^k`` is proportional to ``exp(-(k - y)^2 / (2 sigma^2))``. Eq. 1's factor
    ``1 / (sqrt(2 pi) sigma)`` makes the Gaussian integrate to 1 over the real
    line, but truncated to the integers ``0..K`` it does not sum to 1: ages near
    0 or K lose almost half their mass, and non-integer or small sigma change the
    sum too. The KL divergence of Eq. 2 compares distributions, so each row is
    normalised to sum to 1, which also cancels the constant factor. The
    normalisation is a softmax over ``-(k - y)^2 / (2 sigma^2)``, so an age far
    outside ``[0, K]`` (UTKFace goes to 116 with K = 100) still gives a valid
    distribution, piled on the nearest edge class, instead of all zeros.

    Args:
        ages: ``[B]`` ages ``y`` (any real value; integer tensors are converted
            to the default float dtype).
        num_classes: ``C = K + 1``, the number of age classes.
        sigma: standard deviation, a positive float or a ``[B]`` tensor of
            per-sample values (e.g. apparent-age annotations). The paper uses 1.

    Returns:
        ``[B, num_classes]`` tensor whose rows are non-negative and sum to 1.

    Example:
        >>> z = gaussian_label_distribution(torch.tensor([1.0]), 3)
        >>> torch.allclose(z.sum(dim=1), torch.ones(1))
        True
    """
    _check_ages(ages)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not ages.is_floating_point():
        ages = ages.to(torch.get_default_dtype())
    if isinstance(sigma, Tensor):
        if sigma.shape != ages.shape:
            raise ValueError(
                f"a tensor sigma must have the shape of ages {tuple(ages.shape)}, "
                f"got {tuple(sigma.shape)}"
            )
        if not bool((sigma > 0).all()):
            raise ValueError("every sigma must be positive")
        sigma = sigma.to(device=ages.device, dtype=ages.dtype).unsqueeze(1)
    elif not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    classes = torch.arange(num_classes, device=ages.device, dtype=ages.dtype)
    squared_distance = (classes.unsqueeze(0) - ages.unsqueeze(1)) ** 2
    return torch.softmax(-squared_distance / (2 * sigma**2), dim=1)


def _target_for(logits: Tensor, ages: Tensor, sigma: float | Tensor) -> Tensor:
    """Label distributions ``[B, C]`` for ages ``[B]``, on the logits' device and dtype.

    They are computed in the ages' precision and only then cast, so half-precision
    logits do not round the ages.
    """
    target = gaussian_label_distribution(ages.to(logits.device), logits.shape[-1], sigma)
    return target.to(logits.dtype)


def _kl_terms(target: Tensor, logits: Tensor) -> Tensor:
    """``sum_k z^k log(z^k / p^k)`` over the last axis, with ``0 log 0 = 0``."""
    log_probs = F.log_softmax(logits, dim=-1)
    # Masking (rather than trusting 0 * finite) keeps 0 log 0 = 0 when a logit is -inf.
    terms = torch.xlogy(target, target) - target * log_probs
    return torch.where(target > 0, terms, torch.zeros_like(terms)).sum(dim=-1)


def _expectation_error_terms(ages: Tensor, logits: Tensor) -> Tensor:
    """``|y - E[p]|`` for logits ``[B, ..., C]`` and ages ``[B]``; returns ``[B, ...]``."""
    predicted = expected_age(torch.softmax(logits, dim=-1))
    ages = ages.to(device=predicted.device, dtype=predicted.dtype)
    ages = ages.reshape(ages.shape + (1,) * (predicted.dim() - 1))
    return (ages - predicted).abs()


def kl_loss(target: Tensor, logits: Tensor) -> Tensor:
    """Batch mean of ``l_kl(z, p) = sum_k z^k log(z^k / p^k)`` (Eq. 2).

    ``log p`` is taken as ``log_softmax(logits)``, which stays finite where a
    softmax would underflow; terms with ``z^k = 0`` count as 0.

    Args:
        target: ``[B, C]`` label distributions ``z`` (rows sum to 1).
        logits: ``[B, C]`` unnormalised scores whose softmax is ``p``.

    Returns:
        Scalar tensor.
    """
    if target.dim() != 2 or target.shape != logits.shape:
        raise ValueError(
            "target and logits must both be [B, C], got "
            f"{tuple(target.shape)} and {tuple(logits.shape)}"
        )
    return _kl_terms(target.to(logits.dtype), logits).mean()


def expected_age(probs: Tensor) -> Tensor:
    """Expected age ``y_hat = sum_k k p^k`` of age distributions (Eq. 3).

    Args:
        probs: ``[..., C]`` probabilities over the ages ``0..C-1``.

    Returns:
        ``[...]`` expected ages.

    Example:
        >>> expected_age(torch.tensor([0.25, 0.5, 0.25]))
        tensor(1.)
    """
    if probs.dim() < 1:
        raise ValueError("probs must have a class axis [..., C], got a scalar")
    classes = torch.arange(probs.shape[-1], device=probs.device, dtype=probs.dtype)
    return (probs * classes).sum(dim=-1)


def expectation_l1_loss(ages: Tensor, logits: Tensor) -> Tensor:
    """Batch mean of ``l_er(y, y_hat) = |y - y_hat|`` (Eq. 4), ``y_hat`` from Eq. 3.

    Args:
        ages: ``[B]`` true ages ``y``.
        logits: ``[B, C]`` unnormalised scores.

    Returns:
        Scalar tensor.
    """
    _check_logits(logits, ages, 2, "logits")
    return _expectation_error_terms(ages, logits).mean()


def base_loss(logits: Tensor, ages: Tensor, sigma: float | Tensor = 1.0) -> Tensor:
    """``l_base = l_kl(z, p) + l_er(y, y_hat)`` averaged over the batch (Eq. 5).

    This is also the holistic branch's loss ``L^hol`` (Eq. 9).

    Args:
        logits: ``[B, C]`` unnormalised scores.
        ages: ``[B]`` true ages.
        sigma: positive float or ``[B]`` tensor, the label distribution's
            standard deviation (Eq. 1).

    Returns:
        Scalar tensor.
    """
    _check_logits(logits, ages, 2, "logits")
    return kl_loss(_target_for(logits, ages, sigma), logits) + expectation_l1_loss(
        ages, logits
    )


holistic_loss = base_loss
"""``L^hol`` (Eq. 9) is ``l_base`` (Eq. 5) on the holistic branch's logits."""


def local_loss(local_logits: Tensor, ages: Tensor, sigma: float | Tensor = 1.0) -> Tensor:
    """Pixel-level loss ``L^loc`` of the local branch (Eq. 7), averaged over the batch.

    Every pixel ``(h, w)`` of the rearranged map predicts its own distribution
    ``p_{h,w}`` (Eq. 6) and is scored by ``l_kl + l_er`` against the sample's
    label distribution; the result is the mean over the ``N = H'W'`` pixels and
    the ``B`` samples.

    Args:
        local_logits: ``[B, N, C]`` per-pixel unnormalised scores.
        ages: ``[B]`` true ages.
        sigma: positive float or ``[B]`` tensor (Eq. 1).

    Returns:
        Scalar tensor.
    """
    _check_logits(local_logits, ages, 3, "local_logits")
    target = _target_for(local_logits, ages, sigma).unsqueeze(1)
    per_pixel = _kl_terms(target, local_logits) + _expectation_error_terms(
        ages, local_logits
    )
    return per_pixel.mean()


def glae_loss(
    holistic_logits: Tensor,
    local_logits: Tensor,
    ages: Tensor,
    sigma: float | Tensor = 1.0,
) -> Tensor:
    """``L^sum = L^loc + L^hol`` (Eq. 10), GLAE's training loss.

    Args:
        holistic_logits: ``[B, C]`` holistic branch scores.
        local_logits: ``[B, N, C]`` local branch per-pixel scores.
        ages: ``[B]`` true ages.
        sigma: positive float or ``[B]`` tensor (Eq. 1).

    Returns:
        Scalar tensor.
    """
    _check_logits(holistic_logits, ages, 2, "holistic_logits")
    _check_logits(local_logits, ages, 3, "local_logits")
    if local_logits.shape[2] != holistic_logits.shape[1]:
        raise ValueError(
            f"local_logits has {local_logits.shape[2]} classes but holistic_logits "
            f"has {holistic_logits.shape[1]}"
        )
    return local_loss(local_logits, ages, sigma) + holistic_loss(holistic_logits, ages, sigma)


def corn_loss(logits: Tensor, ages: Tensor) -> Tensor:
    """CORN loss (Shi, Cao & Raschka, 2021) of ``K`` conditional rank scores.

    Task ``k`` asks "older than k?" and is trained only on samples older than ``k - 1``
    (the condition of ``P(age > k | age > k-1)``): binary cross-entropy summed over every
    task's samples, divided by their number.

    Args:
        logits: ``[B, K]`` rank scores.
        ages: ``[B]`` true ages; real values are first rounded half up to their class
            (:func:`glae.metrics.age_class`, as CMAE), so 20.3 is rank 20, not "older than 20".

    Returns:
        Scalar tensor.

    Example:
        >>> round(corn_loss(torch.zeros(1, 2), torch.tensor([1.0])).item(), 4)  # two tasks, both log 2
        0.6931
    """
    _check_logits(logits, ages, 2, "logits")
    ages = age_class(ages).to(device=logits.device, dtype=logits.dtype).unsqueeze(1)
    ranks = torch.arange(logits.shape[1], device=logits.device, dtype=logits.dtype)
    in_task = (ages > ranks - 1).to(logits.dtype)
    older = (ages > ranks).to(logits.dtype)
    log_yes = F.logsigmoid(logits)
    log_no = log_yes - logits  # log(1 - sigmoid(x)) = logsigmoid(x) - x
    total = -(in_task * (older * log_yes + (1 - older) * log_no)).sum()
    return total / in_task.sum().clamp_min(1)


@register_loss("kl")
def _kl_named(outputs: dict[str, Tensor], ages: Tensor, sigma: float | Tensor) -> Tensor:
    """Eq. 2 alone on the holistic logits (Table II's ℓ_kl row)."""
    logits = outputs["logits"]
    _check_logits(logits, ages, 2, "logits")
    return kl_loss(_target_for(logits, ages, sigma), logits)


@register_loss("base")
def _base_named(outputs: dict[str, Tensor], ages: Tensor, sigma: float | Tensor) -> Tensor:
    """Eq. 5 on the holistic logits."""
    return base_loss(outputs["logits"], ages, sigma)


@register_loss("sum")
def _sum_named(outputs: dict[str, Tensor], ages: Tensor, sigma: float | Tensor) -> Tensor:
    """Eq. 10: the local branch's pixels plus the holistic branch."""
    if "local_logits" not in outputs:
        raise ValueError("loss 'sum' (Eq. 10) needs outputs['local_logits'] from a local branch")
    return glae_loss(outputs["logits"], outputs["local_logits"], ages, sigma)


@register_loss("corn")
def _corn_named(outputs: dict[str, Tensor], ages: Tensor, sigma: float | Tensor) -> Tensor:
    """CORN on an ordinal head's rank scores (σ is not used: there is no label distribution)."""
    return corn_loss(outputs["logits"], ages)


def compute_loss(
    kind: str,
    outputs: dict[str, Tensor],
    ages: Tensor,
    sigma: float | Tensor = 1.0,
) -> Tensor:
    """Training loss named by ``kind`` (a key of :data:`LOSSES`) from a head's outputs.

    Args:
        kind: ``"kl"`` (Eq. 2 alone on ``outputs["logits"]``), ``"base"``
            (Eq. 5 on ``outputs["logits"]``), ``"sum"`` (Eq. 10 on
            ``outputs["logits"]`` and ``outputs["local_logits"]``) or ``"corn"``
            (rank scores of the ordinal head).
        outputs: a head's outputs, ``{"logits": [B, C]}`` plus
            ``"local_logits": [B, N, C]`` for heads with a local branch.
        ages: ``[B]`` true ages.
        sigma: positive float or ``[B]`` tensor (Eq. 1).

    Returns:
        Scalar tensor.
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; expected one of {tuple(LOSSES)}")
    if "logits" not in outputs:
        raise ValueError("outputs has no 'logits'")
    return LOSSES[kind](outputs, ages, sigma)


def flip_kl(p: Tensor, p_flip: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-sample ``KL(p || p_flip)`` between predictions on an image and its flip (Eq. 11).

    Adaptive Routing computes this for the vanilla and the balanced classifier
    and picks the one with the smaller divergence. Both inputs are
    probabilities, so they are clamped to ``eps`` before the logarithm to keep
    the divergence finite; a class with ``p^k = 0`` contributes 0.

    Args:
        p: ``[B, C]`` probabilities for the images.
        p_flip: ``[B, C]`` probabilities for their horizontally flipped copies.
        eps: lower clamp of the probabilities inside the logarithm.

    Returns:
        ``[B]`` divergences.
    """
    if p.dim() != 2 or p.shape != p_flip.shape:
        raise ValueError(
            f"p and p_flip must both be [B, C], got {tuple(p.shape)} and {tuple(p_flip.shape)}"
        )
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    return (p * (p.clamp_min(eps).log() - p_flip.clamp_min(eps).log())).sum(dim=1)
