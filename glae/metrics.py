"""Evaluation metrics of Section IV-B: MAE, CMAE, epsilon-error, AAR and age groups.

Pure functions of true and predicted ages given as sequences or NumPy arrays of
floats. They return Python floats, ints, dicts and lists, so every result can
be written to JSON as it is; an empty age group gives ``None``, never NaN.

Apparent ages (ChaLearn LAP) are real numbers. Wherever a metric needs an age
*class* (CMAE, per-age MAE, the age groups) the class is the true age rounded half
up, :func:`age_class`, so 20.5 is class 21 (NumPy's and Python's ``round`` would
give 20, rounding halves to even).

Example:
    >>> result = summarize([20, 20, 20, 70], [21, 19, 21, 75])
    >>> result["mae"], result["cmae"]
    (2.0, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

ArrayLike = Sequence[float] | np.ndarray

AGE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("0-17", 0, 18),
    ("18-65", 18, 66),
    ("66+", 66, math.inf),
)
"""Long-tailed age groups as ``(label, low, high)``, half-open ``low <= c < high`` on
the age class ``c`` (as CMAE counts it, so 17.9 is in "18-65"). The paper's last group
is 66-100; it is open-ended here so that ages above 100 (UTKFace goes to 116) are
counted rather than dropped."""

AAR_GROUP_LABELS: tuple[str, ...] = (
    "1-10",
    "11-20",
    "21-30",
    "31-40",
    "41-50",
    "51-60",
    "61-70",
    "71+",
)
"""The eight age groups of the MIVIA Guess The Age contest used by AAR (Eqs. 15-16)."""


def _validated(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if true.ndim != 1 or pred.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D, got shapes {true.shape} and {pred.shape}"
        )
    if true.shape != pred.shape:
        raise ValueError(
            f"y_true and y_pred must have equal lengths, got {true.size} and {pred.size}"
        )
    if true.size == 0:
        raise ValueError("y_true and y_pred are empty; metrics need at least one image")
    if not (np.isfinite(true).all() and np.isfinite(pred).all()):
        raise ValueError("y_true and y_pred must be finite (no NaN or inf)")
    return true, pred


@overload
def age_class(age: float) -> int: ...


@overload
def age_class(age: np.ndarray) -> np.ndarray: ...


@overload
def age_class(age: Tensor) -> Tensor: ...


def age_class(age: float | np.ndarray | Tensor) -> int | np.ndarray | Tensor:
    """The age class of a true age: rounded half up, ``floor(age + 0.5)``, so 20.5 is class 21.

    One rounding for everything that bins ages (CMAE, age groups, class-balanced sampling,
    the -LT subsets, the ordinal loss's ranks). A float gives an int; a NumPy array or a
    torch tensor gives whole numbers of its own float type (floor division works on all three).

    Example:
        >>> age_class(20.5), age_class(20.49), age_class(np.array([17.9, 0.4])).tolist()
        (21, 20, [18.0, 0.0])
    """
    classes = (age + 0.5) // 1
    return int(classes) if isinstance(classes, float) else classes


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error ``1/N sum_i |y_i - y_hat_i|`` (Eq. 12).

    Args:
        y_true: ``[N]`` true ages.
        y_pred: ``[N]`` predicted ages.
    """
    true, pred = _validated(y_true, y_pred)
    return float(np.abs(true - pred).mean())


def per_age_mae(y_true: ArrayLike, y_pred: ArrayLike) -> dict[int, tuple[int, float]]:
    """MAE of each age class present, ``age -> (N_k, MAE_k)``, sorted by age.

    The class of a sample is its true age rounded half up (see the module
    docstring), so real-valued apparent ages fall into integer classes.

    Args:
        y_true: ``[N]`` true ages.
        y_pred: ``[N]`` predicted ages.
    """
    true, pred = _validated(y_true, y_pred)
    classes = age_class(true)
    errors = np.abs(true - pred)
    return {
        int(age): (int((classes == age).sum()), float(errors[classes == age].mean()))
        for age in np.unique(classes)
    }


def cmae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Class-wise MAE: the mean over the ``M`` age classes present of their MAE (Eq. 13).

    Every age class weighs the same whatever its number of images, so errors
    on rare (tail) ages count as much as on common ones.

    Args:
        y_true: ``[N]`` true ages; the class is the age rounded half up.
        y_pred: ``[N]`` predicted ages.
    """
    return float(np.mean([error for _, error in per_age_mae(y_true, y_pred).values()]))


def epsilon_error(y_true: ArrayLike, y_pred: ArrayLike, sigma: float | ArrayLike) -> float:
    """ChaLearn LAP 2015 epsilon-error, ``1/N sum_i (1 - exp(-(y_hat_i - y_i)^2 / (2 sigma_i^2)))``.

    Eq. 14 as printed puts the sum outside, ``1 - sum_i exp(...)``, which is
    not in ``[0, 1]`` for more than one image; the challenge's definition (and
    its reported numbers) average the per-image error, as done here.

    Args:
        y_true: ``[N]`` mean apparent ages.
        y_pred: ``[N]`` predicted ages.
        sigma: ``[N]`` standard deviations of the apparent-age votes, or one
            value for every image; all must be positive.
    """
    true, pred = _validated(y_true, y_pred)
    sigmas = np.asarray(sigma, dtype=np.float64)
    if sigmas.ndim == 0:
        sigmas = np.full(true.shape, float(sigmas))
    if sigmas.shape != true.shape:
        raise ValueError(f"sigma must have length {true.size}, got shape {sigmas.shape}")
    if not (np.isfinite(sigmas).all() and (sigmas > 0).all()):
        raise ValueError("every sigma must be positive and finite")
    return float(np.mean(1.0 - np.exp(-((pred - true) ** 2) / (2.0 * sigmas**2))))


def _aar_group_index(true: np.ndarray) -> np.ndarray:
    # ceil(class / 10) - 1 maps classes 10(j-1)+1..10j to group j-1; age 0 joins "1-10" and
    # everything above 70 joins "71+". Real-valued ages are binned by their age class first,
    # as for CMAE, so 10.3 (class 10) is in "1-10".
    return np.clip(np.ceil(age_class(true) / 10.0).astype(np.int64) - 1, 0, len(AAR_GROUP_LABELS) - 1)


def aar(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, Any]:
    """Age Accuracy and Regularity of the MIVIA contest (Eqs. 15-16).

    ``AAR = max(0, 7 - MAE) + max(0, 3 - sigma)`` with
    ``sigma = sqrt(1/n sum_j (MAE^j - MAE)^2)``, where ``MAE`` is over all
    images and ``MAE^j`` over the images whose true age is in group ``j`` of
    :data:`AAR_GROUP_LABELS`. ``n`` counts only the groups that have images
    (all eight on MIVIA), so a test set without, say, elderly faces is not
    scored as if that group had ``MAE^j = 0``.

    Args:
        y_true: ``[N]`` true ages.
        y_pred: ``[N]`` predicted ages.

    Returns:
        ``{"aar": float, "mae": float, "sigma": float, "group_mae": {label: float | None}}``
        with ``None`` for a group without images.
    """
    true, pred = _validated(y_true, y_pred)
    errors = np.abs(true - pred)
    overall = float(errors.mean())
    groups = _aar_group_index(true)
    group_mae: dict[str, float | None] = {
        label: float(errors[groups == j].mean()) if (groups == j).any() else None
        for j, label in enumerate(AAR_GROUP_LABELS)
    }
    present = np.array([value for value in group_mae.values() if value is not None])
    sigma = float(np.sqrt(np.mean((present - overall) ** 2)))
    return {
        "aar": max(0.0, 7.0 - overall) + max(0.0, 3.0 - sigma),
        "mae": overall,
        "sigma": sigma,
        "group_mae": group_mae,
    }


def group_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    groups: Sequence[tuple[str, float, float]] = AGE_GROUPS,
) -> dict[str, dict[str, Any]]:
    """MAE, CMAE and bias within each age group, ``label -> {"n", "mae", "cmae", "bias"}``.

    ``bias`` is the mean signed error ``mean(y_pred - y_true)``: negative when a group
    comes out too young (the elderly of a long-tailed set, typically), which MAE hides.
    A sample belongs to the group with ``low <= age_class(y_true) < high``, so its CMAE
    class and its group agree. A group without images gets ``n = 0`` and ``None`` for
    every error.

    Args:
        y_true: ``[N]`` true ages.
        y_pred: ``[N]`` predicted ages.
        groups: ``(label, low, high)`` triples, by default :data:`AGE_GROUPS`.
    """
    true, pred = _validated(y_true, y_pred)
    classes = age_class(true)
    result: dict[str, dict[str, Any]] = {}
    for label, low, high in groups:
        if not low < high:
            raise ValueError(f"age group {label!r} has low {low} >= high {high}")
        inside = (classes >= low) & (classes < high)
        if inside.any():
            result[label] = {
                "n": int(inside.sum()),
                "mae": mae(true[inside], pred[inside]),
                "cmae": cmae(true[inside], pred[inside]),
                "bias": float((pred[inside] - true[inside]).mean()),
            }
        else:
            result[label] = {"n": 0, "mae": None, "cmae": None, "bias": None}
    return result


def summarize(
    y_true: ArrayLike, y_pred: ArrayLike, sigma: float | ArrayLike | None = None
) -> dict[str, Any]:
    """Every metric of Section IV-B in one JSON-safe dict.

    Args:
        y_true: ``[N]`` true ages.
        y_pred: ``[N]`` predicted ages.
        sigma: ``[N]`` apparent-age standard deviations; when given, the
            epsilon-error is computed, otherwise ``"epsilon_error"`` is ``None``.

    Returns:
        ``{"n_images", "mae", "cmae", "epsilon_error", "aar", "aar_detail",
        "groups", "per_age"}`` where ``aar_detail`` is :func:`aar`'s dict,
        ``groups`` is :func:`group_metrics`'s dict and ``per_age`` is a list of
        ``{"age", "n", "mae"}`` sorted by age.
    """
    true, pred = _validated(y_true, y_pred)
    aar_detail = aar(true, pred)
    return {
        "n_images": int(true.size),
        "mae": mae(true, pred),
        "cmae": cmae(true, pred),
        "epsilon_error": None if sigma is None else epsilon_error(true, pred, sigma),
        "aar": aar_detail["aar"],
        "aar_detail": aar_detail,
        "groups": group_metrics(true, pred),
        "per_age": [
            {"age": age, "n": count, "mae": error}
            for age, (count, error) in per_age_mae(true, pred).items()
        ],
    }
