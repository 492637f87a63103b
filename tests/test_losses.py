"""Tests of glae.losses against values worked out by hand."""

import doctest
import math

import pytest
import torch

from glae import losses
from glae.losses import (
    LOSSES,
    base_loss,
    compute_loss,
    expectation_l1_loss,
    expected_age,
    flip_kl,
    gaussian_label_distribution,
    glae_loss,
    holistic_loss,
    kl_loss,
    local_loss,
)

A = math.exp(-0.5)  # exp(-(k - y)^2 / 2) at distance 1 with sigma 1


def test_docstring_examples():
    assert doctest.testmod(losses).failed == 0


def test_gaussian_label_distribution_centre():
    # K = 2, y = 1, sigma = 1: weights exp(-1/2), exp(0), exp(-1/2), normalised.
    z = gaussian_label_distribution(torch.tensor([1.0]), 3)
    expected = torch.tensor([[A, 1.0, A]]) / (1 + 2 * A)
    assert torch.allclose(z, expected)


def test_gaussian_label_distribution_is_renormalised_at_the_edge():
    # y = 0: weights exp(0), exp(-1/2), exp(-4/2); the truncated Eq. 1 would sum to
    # (1 + 0.6065 + 0.1353) / sqrt(2 pi) = 0.695, not 1.
    z = gaussian_label_distribution(torch.tensor([0.0]), 3)
    weights = torch.tensor([1.0, A, math.exp(-2.0)])
    assert torch.allclose(z, (weights / weights.sum()).unsqueeze(0))


def test_gaussian_label_distribution_per_sample_sigma():
    # Row 2 has sigma = 2: distance 1 gives exp(-1 / (2 * 4)) = exp(-1/8).
    z = gaussian_label_distribution(torch.tensor([1.0, 1.0]), 3, torch.tensor([1.0, 2.0]))
    b = math.exp(-1 / 8)
    expected = torch.tensor([[A, 1.0, A], [b, 1.0, b]])
    expected = expected / expected.sum(dim=1, keepdim=True)
    assert torch.allclose(z, expected)


def test_gaussian_label_distribution_non_integer_and_integer_ages():
    # y = 0.5: distances 0.5, 0.5, 1.5 -> exp(-1/8), exp(-1/8), exp(-9/8).
    z = gaussian_label_distribution(torch.tensor([0.5]), 3)
    weights = torch.tensor([math.exp(-1 / 8), math.exp(-1 / 8), math.exp(-9 / 8)])
    assert torch.allclose(z, (weights / weights.sum()).unsqueeze(0))
    from_int = gaussian_label_distribution(torch.tensor([1]), 3)
    assert torch.allclose(from_int, torch.tensor([[A, 1.0, A]]) / (1 + 2 * A))


def test_gaussian_label_distribution_age_beyond_k_piles_on_last_class():
    # y = 116 with K = 100: the nearest class is 16 sigma away, so Eq. 1 gives at most
    # exp(-16^2 / 2) = exp(-128) ~ 2.6e-56, zero in float32. Normalised: finite, mode 100.
    z = gaussian_label_distribution(torch.tensor([116.0]), 101)
    assert torch.isfinite(z).all()
    assert torch.allclose(z.sum(), torch.tensor(1.0))
    assert z.argmax().item() == 100


def test_kl_loss_zero_when_logits_are_log_target():
    z = gaussian_label_distribution(torch.tensor([1.0, 2.5]), 5)
    assert torch.allclose(kl_loss(z, z.log()), torch.tensor(0.0), atol=1e-6)


def test_kl_loss_hand_values():
    # Row 1: z = [1, 0], p = [1/2, 1/2] -> 1 * log(1 / (1/2)) + 0 log 0 = log 2.
    # Row 2: z = [1/2, 1/2] = p -> 0. Batch mean = log(2) / 2.
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    logits = torch.zeros(2, 2)
    assert torch.allclose(kl_loss(target, logits), torch.tensor(math.log(2) / 2))


def test_kl_loss_zero_log_zero_with_infinite_logit():
    # z = [1, 0], logits [0, -inf] -> p = [1, 0]; 0 * log(0 / 0) counts as 0.
    loss = kl_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, -math.inf]]))
    assert torch.allclose(loss, torch.tensor(0.0))


