"""Adaptive Routing (Algorithm 1, Eq. 11) and the evaluation report built on it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from glae.evaluate import available_modes, evaluate_views, routing_usage
from glae.reports import markdown_report
from glae.routing import ROUTING_MODES, heads_for, route, routing_mode


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


# Three ages (K = 2). Image 0: the vanilla head is flip-stable, the balanced one is not;
# image 1: the opposite.
V0, V0F = [0.2, 0.6, 0.2], [0.2, 0.5, 0.3]  # small disturbance
B0, B0F = [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]  # large disturbance
V1, V1F = [0.6, 0.3, 0.1], [0.1, 0.3, 0.6]  # large disturbance
B1, B1F = [0.3, 0.4, 0.3], [0.3, 0.4, 0.3]  # none


def _views() -> dict[str, torch.Tensor]:
    return {
        "vanilla": torch.tensor([[V0, V1], [V0F, V1F]], dtype=torch.float64),
        "balanced": torch.tensor([[B0, B1], [B0F, B1F]], dtype=torch.float64),
    }


def _average(p: list[float], q: list[float]) -> list[float]:
    return [(a + b) / 2 for a, b in zip(p, q)]


def _expectation(p: list[float]) -> float:
    return sum(k * v for k, v in enumerate(p))


def test_hand_built_distributions_have_the_intended_divergences() -> None:
    assert _kl(V0, V0F) < _kl(B0, B0F)
    assert _kl(V1, V1F) > _kl(B1, B1F) == 0.0


def test_routing_picks_the_flip_stable_head() -> None:
    result = route(_views(), "routing")
    assert result.used_balanced.tolist() == [False, True]
    expected = torch.tensor([_average(V0, V0F), _average(B1, B1F)], dtype=torch.float64)
    assert torch.allclose(result.probs, expected)
    # image 0: (0.2, 0.55, 0.25) -> 0.55 + 0.5 = 1.05; image 1: 0.4 + 0.6 = 1.0
    assert torch.allclose(result.ages, torch.tensor([1.05, 1.0], dtype=torch.float64))
    assert torch.allclose(result.ages, torch.tensor([_expectation(row) for row in expected.tolist()], dtype=torch.float64))


def test_bigger_picks_the_opposite_head() -> None:
    result = route(_views(), "bigger")
    assert result.used_balanced.tolist() == [True, False]
    expected = torch.tensor([_average(B0, B0F), _average(V1, V1F)], dtype=torch.float64)
    assert torch.allclose(result.probs, expected)
    # image 0: (0.4, 0.15, 0.45) -> 1.05; image 1: (0.35, 0.3, 0.35) -> 1.0
    assert torch.allclose(result.ages, torch.tensor([1.05, 1.0], dtype=torch.float64))


def test_upsilon_is_kl_of_the_original_from_the_flipped_view() -> None:
    """Eq. 11: Υ = KL(p || p_flip), not KL(p_flip || p); here the two directions disagree.

    Vanilla: p = [1/2, 1/2], p_flip = [9/10, 1/10];
    balanced: p = [9/10, 1/10], p_flip = [1/2, 1/2].
    KL([1/2, 1/2] || [9/10, 1/10]) = 1/2 ln(5/9) + 1/2 ln 5 = 0.5108
    KL([9/10, 1/10] || [1/2, 1/2]) = 9/10 ln(9/5) + 1/10 ln(1/5) = 0.3681
    so Υ1 = 0.5108 > Υ2 = 0.3681: the balanced head is chosen (reversed: vanilla).
    """
    upsilon_1 = 0.5 * math.log(5 / 9) + 0.5 * math.log(5)
    upsilon_2 = 0.9 * math.log(9 / 5) + 0.1 * math.log(1 / 5)
    assert (round(upsilon_1, 4), round(upsilon_2, 4)) == (0.5108, 0.3681)
    views = {
        "vanilla": torch.tensor([[[0.5, 0.5]], [[0.9, 0.1]]]),
        "balanced": torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]]),
    }
    result = route(views, "routing")
    assert result.used_balanced.tolist() == [True]
    # the balanced head's flip average [0.7, 0.3] -> age 0.3
    assert result.ages.tolist() == [pytest.approx(0.3)]
    assert route(views, "bigger").used_balanced.tolist() == [False]


def test_equal_divergences_go_to_the_balanced_head() -> None:
    # Algorithm 1: vanilla only if Upsilon_1 < Upsilon_2 strictly
    same = torch.tensor([[[0.5, 0.5, 0.0]], [[0.5, 0.5, 0.0]]])
    views = {"vanilla": same, "balanced": same.flip(-1)}
    assert route(views, "routing").used_balanced.tolist() == [True]


@pytest.mark.parametrize("mode", ["vanilla", "balanced"])
def test_fixed_modes_always_use_one_head(mode: str) -> None:
    views = _views()
    result = route(views, mode)  # type: ignore[arg-type]
    assert result.used_balanced.tolist() == [mode == "balanced"] * 2
    assert torch.allclose(result.probs, views[mode].mean(0))
    assert torch.allclose(result.ages, (views[mode].mean(0) * torch.arange(3)).sum(-1))


def test_vanilla_mode_needs_no_balanced_head() -> None:
    views = {"vanilla": _views()["vanilla"]}
    result = route(views, "vanilla")
    assert result.used_balanced.tolist() == [False, False]
    with pytest.raises(KeyError):
        route(views, "routing")


def test_unknown_mode_raises() -> None:
    with pytest.raises(ValueError, match="unknown routing mode 'smallest'"):
        route(_views(), "smallest")  # type: ignore[arg-type]


def _random_views(n: int, classes: int, heads: tuple[str, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {head: torch.randn(2, n, classes, generator=generator).mul(3).softmax(-1) for head in heads}


def test_evaluate_views_report_with_both_heads() -> None:
    views = _random_views(30, 101, ("vanilla", "balanced"))
    ages = torch.tensor([float(5 + 3 * i) for i in range(30)])  # 5..92: all three groups
    stds = torch.full((30,), float("nan"))
    report = evaluate_views(views, ages, stds)
    text = json.dumps(report)  # JSON-serializable
    assert json.loads(text)["mode"] == "routing"
    for key in ("mae", "cmae", "aar", "groups", "routing", "n_images", "modes"):
        assert key in report, key
    assert report["n_images"] == 30
    assert report["epsilon_error"] is None  # stds unknown
    assert set(report["modes"]) == set(ROUTING_MODES)
    routed = route(views, "routing")
    assert report["mae"] == pytest.approx(float((routed.ages - ages).abs().mean()), abs=1e-5)
    assert report["mae"] == report["modes"]["routing"]["mae"]
    vanilla_mae = float((route(views, "vanilla").ages - ages).abs().mean())
    assert report["modes"]["vanilla"]["mae"] == pytest.approx(vanilla_mae, abs=1e-5)

    usage = report["routing"]
    share = float(routed.used_balanced.float().mean())
    assert usage["overall"]["balanced"] == pytest.approx(share)
    assert usage["overall"]["vanilla"] + usage["overall"]["balanced"] == pytest.approx(1.0)
    assert sum(group["n"] for group in usage["groups"].values()) == 30
    for group in usage["groups"].values():
        assert group["n"] > 0
        assert group["vanilla"] + group["balanced"] == pytest.approx(1.0)


def test_evaluate_views_other_mode_and_known_stds() -> None:
    views = _random_views(6, 11, ("vanilla", "balanced"), seed=3)
    ages = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    report = evaluate_views(views, ages, torch.full((6,), 2.0), mode="bigger")
    assert report["mode"] == "bigger"
    assert report["mae"] == report["modes"]["bigger"]["mae"]
    assert report["epsilon_error"] is not None
    # routing usage always describes Adaptive Routing, whatever mode is reported
    assert report["routing"]["overall"]["balanced"] == pytest.approx(
        float(route(views, "routing").used_balanced.float().mean())
    )
    json.dumps(report)


def test_evaluate_views_without_balanced_head() -> None:
    views = _random_views(4, 11, ("vanilla",))
    assert available_modes(views) == ("vanilla",)
    assert available_modes(_random_views(4, 11, ("vanilla", "balanced"))) == ROUTING_MODES
    ages = torch.tensor([1.0, 2.0, 3.0, 4.0])
    stds = torch.full((4,), float("nan"))
    report = evaluate_views(views, ages, stds, mode="vanilla")
    assert report["routing"] is None
    assert set(report["modes"]) == {"vanilla"}
    json.dumps(report)
    with pytest.raises(ValueError, match="balanced head"):
        evaluate_views(views, ages, stds, mode="routing")


def test_routing_usage_empty_group_is_none() -> None:
    usage = routing_usage(torch.tensor([10.0, 20.0, 30.0]), torch.tensor([True, False, True]))
    assert usage["overall"]["balanced"] == pytest.approx(2 / 3)
    assert usage["groups"]["0-17"] == {"n": 1, "vanilla": 0.0, "balanced": 1.0}
    assert usage["groups"]["18-65"]["balanced"] == pytest.approx(0.5)
    assert usage["groups"]["66+"] == {"n": 0, "vanilla": None, "balanced": None}


def test_evaluating_a_diverged_model_names_the_cause(tmp_path) -> None:
    """NaN weights (a run that diverged without clipping) give a clear error, not a metrics one."""
    from PIL import Image

    from glae.data import AgeSample
    from glae.evaluate import InferencePass, evaluate_samples
    from glae.models import AgeModel, ModelConfig

    samples = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(path)
        samples.append(AgeSample(path, age=float(20 + i)))
    model = AgeModel(ModelConfig(max_age=30, input_size=32)).eval()
    with torch.no_grad():
        next(model.heads["vanilla"].parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="vanilla head's predictions are not finite.*diverged"):
        evaluate_samples(model, samples, "vanilla", InferencePass(torch.device("cpu"), num_workers=0))


def test_a_stage1_model_is_evaluated_with_its_vanilla_head_only() -> None:
    """Routing needs a balanced head trained in stage 2; a stage-1 model file has none."""
    assert routing_mode({"balanced_trained": True}) == "routing"
    assert routing_mode({"balanced_trained": False}) == "vanilla"
    assert routing_mode({}) == "vanilla"
    assert heads_for("vanilla") == ("vanilla",)
    assert heads_for("routing") == heads_for("bigger") == heads_for("balanced") == ("vanilla", "balanced")


def test_epsilon_error_covers_the_images_with_a_positive_std() -> None:
    """One face whose votes all agreed (std 0) and one without votes (NaN): the epsilon-error is
    the mean over the other faces, by hand, and says how many it covers, instead of vanishing."""
    views = _random_views(4, 11, ("vanilla",), seed=5)
    ages = torch.tensor([2.0, 4.0, 6.0, 8.0])
    report = evaluate_views(views, ages, torch.tensor([2.0, 0.0, float("nan"), 1.0]), mode="vanilla")
    predicted = route(views, "vanilla").ages.double()
    by_hand = [1 - math.exp(-float(predicted[i] - ages[i]) ** 2 / (2 * sigma**2)) for i, sigma in ((0, 2.0), (3, 1.0))]
    assert report["epsilon_error"] == pytest.approx(sum(by_hand) / 2, abs=1e-6)
    assert report["epsilon_images"] == 2
    assert "ε-error over the 2 images with a positive std" in markdown_report(report)


def test_the_interval_is_calibrated_only_in_the_mode_its_temperature_was_fitted_on(tmp_path) -> None:
    """A temperature fitted on routed distributions says nothing about the vanilla head's:
    ``glae eval --mode vanilla`` of a routed model reports raw quantiles, and still every mode."""
    from PIL import Image

    from glae.calibration import IntervalCalibration
    from glae.data import AgeSample
    from glae.evaluate import InferencePass, evaluate_samples
    from glae.models import AgeModel, ModelConfig

    samples = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(path)
        samples.append(AgeSample(path, age=float(20 + i)))
    torch.manual_seed(0)
    model = AgeModel(ModelConfig(max_age=30, input_size=32)).eval()
    model.calibration = IntervalCalibration(temperature=3.0, coverage=0.9, faces=100)
    run = InferencePass(torch.device("cpu"), num_workers=0)
    routed = evaluate_samples(model, samples, "routing", run, "routing")
    vanilla = evaluate_samples(model, samples, "vanilla", run, "routing")
    assert routed["interval_90"]["calibrated"] and not vanilla["interval_90"]["calibrated"]
    assert set(vanilla["modes"]) == set(routed["modes"]) == {"routing", "vanilla", "balanced", "bigger"}
    assert vanilla["mae"] == pytest.approx(routed["modes"]["vanilla"]["mae"])
    model.calibration = None
    raw = evaluate_samples(model, samples, "vanilla", run, "routing")
    assert vanilla["interval_90"]["mean_width"] == pytest.approx(raw["interval_90"]["mean_width"])


def test_bigger_breaks_a_tie_towards_the_balanced_head() -> None:
    """Table IX's control: vanilla only if Y1 > Y2 strictly; equal divergences -> balanced."""
    same = torch.tensor([[[0.5, 0.5, 0.0]], [[0.5, 0.5, 0.0]]])
    views = {"vanilla": same, "balanced": same.flip(-1)}
    assert route(views, "bigger").used_balanced.tolist() == [True]
