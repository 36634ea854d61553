"""Tests for the batch samplers, the batch-hard triplet loss and the learning-rate schedule."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from app.ml.train.config import StageConfig
from app.ml.train.losses import batch_hard_triplet
from app.ml.train.reid import lr_factor
from app.ml.train.sampler import identity_balanced_batches, shuffled_batches

torch.set_num_threads(1)

# Identity -> number of images: two identities have fewer images than K = 4.
COUNTS = {0: 6, 1: 4, 2: 1, 3: 5, 4: 2, 5: 8}


@pytest.fixture()
def labels() -> torch.Tensor:
    values = [label for label, n in COUNTS.items() for _ in range(n)]
    order = torch.randperm(len(values), generator=torch.Generator().manual_seed(0))
    return torch.tensor(values)[order]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_identity_balanced_batches_hold_p_identities_times_k_images(
    labels: torch.Tensor,
) -> None:
    batches = list(identity_balanced_batches(labels, batch_size=8, instances=4, generator=_gen()))
    assert len(batches) == len(COUNTS) // 2  # P = 8 // 4 = 2 identities per batch
    for batch in batches:
        assert batch.shape == (8,)
        per_label = Counter(labels[batch].tolist())
        assert len(per_label) == 2
        assert set(per_label.values()) == {4}
        for label in per_label:
            picked = batch[labels[batch] == label].tolist()
            if COUNTS[label] >= 4:
                assert len(set(picked)) == 4, "enough images: drawn without replacement"
            else:
                assert set(picked) <= set((labels == label).nonzero().flatten().tolist())
    covered = [label for b in batches for label in set(labels[b].tolist())]
    assert sorted(covered) == sorted(COUNTS), "every identity once per epoch"


def test_identity_balanced_batches_repeat_a_single_image_identity(labels: torch.Tensor) -> None:
    only = int((labels == 2).nonzero().item())
    for seed in range(3):
        for batch in identity_balanced_batches(labels, 8, 4, _gen(seed)):
            if 2 in labels[batch].tolist():
                assert batch[labels[batch] == 2].tolist() == [only] * 4


def test_identity_balanced_batches_drop_a_short_last_batch() -> None:
    labels = torch.arange(5).repeat_interleave(3)
    batches = list(identity_balanced_batches(labels, batch_size=6, instances=3, generator=_gen()))
    assert len(batches) == 2  # 5 identities, 2 per batch: the odd one waits for the next epoch
    assert all(len(set(labels[b].tolist())) == 2 for b in batches)


def test_identity_balanced_batches_are_reproducible(labels: torch.Tensor) -> None:
    a = [b.tolist() for b in identity_balanced_batches(labels, 8, 4, _gen(5))]
    b = [b.tolist() for b in identity_balanced_batches(labels, 8, 4, _gen(5))]
    c = [b.tolist() for b in identity_balanced_batches(labels, 8, 4, _gen(6))]
    assert a == b and a != c


@pytest.mark.parametrize(("n", "batch_size", "n_batches"), [(12, 4, 3), (10, 3, 3), (2, 4, 1)])
def test_shuffled_batches_use_each_index_at_most_once(
    n: int, batch_size: int, n_batches: int
) -> None:
    batches = list(shuffled_batches(n, batch_size, _gen()))
    assert len(batches) == n_batches
    seen = [i for b in batches for i in b.tolist()]
    assert len(seen) == len(set(seen))
    assert set(seen) <= set(range(n))
    assert all(len(b) == min(n, batch_size) for b in batches)
    if n % batch_size == 0:
        assert sorted(seen) == list(range(n))


def test_shuffled_batches_shuffle() -> None:
    order = torch.cat(list(shuffled_batches(100, 10, _gen()))).tolist()
    assert order != list(range(100))
    assert order == torch.cat(list(shuffled_batches(100, 10, _gen()))).tolist()


def _unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# Two tight pairs 90° apart: 0° and 10°, 90° and 100°.
POINTS = torch.tensor([_unit(0), _unit(10), _unit(90), _unit(100)])


def _chord(degrees: float) -> float:
    return 2 * math.sin(math.radians(degrees) / 2)


def test_triplet_loss_is_zero_for_well_separated_identities() -> None:
    loss = batch_hard_triplet(POINTS, torch.tensor([0, 0, 1, 1]), margin=0.3)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_triplet_loss_is_positive_when_the_identities_are_swapped() -> None:
    loss = batch_hard_triplet(POINTS, torch.tensor([0, 1, 0, 1]), margin=0.3)
    # Every anchor: hardest positive 90° away, hardest negative 10° away.
    assert loss.item() == pytest.approx(_chord(90) - _chord(10) + 0.3, rel=1e-5)


def test_triplet_loss_ignores_the_scale_of_the_embeddings() -> None:
    emb = torch.randn(16, 8, generator=_gen(1))
    y = torch.arange(4).repeat_interleave(4)
    base = batch_hard_triplet(emb, y, margin=0.3)
    assert base.item() > 0
    for scale in (1e-3, 0.5, 10.0, 1e3):
        assert batch_hard_triplet(emb * scale, y, 0.3).item() == pytest.approx(base.item(), 1e-4)


def test_triplet_loss_without_valid_anchors_is_a_differentiable_zero() -> None:
    emb = torch.randn(4, 8, requires_grad=True)
    for y in (torch.arange(4), torch.zeros(4, dtype=torch.long)):
        loss = batch_hard_triplet(emb, y, margin=0.3)
        assert loss.item() == 0.0
        loss.backward()
        assert emb.grad is not None and torch.all(emb.grad == 0)


def test_triplet_loss_pulls_positives_together() -> None:
    emb = torch.tensor([_unit(0), _unit(60), _unit(30), _unit(120)], requires_grad=True)
    batch_hard_triplet(emb, torch.tensor([0, 0, 1, 1]), margin=0.5).backward()
    stepped = (emb - 0.1 * emb.grad).detach()
    assert batch_hard_triplet(stepped, torch.tensor([0, 0, 1, 1]), 0.5) < batch_hard_triplet(
        emb.detach(), torch.tensor([0, 0, 1, 1]), 0.5
    )


def test_lr_factor_warms_up_linearly_then_decays_in_steps() -> None:
    cfg = StageConfig(warmup_epochs=3, step_size=5, gamma=0.1)
    factors = [lr_factor(epoch, cfg) for epoch in range(12)]
    expected = [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01]
    assert factors == pytest.approx(expected)


def test_lr_factor_without_warm_up_starts_at_full_rate() -> None:
    cfg = StageConfig(warmup_epochs=0, step_size=40, gamma=0.5)
    assert [lr_factor(e, cfg) for e in (0, 39, 40, 79, 80)] == pytest.approx(
        [1.0, 1.0, 0.5, 0.5, 0.25]
    )