def test_kl_loss_gradient_is_p_minus_z_over_batch():
    # d/d logits of mean_b sum_k z log(z/p) = (softmax(logits) - z) / B.
    target = gaussian_label_distribution(torch.tensor([0.0, 2.0]), 3)
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, 0.5]], requires_grad=True)
    kl_loss(target, logits).backward()
    expected = (torch.softmax(logits.detach(), dim=1) - target) / 2
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_expected_age():
    # 0 * 0.25 + 1 * 0.5 + 2 * 0.25 = 1; one-hot at 2 -> 2.
    probs = torch.tensor([[0.25, 0.5, 0.25], [0.0, 0.0, 1.0]])
    assert torch.allclose(expected_age(probs), torch.tensor([1.0, 2.0]))
    assert expected_age(probs.reshape(1, 2, 3)).shape == (1, 2)


def test_expectation_l1_loss_hand_values():
    # Row 1: logits 0 -> p = [1/3]*3, E = 1; |3 - 1| = 2.
    # Row 2: logits [0, 0, log 2] -> p = [1/4, 1/4, 1/2], E = 1/4 + 1 = 1.25; |0 - 1.25| = 1.25.
    # Mean = (2 + 1.25) / 2 = 1.625.
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2)]])
    loss = expectation_l1_loss(torch.tensor([3.0, 0.0]), logits)
    assert loss.item() == pytest.approx(1.625)


def test_base_loss_hand_value():
    # K = 2, y = 1, logits 0: p = 1/3 each so E = 1 and l_er = 0;
    # l_kl = sum_k z log(3 z) with z = [A, 1, A] / (1 + 2A).
    z = [A / (1 + 2 * A), 1 / (1 + 2 * A), A / (1 + 2 * A)]
    expected = sum(zk * math.log(3 * zk) for zk in z)
    for loss_fn in (base_loss, holistic_loss):
        loss = loss_fn(torch.zeros(1, 3), torch.tensor([1.0]))
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_base_loss_is_kl_plus_l1_with_per_sample_sigma():
    torch.manual_seed(0)
    logits = torch.randn(4, 11)
    ages = torch.tensor([0.0, 3.0, 7.5, 10.0])
    sigma = torch.tensor([1.0, 2.0, 0.5, 3.0])
    target = gaussian_label_distribution(ages, 11, sigma)
    expected = kl_loss(target, logits) + expectation_l1_loss(ages, logits)
    assert torch.allclose(base_loss(logits, ages, sigma), expected)
    assert not torch.allclose(base_loss(logits, ages, sigma), base_loss(logits, ages))


def test_local_loss_is_mean_of_per_pixel_base_losses():
    torch.manual_seed(0)
    local_logits = torch.randn(2, 4, 7)
    ages = torch.tensor([1.0, 5.0])
    per_pixel = [base_loss(local_logits[:, n], ages, 1.5) for n in range(4)]
    assert torch.allclose(local_loss(local_logits, ages, 1.5), torch.stack(per_pixel).mean())


def test_local_loss_hand_value():
    # One sample, two pixels, K = 2, y = 1. Pixel 1: logits 0 -> l_kl = base value above,
    # l_er = 0. Pixel 2: logits = log z -> l_kl = 0, E = 1 by symmetry, l_er = 0.
    z = torch.tensor([A, 1.0, A]) / (1 + 2 * A)
    pixel_1 = sum(zk * math.log(3 * zk) for zk in z.tolist())
    local_logits = torch.stack([torch.zeros(3), z.log()]).unsqueeze(0)
    loss = local_loss(local_logits, torch.tensor([1.0]))
    assert loss.item() == pytest.approx(pixel_1 / 2, rel=1e-5)


def test_glae_loss_and_compute_loss_dispatch():
    torch.manual_seed(0)
    logits = torch.randn(3, 6)
    local_logits = torch.randn(3, 5, 6)
    ages = torch.tensor([0.0, 2.0, 5.0])
    total = glae_loss(logits, local_logits, ages)
    assert torch.allclose(total, local_loss(local_logits, ages) + base_loss(logits, ages))
    outputs = {"logits": logits, "local_logits": local_logits}
    assert tuple(LOSSES) == ("kl", "base", "sum", "corn")
    assert torch.allclose(compute_loss("sum", outputs, ages), total)
    assert torch.allclose(compute_loss("base", outputs, ages), base_loss(logits, ages))
    target = gaussian_label_distribution(ages, 6)
    assert torch.allclose(compute_loss("kl", {"logits": logits}, ages), kl_loss(target, logits))


