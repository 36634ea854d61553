"""Metric-learning loss used beside cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_hard_triplet(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al., 2017) on L2-normalised embeddings.

    Normalising first matches retrieval (cosine) and removes the trivial minimum in which every
    embedding shrinks towards zero, which starves the identity classifier on small data.
    """
    x = F.normalize(embeddings.float(), dim=1)
    dist = torch.cdist(x, x).clamp_min(1e-12)
    same = labels.view(-1, 1) == labels.view(1, -1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives = same & ~eye
    valid = positives.any(dim=1) & (~same).any(dim=1)
    if not bool(valid.any()):
        return x.sum() * 0.0
    hardest_pos = torch.where(positives, dist, torch.zeros_like(dist)).max(dim=1).values
    hardest_neg = torch.where(same, torch.full_like(dist, float("inf")), dist).min(dim=1).values
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()
