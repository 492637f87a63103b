"""Tests of glae.metrics against values worked out by hand."""

import doctest
import json
import math

import numpy as np
import pytest
import torch

from glae import metrics
from glae.evaluate import routing_usage
from glae.metrics import (
    AAR_GROUP_LABELS,
    AGE_GROUPS,
    aar,
    age_class,
    cmae,
    epsilon_error,
    group_metrics,
    mae,
    per_age_mae,
    summarize,
)


def test_docstring_examples():
    assert doctest.testmod(metrics).failed == 0


def test_mae():
    # |10 - 12| + |20 - 20| + |30 - 27| = 5 over 3 images.
    assert mae([10, 20, 30], [12, 20, 27]) == pytest.approx(5 / 3)
    assert isinstance(mae(np.array([1.0]), np.array([2.0])), float)


def test_cmae_weighs_classes_equally():
    # Three images of age 20 off by 1, one of age 70 off by 5:
    # MAE = (1 + 1 + 1 + 5) / 4 = 2; CMAE = (MAE_20 + MAE_70) / 2 = (1 + 5) / 2 = 3.
    y_true = [20, 20, 20, 70]
    y_pred = [21, 19, 21, 75]
    assert mae(y_true, y_pred) == pytest.approx(2.0)
    assert cmae(y_true, y_pred) == pytest.approx(3.0)
    assert per_age_mae(y_true, y_pred) == {20: (3, 1.0), 70: (1, 5.0)}


def test_cmae_equals_mae_for_one_class():
    # All age 30: errors 1, 2, 6 -> both are 3.
    assert cmae([30, 30, 30], [31, 28, 36]) == pytest.approx(3.0)
    assert mae([30, 30, 30], [31, 28, 36]) == pytest.approx(3.0)


def test_per_age_mae_rounds_apparent_ages_half_up():
    # 20.5 -> 21 (half up, not half to even), 20.4 -> 20, 21.49 -> 21.
    # Class 21: errors |20.5 - 20.5| = 0 and |21.49 - 22.49| = 1 -> 0.5; class 20: 0.4.
    result = per_age_mae([20.5, 20.4, 21.49], [20.5, 20.0, 22.49])
    assert list(result) == [20, 21]
    assert result[20] == (1, pytest.approx(0.4))
    assert result[21] == (2, pytest.approx(0.5))


def test_epsilon_error_averages_over_images():
    # Image 1 exact: 1 - exp(0) = 0. Image 2: error 2, sigma 2 -> 1 - exp(-4 / 8).
    # Mean = (1 - e^-0.5) / 2 = 0.19673.
    value = epsilon_error([10, 20], [10, 22], [1.0, 2.0])
    assert value == pytest.approx((1 - math.exp(-0.5)) / 2)
    # One sigma for all: error 1, sigma 1 -> 1 - e^-0.5 for both.
    assert epsilon_error([10, 20], [11, 19], 1.0) == pytest.approx(1 - math.exp(-0.5))


def test_aar_worked_example():
    # Errors 2 (age 5), 0 and 2 (age 15), 5 (age 75): MAE = 9 / 4 = 2.25.
    # Group MAEs: "1-10" 2, "11-20" (0 + 2) / 2 = 1, "71+" 5; the other five are empty.
    # sigma = sqrt(((2 - 2.25)^2 + (1 - 2.25)^2 + (5 - 2.25)^2) / 3)
    #       = sqrt((0.0625 + 1.5625 + 7.5625) / 3) = sqrt(3.0625) = 1.75.
    # AAR = (7 - 2.25) + (3 - 1.75) = 4.75 + 1.25 = 6.0.
    result = aar([5, 15, 15, 75], [7, 15, 17, 70])
    assert result["mae"] == pytest.approx(2.25)
    assert result["sigma"] == pytest.approx(1.75)
    assert result["aar"] == pytest.approx(6.0)
    assert list(result["group_mae"]) == list(AAR_GROUP_LABELS)
    assert result["group_mae"]["1-10"] == pytest.approx(2.0)
    assert result["group_mae"]["11-20"] == pytest.approx(1.0)
    assert result["group_mae"]["71+"] == pytest.approx(5.0)
    assert result["group_mae"]["41-50"] is None


def test_aar_clips_both_terms_at_zero():
    # Errors 10 and 10 in two groups: MAE 10, sigma 0 -> max(0, -3) + 3 = 3.
    assert aar([5, 75], [15, 85])["aar"] == pytest.approx(3.0)
    # Errors 0 and 20: MAE 10, sigma = sqrt((100 + 100) / 2) = 10 -> 0 + 0.
    assert aar([5, 75], [5, 95])["aar"] == pytest.approx(0.0)


def test_aar_group_boundaries():
    # By the age class (rounded half up), as CMAE: 0 and 10.4 (class 10) -> "1-10"; 10.5 (class 11)
    # -> "11-20"; 70.4 (class 70) -> "61-70"; 70.5 (class 71) and 100 -> "71+".
    # Errors 1, 2, 3, 4, 5, 6 so each group's MAE tells which images it holds.
    result = aar([0, 10.4, 10.5, 70.4, 70.5, 100], [1, 12.4, 13.5, 74.4, 75.5, 106])
    assert result["group_mae"]["1-10"] == pytest.approx(1.5)
    assert result["group_mae"]["11-20"] == pytest.approx(3.0)
    assert result["group_mae"]["61-70"] == pytest.approx(4.0)
    assert result["group_mae"]["71+"] == pytest.approx(5.5)


