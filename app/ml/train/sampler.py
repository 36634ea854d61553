"""Batch index samplers for training."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import torch


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Plain random batches over ``n`` items (the last short batch is dropped if n >= batch)."""
    order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def identity_balanced_batches(
    labels: torch.Tensor, batch_size: int, instances: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """P identities × K instances per batch (sampling with replacement when an identity has
    fewer than K images), one pass over every identity per epoch — the sampler of
    batch-hard triplet training (Hermans et al., 2017)."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels.tolist()):
        by_label[label].append(index)
    ids = list(by_label)
    per_batch = max(2, batch_size // instances)
    order = torch.randperm(len(ids), generator=generator).tolist()
    for start in range(0, len(order) - per_batch + 1, per_batch):
        chosen: list[int] = []
        for pos in order[start : start + per_batch]:
            pool = torch.tensor(by_label[ids[pos]])
            if len(pool) >= instances:
                pick = pool[torch.randperm(len(pool), generator=generator)[:instances]]
            else:
                pick = pool[torch.randint(len(pool), (instances,), generator=generator)]
            chosen.extend(pick.tolist())
        yield torch.tensor(chosen)
