"""How a query sketch becomes one embedding: its *view*. One rule for evaluation and service.

* ``sketch``: the sketch itself, embedded as a sketch (grey, like the training sketches);
* ``translated``: the translator's synthetic photo of it, embedded as a photo (the paper's
  pipeline);
* ``fused``: both, fused into one unit vector (:func:`app.ml.infer.embedder.fuse_views`, the
  normalised weighted sum, the translation weighed by the bundle's ``translation_weight``,
  0.5 unless set). On the protocol, with the weight chosen there, it is the best of the
  three (docs/results.md, "Table VI" and "Table VI for the shipped ensemble").

A bundle names its view in ``manifest.query_view``; bundles from before that field query
translated when they have a translator and as drawn when not (:func:`bundle_view`).
:func:`resolve_view` applies a request's ``view`` / ``translate`` choices to that default and
:func:`embed_queries` embeds a batch of sketches in the chosen view, given the caller's embed
and translate functions (the service passes its batching queue's, evaluation the bundle's own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
from PIL import Image

from app.errors import UserInputError
from app.ml.infer.embedder import Modality, fuse_views

QueryView = Literal["sketch", "translated", "fused"]
QUERY_VIEWS: tuple[str, ...] = get_args(QueryView)

EmbedFn = Callable[[Sequence[Image.Image], Sequence[Modality]], np.ndarray]
"""Embeds images, one modality per image, in one forward pass per member."""
TranslateFn = Callable[[Sequence[Image.Image]], list[Image.Image]]


def bundle_view(query_view: QueryView | None, has_translator: bool) -> QueryView:
    """A bundle's own view: its manifest's, else translated when it has a translator."""
    if query_view is not None and (query_view == "sketch" or has_translator):
        return query_view
    return "translated" if has_translator else "sketch"


def check_choice(view: str | None, translate: bool | None) -> None:
    """A known ``view``, and one that ``translate`` (when also given) agrees with."""
    if view is not None and view not in QUERY_VIEWS:
        raise UserInputError(f"view must be one of {', '.join(QUERY_VIEWS)}, got {view!r}")
    if view is not None and translate is not None and translate != (view != "sketch"):
        raise UserInputError(
            f"translate={str(translate).lower()} contradicts view={view}: "
            "send one of the two (view=sketch is translate=false)"
        )


def resolve_view(
    default: QueryView,
    has_translator: bool,
    *,
    view: QueryView | None = None,
    translate: bool | None = None,
) -> tuple[QueryView, list[str]]:
    """The view a query is embedded in, and notes for the caller.

    ``view`` chooses outright; ``translate`` (the older switch) says only whether the
    translator runs: false is ``sketch``, true is the bundle's view when that translates,
    else ``translated``. Both given and contradicting each other is an error. A view that
    needs a translator the bundle lacks falls back to ``sketch`` with a note.
    """
    check_choice(view, translate)
    asked = view
    if view is None:
        if translate is False:
            view = "sketch"
        elif translate is True:
            view = default if default != "sketch" else "translated"
        else:
            view = default
    if view != "sketch" and not has_translator:
        what = f"view {view} was" if asked else "translate was"
        return "sketch", [
            f"{what} requested but the model has no translator: the sketch was embedded as drawn"
        ]
    return view, []


def embed_queries(
    sketches: Sequence[Image.Image],
    view: QueryView,
    embed: EmbedFn,
    translate: TranslateFn | None,
    translation_weight: float = 0.5,
) -> tuple[np.ndarray, list[Image.Image]]:
    """Unit query embeddings (one row a sketch) in ``view``, and the translations made
    (empty for ``sketch``). ``fused`` weighs the translation's embedding by
    ``translation_weight`` and the sketch's by the rest (the bundle's
    ``manifest.translation_weight``).

    One call of ``embed`` per batch of sketches whatever the view: for ``fused``, the sketches
    (as sketches) and their translations (as photos) go through each member together, with
    their mirror images when the embedder flips, instead of one call per view."""
    n = len(sketches)
    if view == "sketch":
        return embed(sketches, ["sketch"] * n), []
    if translate is None:
        raise UserInputError(f"view {view} needs a translator")
    translations = translate(sketches)
    if view == "translated":
        return embed(translations, ["photo"] * n), translations
    kinds: list[Modality] = ["sketch"] * n
    kinds += ["photo"] * n
    both = embed([*sketches, *translations], kinds)
    if both.shape[0] != 2 * n:
        raise RuntimeError(f"{2 * n} images embedded into {both.shape[0]} rows")
    weights = (1.0 - translation_weight, translation_weight)
    return fuse_views(both[:n], both[n:], weights=weights), translations