def _two_class_target_at_zero() -> list[float]:
    """z for K = 1, y = 0, sigma = 1: weights exp(0) and exp(-1/2), normalised."""
    return [1 / (1 + A), A / (1 + A)]


def test_sum_loss_hand_value_weighs_local_mean_and_holistic_equally():
    """Eq. 10 with Eq. 7's 1/(H'W') mean: the number a training log reports."""
    # K = 1, y = 0. Holistic logits [0, 0]: p = [1/2, 1/2], E = 1/2.
    # Pixel 1 logits [0, 0]: same as holistic. Pixel 2 logits [0, log 3]: p = [1/4, 3/4], E = 3/4.
    z = _two_class_target_at_zero()

    def l_base(p: list[float]) -> float:
        kl = sum(zk * math.log(zk / pk) for zk, pk in zip(z, p))
        return kl + abs(0 - p[1])

    holistic = l_base([0.5, 0.5])
    local = (l_base([0.5, 0.5]) + l_base([0.25, 0.75])) / 2
    outputs = {
        "logits": torch.tensor([[0.0, 0.0]]),
        "local_logits": torch.tensor([[[0.0, 0.0], [0.0, math.log(3)]]]),
    }
    ages = torch.tensor([0.0])
    assert local_loss(outputs["local_logits"], ages).item() == pytest.approx(local, rel=1e-6)
    assert compute_loss("sum", outputs, ages).item() == pytest.approx(local + holistic, rel=1e-6)
    assert compute_loss("base", outputs, ages).item() == pytest.approx(holistic, rel=1e-6)
    kl_only = sum(zk * math.log(2 * zk) for zk in z)
    assert compute_loss("kl", outputs, ages).item() == pytest.approx(kl_only, rel=1e-6)


def test_sum_loss_gradient_reaches_each_branch_with_its_weight():
    """Both branches learn, each pixel with weight 1/(B H'W') and the holistic one with 1/B.

    d l_kl / d logit_j = p_j - z_j and d |E - y| / d logit_j = sign(E - y) p_j (j - E).
    """
    z = _two_class_target_at_zero()
    logits = torch.zeros(1, 2, requires_grad=True)  # p = [1/2, 1/2], E = 1/2 > y = 0
    local_logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3)]]], requires_grad=True)
    compute_loss("sum", {"logits": logits, "local_logits": local_logits}, torch.tensor([0.0])).backward()

    def grad(p: list[float]) -> list[float]:
        expectation = p[1]
        return [p[j] - z[j] + p[j] * (j - expectation) for j in range(2)]

    assert logits.grad.tolist()[0] == pytest.approx(grad([0.5, 0.5]), abs=1e-6)
    expected_local = [[g / 2 for g in grad([0.5, 0.5])], [g / 2 for g in grad([0.25, 0.75])]]
    got = local_logits.grad.tolist()[0]
    for pixel, expected in zip(got, expected_local):
        assert pixel == pytest.approx(expected, abs=1e-6)


def test_expectation_l1_gradient_sign_follows_the_error():
    """l_er pushes the expected age towards y from either side: sign(E - y) p_j (j - E)."""
    logits = torch.zeros(2, 3, requires_grad=True)  # p = 1/3 each, E = 1
    expectation_l1_loss(torch.tensor([0.0, 2.0]), logits).backward()
    # Row 1: E > y -> +p_j (j - 1) / 2 = [-1/6, 0, 1/6]; row 2: E < y -> [1/6, 0, -1/6].
    expected = [[-1 / 6, 0.0, 1 / 6], [1 / 6, 0.0, -1 / 6]]
    for row, want in zip(logits.grad.tolist(), expected):
        assert row == pytest.approx(want, abs=1e-6)


def test_flip_kl_hand_values():
    # Row 1: KL([1/2, 1/2] || [1/4, 3/4]) = 1/2 log 2 + 1/2 log(2/3).
    # Row 2: KL([1, 0] || [1/2, 1/2]) = log 2 (the zero class contributes 0).
    # Row 3: identical distributions -> 0.
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.3, 0.7]])
    p_flip = torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.3, 0.7]])
    expected = torch.tensor([0.5 * math.log(2) + 0.5 * math.log(2 / 3), math.log(2), 0.0])
    assert torch.allclose(flip_kl(p, p_flip), expected, atol=1e-6)


