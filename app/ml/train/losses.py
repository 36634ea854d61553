"""Metric-learning loss used beside cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_hard_triplet(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    *,
    anchors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al., 2017) on L2-normalised embeddings.

    Normalising first matches retrieval (cosine) and removes the trivial minimum in which every
    embedding shrinks towards zero, which starves the identity classifier on small data.

    With ``anchors`` (a boolean mask, e.g. "is a sketch"), only those rows are anchors and
    their positives and negatives are taken among the other rows: the cross-modal form, in
    which a sketch is pulled towards its person's photos and away from other people's photos,
    exactly the comparison retrieval makes. Rows without a valid triplet add nothing; the
    result is computed without a host synchronisation.
    """
    x = F.normalize(embeddings.float(), dim=1)
    dist = torch.cdist(x, x).clamp_min(1e-12)
    same = labels.view(-1, 1) == labels.view(1, -1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    candidates = ~eye
    rows = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    if anchors is not None:
        rows = anchors
        candidates = candidates & ~anchors.view(1, -1)
    positives = same & candidates
    negatives = ~same & candidates
    valid = rows & positives.any(dim=1) & negatives.any(dim=1)
    hardest_pos = torch.where(positives, dist, torch.zeros_like(dist)).max(dim=1).values
    hardest_neg = torch.where(negatives, dist, torch.full_like(dist, 4.0)).min(dim=1).values
    per_row = F.relu(hardest_pos - hardest_neg + margin) * valid
    return per_row.sum() / valid.sum().clamp_min(1)
