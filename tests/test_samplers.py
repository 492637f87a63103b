"""EpochSampler: deterministic, resumable, DDP-sharded instance- and class-balanced epochs."""

from __future__ import annotations

from collections import Counter

import pytest

from glae.data.samplers import EpochSampler


def _draws(sampler: EpochSampler) -> list[tuple[int, int]]:
    return list(sampler)


AGES = [float(a % 7) for a in range(23)]


@pytest.mark.parametrize("mode", ["instance", "class"])
def test_same_seed_and_epoch_same_sequence(mode: str) -> None:
    a = EpochSampler(AGES, mode, seed=5)  # type: ignore[arg-type]
    b = EpochSampler(AGES, mode, seed=5)  # type: ignore[arg-type]
    a.set_epoch(3)
    b.set_epoch(3)
    assert _draws(a) == _draws(b)
    assert _draws(a) == _draws(a)  # iterating twice gives the same epoch


@pytest.mark.parametrize("mode", ["instance", "class"])
def test_order_changes_across_epochs_and_seeds(mode: str) -> None:
    sampler = EpochSampler(AGES, mode, seed=5)  # type: ignore[arg-type]
    sampler.set_epoch(0)
    first = _draws(sampler)
    sampler.set_epoch(1)
    second = _draws(sampler)
    assert [i for i, _ in first] != [i for i, _ in second]
    assert {s for _, s in first}.isdisjoint({s for _, s in second})  # fresh augmentation seeds
    other = EpochSampler(AGES, mode, seed=6)  # type: ignore[arg-type]
    assert [i for i, _ in _draws(other)] != [i for i, _ in first]


def test_instance_mode_is_a_permutation() -> None:
    sampler = EpochSampler(AGES, "instance", seed=0)
    indices = [i for i, _ in sampler]
    assert len(indices) == len(sampler) == len(AGES)
    assert sorted(indices) == list(range(len(AGES)))
    seeds = [s for _, s in sampler]
    assert len(set(seeds)) == len(seeds)  # each draw its own augmentation


def test_class_mode_is_uniform_over_present_ages() -> None:
    ages = [10.0] * 1 + [20.0] * 10 + [30.0] * 100  # 1/10/100 images, ages 0-9 etc. absent
    draws_per_epoch = len(ages)
    sampler = EpochSampler(ages, "class", seed=1)
    counts: Counter[float] = Counter()
    total = 0
    for epoch in range(271):  # 271 * 111 = 30081 draws
        sampler.set_epoch(epoch)
        for index, _ in sampler:
            counts[ages[index]] += 1
            total += 1
    assert total == 271 * draws_per_epoch
    assert set(counts) == {10.0, 20.0, 30.0}  # an absent age is never drawn
    for age in (10.0, 20.0, 30.0):
        assert abs(counts[age] / total - 1 / 3) < 0.02, (age, counts)


def test_class_mode_rounds_half_up_and_draws_members_uniformly() -> None:
    # 4.5 rounds to 5 (same class as 5.0); 4.4 is class 4
    ages = [4.4, 4.5, 5.0, 5.0]
    sampler = EpochSampler(ages, "class", seed=0)
    counts: Counter[int] = Counter()
    for epoch in range(2000):
        sampler.set_epoch(epoch)
        counts.update(i for i, _ in sampler)
    total = sum(counts.values())
    assert counts[0] / total == pytest.approx(1 / 2, abs=0.02)  # class 4 alone
    for member in (1, 2, 3):  # class 5 shared by three images
        assert counts[member] / total == pytest.approx(1 / 6, abs=0.02)


@pytest.mark.parametrize("mode", ["instance", "class"])
@pytest.mark.parametrize("k", [0, 1, 9, 22, 23])
def test_start_at_yields_the_tail(mode: str, k: int) -> None:
    sampler = EpochSampler(AGES, mode, seed=2)  # type: ignore[arg-type]
    sampler.set_epoch(4)
    full = _draws(sampler)
    sampler.start_at(k)
    assert len(sampler) == len(AGES) - k
    assert _draws(sampler) == full[k:]
    sampler.set_epoch(4)  # a new epoch starts from its first draw again
    assert _draws(sampler) == full


@pytest.mark.parametrize("mode", ["instance", "class"])
@pytest.mark.parametrize("size", [22, 23])
def test_two_replicas_shard_the_global_order(mode: str, size: int) -> None:
    ages = AGES[:size]
    single = EpochSampler(ages, mode, seed=9)  # type: ignore[arg-type]
    shards = [EpochSampler(ages, mode, seed=9, num_replicas=2, rank=r) for r in (0, 1)]  # type: ignore[arg-type]
    for sampler in (single, *shards):
        sampler.set_epoch(2)
    rank0, rank1 = _draws(shards[0]), _draws(shards[1])
    assert len(rank0) == len(rank1) == len(shards[0]) == len(shards[1]) == -(-size // 2)
    # the augmentation seed encodes the global position: no position is drawn twice
    assert {s for _, s in rank0}.isdisjoint({s for _, s in rank1})
    # together the shards cover every position of the padded global order exactly once
    seeds = sorted(s for _, s in rank0 + rank1)
    assert seeds == list(range(seeds[0], seeds[0] + 2 * len(rank0)))
    interleaved = [draw for pair in zip(rank0, rank1) for draw in pair]
    if mode == "instance" or size % 2 == 0:
        # same number of draws as one process: the very same order, dealt round-robin
        assert interleaved[:size] == _draws(single)
    if mode == "instance":
        assert {i for i, _ in interleaved} == set(range(size))


def test_start_at_with_replicas() -> None:
    sampler = EpochSampler(AGES, "instance", seed=0, num_replicas=2, rank=1)
    full = _draws(sampler)
    sampler.start_at(5)
    assert _draws(sampler) == full[5:]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        EpochSampler([], "instance", seed=0)
    with pytest.raises(ValueError, match="sampling mode"):
        EpochSampler(AGES, "balanced", seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank 2"):
        EpochSampler(AGES, "instance", seed=0, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="rank -1"):
        EpochSampler(AGES, "instance", seed=0, num_replicas=2, rank=-1)