def test_flip_kl_clamps_zero_probabilities():
    # p_flip = [1, 0]: 1/2 log(1/2) + 1/2 log(1/2 / 1e-8), finite.
    result = flip_kl(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]]))
    expected = 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-8)
    assert result.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: gaussian_label_distribution(torch.tensor([1.0]), 3, 0.0),
        lambda: gaussian_label_distribution(torch.tensor([1.0]), 3, -1.0),
        lambda: gaussian_label_distribution(torch.tensor([1.0, 2.0]), 3, torch.tensor([1.0, 0.0])),
        lambda: gaussian_label_distribution(torch.tensor([1.0, 2.0]), 3, torch.tensor([1.0])),
        lambda: gaussian_label_distribution(torch.tensor([[1.0]]), 3),
        lambda: gaussian_label_distribution(torch.tensor([1.0]), 0),
        lambda: kl_loss(torch.ones(2, 3) / 3, torch.zeros(2, 4)),
        lambda: kl_loss(torch.ones(3) / 3, torch.zeros(3)),
        lambda: expected_age(torch.tensor(1.0)),
        lambda: expectation_l1_loss(torch.tensor([1.0, 2.0]), torch.zeros(3, 4)),
        lambda: base_loss(torch.zeros(4), torch.tensor([1.0])),
        lambda: local_loss(torch.zeros(1, 4), torch.tensor([1.0])),
        lambda: glae_loss(torch.zeros(1, 4), torch.zeros(1, 2, 5), torch.tensor([1.0])),
        lambda: compute_loss("sum", {"logits": torch.zeros(1, 4)}, torch.tensor([1.0])),
        lambda: compute_loss("l2", {"logits": torch.zeros(1, 4)}, torch.tensor([1.0])),
        lambda: compute_loss("base", {}, torch.tensor([1.0])),
        lambda: flip_kl(torch.ones(2, 3) / 3, torch.ones(2, 4) / 4),
        lambda: flip_kl(torch.ones(2, 3) / 3, torch.ones(2, 3) / 3, eps=0.0),
    ],
)
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


def test_corn_loss_hand_values() -> None:
    """Task k ("older than k?") counts only samples older than k - 1; the loss averages over those."""
    # Age 0: only task 0 applies (answer no): -log(1 - sigmoid(0)) = log 2.
    assert math.isclose(losses.corn_loss(torch.zeros(1, 2), torch.tensor([0.0])).item(), math.log(2), rel_tol=1e-6)
    logits = torch.tensor([[2.0, -1.0]])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    # Age 1: task 0 yes (-log sigmoid(2)), task 1 no (-log(1 - sigmoid(-1))).
    expected = (softplus(-2.0) + softplus(-1.0)) / 2
    assert math.isclose(losses.corn_loss(logits, torch.tensor([1.0])).item(), expected, rel_tol=1e-6)
    # Both samples together: 1 task for age 0, 2 for age 1, averaged over the 3 answers.
    both = losses.corn_loss(torch.cat([torch.zeros(1, 2), logits]), torch.tensor([0.0, 1.0])).item()
    assert math.isclose(both, (math.log(2) + softplus(-2.0) + softplus(-1.0)) / 3, rel_tol=1e-6)
    assert losses.compute_loss("corn", {"logits": logits}, torch.tensor([1.0])).item() == pytest.approx(expected)


def test_corn_loss_rounds_real_ages_half_up_to_their_class() -> None:
    """1.3 is class 1, not "older than 1"; 0.5 is class 1 and 0.4 class 0 (half up, as CMAE)."""
    logits = torch.tensor([[2.0, -1.0]])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    # Age 1.3 as class 1: task 0 yes (softplus(-2)), task 1 no (softplus(-1)), as for age 1 above.
    # Compared as a real value, 1.3 > 1 would answer task 1 "yes": softplus(1) instead.
    expected = (softplus(-2.0) + softplus(-1.0)) / 2
    assert math.isclose(losses.corn_loss(logits, torch.tensor([1.3])).item(), expected, rel_tol=1e-6)
    # Age 0.4 as class 0: only task 0 applies, answer no: -log(1 - sigmoid(2)) = softplus(2).
    # Compared as a real value, 0.4 > 0 would answer task 0 "yes" and enter task 1 too.
    assert math.isclose(losses.corn_loss(logits, torch.tensor([0.4])).item(), softplus(2.0), rel_tol=1e-6)
    batch = logits.repeat(3, 1)
    assert torch.equal(losses.corn_loss(batch, torch.tensor([1.3, 0.5, 0.4])), losses.corn_loss(batch, torch.tensor([1.0, 1.0, 0.0])))
