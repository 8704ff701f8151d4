"""Endless seeded sampling: determinism, resumption, sharding, and seeded random transforms."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, RandAffined, RandFlipd, RandGaussianNoised

from custom.samplers import InfiniteSeededSampler, SeededDataset, seed_iteration


def take(sampler: InfiniteSeededSampler, n: int) -> list[tuple[int, int]]:
    return list(islice(iter(sampler), n))


def test_deterministic_and_seed_dependent():
    a = take(InfiniteSeededSampler(10, seed=1337), 55)
    b = take(InfiniteSeededSampler(10, seed=1337), 55)
    c = take(InfiniteSeededSampler(10, seed=1338), 55)
    assert a == b
    assert [i for i, _ in a] != [i for i, _ in c]
    assert {s for _, s in a}.isdisjoint({s for _, s in c})
    assert all(isinstance(i, int) and isinstance(s, int) and 0 <= s < 2**63 for i, s in a)


def test_each_pass_is_a_new_permutation():
    n = 9
    stream = [i for i, _ in take(InfiniteSeededSampler(n, seed=3), 5 * n)]
    passes = [stream[k * n : (k + 1) * n] for k in range(5)]
    for p in passes:
        assert sorted(p) == list(range(n))
    assert len({tuple(p) for p in passes}) > 1
    seeds = [s for _, s in take(InfiniteSeededSampler(n, seed=3), 5 * n)]
    assert len(set(seeds)) == len(seeds)  # a new augmentation seed for every draw, even of the same case


def test_no_shuffle_is_in_order():
    assert [i for i, _ in take(InfiniteSeededSampler(4, seed=0, shuffle=False), 10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("n, world_size, rank", [(10, 1, 0), (7, 1, 0), (10, 2, 1), (7, 3, 2)])
@pytest.mark.parametrize("position", [0, 1, 6, 13, 40])
def test_set_start_equals_tail_of_stream(n, world_size, rank, position):
    full = take(InfiniteSeededSampler(n, seed=5, rank=rank, world_size=world_size), position + 25)
    resumed = InfiniteSeededSampler(n, seed=5, rank=rank, world_size=world_size)
    resumed.set_start(position)
    assert take(resumed, 25) == full[position:]
    # every new iterator starts at the set position again
    assert take(resumed, 25) == full[position:]
    assert resumed.sample_seed(position) == full[position][1]


def test_set_start_validation():
    with pytest.raises(ValueError):
        InfiniteSeededSampler(5).set_start(-1)
    with pytest.raises(ValueError):
        InfiniteSeededSampler(0)
    with pytest.raises(ValueError):
        InfiniteSeededSampler(5, rank=2, world_size=2)


@pytest.mark.parametrize("n", [10, 11])
def test_two_ranks_disjoint_within_a_pass(n):
    per_rank = n // 2
    streams = [take(InfiniteSeededSampler(n, seed=9, rank=r, world_size=2), 4 * per_rank) for r in (0, 1)]
    for k in range(4):
        shard0 = [i for i, _ in streams[0][k * per_rank : (k + 1) * per_rank]]
        shard1 = [i for i, _ in streams[1][k * per_rank : (k + 1) * per_rank]]
        assert len(set(shard0)) == per_rank and len(set(shard1)) == per_rank
        assert set(shard0).isdisjoint(shard1)
        assert set(shard0) | set(shard1) <= set(range(n))
    # ranks draw different augmentation seeds
    assert {s for _, s in streams[0]}.isdisjoint({s for _, s in streams[1]})


def test_fewer_cases_than_ranks_wrap_around():
    for r in (0, 1, 2):
        assert [i for i, _ in take(InfiniteSeededSampler(1, seed=0, rank=r, world_size=3), 4)] == [0, 0, 0, 0]


# ------------------------------------------------------------------------------------------ SeededDataset
def _data(n: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"image": rng.normal(size=(1, 6, 5, 4)).astype(np.float32), "label": (rng.random((1, 6, 5, 4)) > 0.5).astype(np.float32)}
        for _ in range(n)
    ]


def _transform() -> Compose:
    return Compose([
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        RandAffined(keys=["image", "label"], prob=0.5, rotate_range=(0.3, 0.3, 0.3), mode=("bilinear", "nearest")),
        RandGaussianNoised(keys=["image"], prob=1.0, std=0.1),
    ])


def _as_np(item: dict) -> dict:
    return {k: np.asarray(v) for k, v in item.items()}


def test_seeded_dataset_reproducible_per_seed():
    ds = SeededDataset(Dataset(_data(), transform=_transform()))
    assert len(ds) == 4
    a = _as_np(ds[(2, 12345)])
    ds[(1, 7)]  # anything in between does not matter
    ds[(2, 999)]
    b = _as_np(ds[(2, 12345)])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # a different seed gives a different augmentation (the noise always differs)
    c = _as_np(ds[(2, 12346)])
    assert not np.array_equal(a["image"], c["image"])
    # a fresh dataset with a fresh transform gives the same result for the same (index, seed)
    d = _as_np(SeededDataset(Dataset(_data(), transform=_transform()))[(2, 12345)])
    for k in a:
        np.testing.assert_array_equal(a[k], d[k])


def test_seeded_dataset_flips_depend_on_the_seed():
    ds = SeededDataset(Dataset(_data(1), transform=Compose([RandFlipd(keys=["image"], prob=0.5, spatial_axis=0)])))
    raw = _data(1)[0]["image"]
    flipped = [not np.array_equal(np.asarray(ds[(0, s)]["image"]), raw) for s in range(40)]
    assert any(flipped) and not all(flipped)
    again = [not np.array_equal(np.asarray(ds[(0, s)]["image"]), raw) for s in range(40)]
    assert flipped == again


def test_seeded_dataset_plain_index_passthrough():
    data = _data()
    ds = SeededDataset(Dataset(data))
    np.testing.assert_array_equal(np.asarray(ds[3]["image"]), data[3]["image"])
    np.testing.assert_array_equal(np.asarray(ds[(3, 42)]["image"]), data[3]["image"])  # no transform: unchanged


def _batches(num_workers: int, start: int = 0, n: int = 5) -> list[dict]:
    sampler = InfiniteSeededSampler(4, seed=21)
    sampler.set_start(start)
    loader = DataLoader(SeededDataset(Dataset(_data(), transform=_transform())), batch_size=2, sampler=sampler,
                        num_workers=num_workers)
    return [{k: np.asarray(v) for k, v in b.items() if k in ("image", "label")} for b in islice(loader, n)]


def test_loader_stream_reproducible_resumable_and_worker_independent():
    ref = _batches(0, n=6)
    again = _batches(0, n=6)
    tail = _batches(0, start=6, n=3)  # 3 batches of 2 = positions 6..11
    workers = _batches(2, n=6)
    for got in (again, workers):
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
    for a, b in zip(ref[3:], tail):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_seed_iteration_is_a_function_of_seed_and_iteration():
    seed_iteration(1337, 5)
    a = torch.rand(3)
    torch.rand(10)
    seed_iteration(1337, 5)
    assert torch.equal(torch.rand(3), a)
    seed_iteration(1337, 6)
    assert not torch.equal(torch.rand(3), a)
