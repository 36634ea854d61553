"""The relevance-feedback protocol: after confirming one photo of the suspect, where does the
suspect's photo from the other camera rank?

For every test sketch and every photo of its person (each photo is confirmed in turn), one
ranking of the test photos is scored under the Market-1501 rules with the query's camera set to
the confirmed photo's camera: the confirmed photo (and any other photo of the person from that
camera) is junk, so the figures are those of the person's photos from *other* cameras, which
is what an investigator wants found next. Variants (the query is built by
:func:`app.ml.retrieval.feedback.build_query`, as in the service):

* ``plain``: the sketch alone (what the search showed before any feedback);
* ``confirmed``: the sketch moved towards the confirmed photo (Rocchio);
* ``confirmed+rejected``: also moved away from the wrong photos ranked above the confirmed
  one by the plain query (at most ``MAX_REJECTED``: the ones an investigator looked at and
  rejected on the way), which are left out of the list as the service leaves them out;
* ``plain+rejected``: the sketch alone with those rejected photos left out (so the difference
  to ``confirmed+rejected`` is the query's move, not the shorter list);
* ``confirmed (max fusion)``: the sketch and the confirmed photo as two queries, each photo
  ranked by its better cosine (the alternative to the mean fusion, for comparison only);
* ``photo only``: the confirmed photo as the only query (how much the sketch still adds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.errors import UserInputError
from app.ml.evaluation.testset import Embedded
from app.ml.retrieval.distances import distances
from app.ml.retrieval.feedback import FeedbackWeights, build_query
from app.ml.retrieval.metrics import ranking_result

__all__ = ["FEEDBACK_PROTOCOL", "MAX_REJECTED", "VARIANTS", "evaluate_feedback"]

MAX_REJECTED = 10
VARIANTS = (
    "plain",
    "confirmed",
    "confirmed+rejected",
    "plain+rejected",
    "confirmed (max fusion)",
    "photo only",
)
FEEDBACK_PROTOCOL = (
    "each test sketch with each photo of its person confirmed in turn; figures of the "
    "person's photos from the other camera(s) (the confirmed camera is junk); rejected = the "
    f"wrong photos the plain query ranks above the confirmed one (at most {MAX_REJECTED}), "
    "left out of the list"
)


def evaluate_feedback(
    e: Embedded, weights: FeedbackWeights | None = None, max_rank: int = 50
) -> dict[str, dict[str, Any]]:
    """Figures (rank1, rank5, rank10, mAP, cmc, n_queries, n_gallery) of each variant."""
    weights = weights or FeedbackWeights()
    plain_dist = distances(e.query, e.gallery)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in VARIANTS}
    q_pids: list[int] = []
    q_cams: list[int] = []
    for i, pid in enumerate(e.q_pids.tolist()):
        order = np.argsort(plain_dist[i], kind="stable")
        for j in np.flatnonzero(e.g_pids == pid).tolist():
            others = (e.g_pids == pid) & (e.g_camids != e.g_camids[j])
            if not others.any():
                continue  # nothing left to find from another camera
            above = order[: int(np.flatnonzero(order == j)[0])]
            rejected = above[e.g_pids[above] != pid][:MAX_REJECTED]
            sketch, photo = e.query[i : i + 1], e.gallery[j : j + 1]
            moved = build_query(sketch, photo, None, weights)
            moved_away = build_query(sketch, photo, e.gallery[rejected], weights)
            cos_max = np.maximum(e.gallery @ sketch[0], e.gallery @ photo[0])
            rows["plain"].append(plain_dist[i])
            rows["confirmed"].append(distances(moved[None], e.gallery)[0])
            rows["confirmed+rejected"].append(_without(moved_away, e.gallery, rejected))
            rows["plain+rejected"].append(_without(sketch[0], e.gallery, rejected))
            rows["confirmed (max fusion)"].append(np.clip(2.0 - 2.0 * cos_max, 0.0, 4.0))
            rows["photo only"].append(distances(photo, e.gallery)[0])
            q_pids.append(pid)
            q_cams.append(int(e.g_camids[j]))
    if not q_pids:
        raise UserInputError(
            "no test identity has photos from two cameras: the feedback protocol needs them"
        )
    return {
        name: ranking_result(
            np.stack(dist).astype(np.float32),
            np.asarray(q_pids),
            e.g_pids,
            np.asarray(q_cams),
            e.g_camids,
            max_rank,
        ).to_dict()
        for name, dist in rows.items()
    }


def _without(query: np.ndarray, gallery: np.ndarray, left_out: np.ndarray) -> np.ndarray:
    """Distances of ``query`` to the gallery, the ``left_out`` items ranked last (infinite)."""
    dist = distances(query[None], gallery)[0]
    dist[left_out] = np.inf
    return dist