def test_group_metrics_boundaries_and_empty_group():
    # Groups go by the age class (rounded half up), as CMAE: 10 and 17.4 (class 17) -> "0-17";
    # 17.9 (class 18), 18 and 65.4 (class 65) -> "18-65"; no class is 66 or more.
    # "0-17": errors +1, -3 in classes 10, 17 -> MAE 2, CMAE 2, bias -1.
    # "18-65": errors +3, -2 in class 18 and -5 in class 65 -> MAE 10/3,
    # CMAE ((3 + 2) / 2 + 5) / 2 = 3.75, bias (3 - 2 - 5) / 3 = -4/3.
    y_true = [10, 17.4, 17.9, 18, 65.4]
    y_pred = [11, 14.4, 20.9, 16, 60.4]
    result = group_metrics(y_true, y_pred)
    assert list(result) == [label for label, _, _ in AGE_GROUPS]
    assert result["0-17"] == {"n": 2, "mae": pytest.approx(2.0), "cmae": pytest.approx(2.0), "bias": pytest.approx(-1.0)}
    assert result["18-65"] == {"n": 3, "mae": pytest.approx(10 / 3), "cmae": pytest.approx(3.75), "bias": pytest.approx(-4 / 3)}
    assert result["66+"] == {"n": 0, "mae": None, "cmae": None, "bias": None}
    # The routing report counts the same groups.
    usage = routing_usage(torch.tensor(y_true), torch.tensor([True, False, True, True, False]))
    assert {label: group["n"] for label, group in usage["groups"].items()} == {"0-17": 2, "18-65": 3, "66+": 0}
    assert usage["groups"]["18-65"]["balanced"] == pytest.approx(2 / 3)


def test_age_class_rounds_half_up_for_floats_arrays_and_tensors():
    # 17.5 -> 18 and 18.5 -> 19 (half up; round() would give 18 for both), 17.49 -> 17, 0.4 -> 0.
    assert [age_class(age) for age in (17.5, 18.5, 17.49, 0.4)] == [18, 19, 17, 0]
    assert isinstance(age_class(17.5), int)
    assert age_class(np.array([17.5, 18.5, 17.49])).tolist() == [18, 19, 17]
    assert age_class(torch.tensor([17.5, 18.5, 17.49])).tolist() == [18, 19, 17]


def test_group_metrics_last_group_is_open_ended():
    # 66 and 116 (UTKFace's oldest) are both in "66+": errors 2 and 4 -> MAE 3.
    result = group_metrics([66, 116], [68, 112])
    assert result["66+"] == {"n": 2, "mae": pytest.approx(3.0), "cmae": pytest.approx(3.0), "bias": pytest.approx(-1.0)}


def test_summarize_is_json_safe_and_complete():
    y_true = [20, 20, 20, 70]
    y_pred = [21, 19, 21, 75]
    result = summarize(y_true, y_pred)
    assert result["n_images"] == 4
    assert result["mae"] == pytest.approx(2.0)
    assert result["cmae"] == pytest.approx(3.0)
    assert result["epsilon_error"] is None
    assert result["aar"] == result["aar_detail"]["aar"]
    # Groups "11-20" (MAE 1) and "61-70" (MAE 5) around MAE 2: sigma = sqrt((1 + 9) / 2).
    assert result["aar_detail"]["sigma"] == pytest.approx(math.sqrt(5))
    assert result["groups"]["0-17"] == {"n": 0, "mae": None, "cmae": None, "bias": None}
    assert result["groups"]["66+"]["n"] == 1
    assert result["per_age"] == [
        {"age": 20, "n": 3, "mae": 1.0},
        {"age": 70, "n": 1, "mae": 5.0},
    ]
    json.loads(json.dumps(result, allow_nan=False))


def test_summarize_with_sigma():
    # Errors 1 and 0 with sigma 1: (1 - e^-0.5 + 0) / 2.
    result = summarize([10, 20], [11, 20], sigma=[1.0, 1.0])
    assert result["epsilon_error"] == pytest.approx((1 - math.exp(-0.5)) / 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda: mae([], []),
        lambda: mae([1, 2], [1]),
        lambda: mae([[1, 2]], [[1, 2]]),
        lambda: cmae([1, float("nan")], [1, 2]),
        lambda: per_age_mae([], []),
        lambda: epsilon_error([1, 2], [1, 2], [1.0, 0.0]),
        lambda: epsilon_error([1, 2], [1, 2], -1.0),
        lambda: epsilon_error([1, 2], [1, 2], [1.0, 1.0, 1.0]),
        lambda: aar([1, 2, 3], [1, 2]),
        lambda: group_metrics([], []),
        lambda: group_metrics([1], [1], groups=(("bad", 10, 5),)),
        lambda: summarize([1], [1, 2]),
    ],
)
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()
