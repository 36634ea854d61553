"""Write one ensemble bundle from the members of several saved bundles.

Members trained in separate runs (say a spatial-pyramid-pooling ResNet-110 with FC-256 and a
global-pooling ResNet-56 with FC-512, each with its own overrides) become one shipped bundle:
``sketchreid model combine OUT BUNDLE BUNDLE ...``. The weights are copied as they are (each
member keeps its spec and training record); the new manifest's ``training`` block says which
bundles it came from, with each one's own training block. ``--translator-from BUNDLE`` carries
another bundle's sketch->photo translator over (one trained on the same identities, e.g. the
shipped one when only the members are retrained): the translator does not depend on them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.ml.bundle.manifest import Bundle
from app.ml.bundle.store import BundleError, Manifest, combine_bundles, load_bundle, resave


def _common(values: list[Any], what: str, paths: list[str]) -> Any:
    """The one value every part has, or an error naming the parts that differ."""
    first = values[0]
    for value, path in zip(values[1:], paths[1:], strict=True):
        if value != first:
            raise BundleError(
                f"{path} and {paths[0]} were trained on different {what}: "
                "an ensemble's members must share their training identities"
            )
    return first


def combine_to_folder(
    parts: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str | None = None,
    command: str = "",
    overwrite: bool = False,
    translator_from: str | os.PathLike[str] | None = None,
) -> Manifest:
    """Load ``parts`` (verifying each), combine their members and write the ensemble to
    ``out`` atomically. Parts must embed alike (input size, normalisation, sketch handling,
    flip TTA) and have been trained on the same identities; evaluation figures and notes are
    not carried over (they described the parts, not the ensemble). ``translator_from``: a
    bundle whose translator the ensemble gets instead of the parts' (trained on the same
    identities, else refused)."""
    if len(parts) < 2:
        raise BundleError("combine needs at least two bundles")
    if Path(out).resolve() in {Path(p).resolve() for p in parts}:
        raise BundleError(f"{out} is one of the bundles being combined: write elsewhere")
    bundles = [load_bundle(p) for p in parts]
    paths = [str(b.path) for b in bundles]
    trained = [sorted(b.manifest.training.get("train_pids") or []) for b in bundles]
    train_pids = _common(trained, "identities (training.train_pids)", paths)
    ensemble = combine_bundles(bundles)
    if translator_from is not None:
        ensemble = _with_translator(ensemble, load_bundle(translator_from), train_pids)
    training: dict[str, Any] = {
        "command": command,
        "combined_from": [
            {"path": p, "name": b.name, "version": b.version, "training": b.manifest.training}
            for p, b in zip(paths, bundles, strict=True)
        ],
    }
    if train_pids:
        training["train_pids"] = train_pids
    if translator_from is not None:
        training["translator_from"] = str(translator_from)
    return resave(
        ensemble,
        out,
        overwrite=overwrite,
        name=name or ensemble.name,
        version=version or "+".join(b.version for b in bundles),
        training=training,
        evaluation={},
        notes=[],
    )


def _with_translator(ensemble: Bundle, source: Bundle, train_pids: list[int]) -> Bundle:
    """``ensemble`` with ``source``'s translator, which must have been trained on the
    ensemble's identities (a translator that saw other people would leak into evaluations)."""
    entry = source.manifest.translator
    if entry is None or source.generator is None or source.translator is None:
        raise BundleError(f"{source.path} has no translator to carry over")
    theirs = sorted(entry.training.get("train_pids") or [])
    if not theirs or theirs != train_pids:
        raise BundleError(
            f"the translator of {source.path} was trained on other identities than the "
            "members (translator.training.train_pids): it cannot be carried over"
        )
    manifest = ensemble.manifest.model_copy(update={"translator": entry})
    return Bundle(
        ensemble.path,
        manifest,
        ensemble.members,
        ensemble.embedder,
        source.translator,
        source.generator,
    )
