"""A bundle's manifest and files, without PyTorch: the manifest schema, reading and updating
it, checking the weight files' sha256, and :class:`Bundle` (a verified, loaded bundle).

:mod:`app.ml.bundle.store` saves and loads the PyTorch networks (and re-exports these names);
:mod:`app.ml.bundle.prepared` serves a bundle from its prepared ONNX files with this module
alone, so the service runs where PyTorch is not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import BundleError
from app.ml.infer.embedder import BaseEmbedder, BaseTranslator, member_shares
from app.ml.infer.query_views import QueryView, bundle_view
from app.ml.models.specs import GeneratorSpec, MemberSpec
from app.ml.transforms import DEFAULT_MEAN, DEFAULT_STD

if TYPE_CHECKING:
    from torch import nn

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST_FILE = "manifest.json"
TRANSLATOR_FILE = "translator.pt"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class MemberEntry(BaseModel):
    """One ensemble member: its architecture, weights file and provenance."""

    model_config = ConfigDict(extra="forbid")

    name: str
    spec: MemberSpec
    weights: str
    sha256: str
    parameters: int
    embedding_parameters: int
    training: dict[str, Any] = Field(default_factory=dict)


class TranslatorEntry(BaseModel):
    """The sketch -> photo generator: architecture, weights file and provenance."""

    model_config = ConfigDict(extra="forbid")

    spec: GeneratorSpec
    weights: str
    sha256: str
    parameters: int
    training: dict[str, Any] = Field(default_factory=dict)


class Centering(BaseModel):
    """Each member's mean unit embedding of photos and of sketches (concatenated in member
    order), taken from the training identities: the service subtracts the mean of an image's
    kind from each member's embedding before combining them (app.ml.infer.embedder), which
    removes what all photos, or all sketches, have in common. See docs/results.md,
    "Modality centering"; made by `sketchreid model center`."""

    model_config = ConfigDict(extra="forbid")

    photo: list[float]
    sketch: list[float]
    source: str
    identities: int
    photos: int
    sketches: int


class Manifest(BaseModel):
    """Contents of ``manifest.json``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str
    version: str
    created_at: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    sketch_grey: bool = True
    tta_flip: bool = True
    # Flip TTA for photos (gallery crops, and a query's translation, embedded as a photo) when
    # it differs from ``tta_flip`` (which then covers sketches only); None: as ``tta_flip``.
    # Dropping it halves a crop's cost (docs/results.md, "Flip TTA for the gallery").
    photo_tta_flip: bool | None = None
    combine: Literal["concat-l2"] = "concat-l2"
    members: list[MemberEntry] = Field(min_length=1)
    # Each member's share of the ensemble's cosine (normalised to sum 1, one per member);
    # None: equal shares (bundles before the field). Chosen on the protocol:
    # scripts/member_weight_sweep.py, `sketchreid model annotate --member-weights`.
    member_weights: list[float] | None = None
    # Modality means subtracted from each member's embedding (None: none, bundles before it).
    centering: Centering | None = None
    translator: TranslatorEntry | None = None
    # How the service embeds a query sketch by default (app.ml.infer.query_views); None: as
    # translated when there is a translator, as drawn when not (bundles before the field).
    query_view: Literal["sketch", "translated", "fused"] | None = None
    # The translation's weight in a fused query: fuse_views(sketch, translation, (1 - w, w)).
    translation_weight: float = Field(0.5, gt=0.0, lt=1.0)
    training: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    # The prepared ONNX folders the bundle carries (app.ml.bundle.prepared): precision ->
    # sha256 of the folder's onnx.json, the folder being onnx/<precision>/ in the bundle.
    onnx: dict[Literal["fp32", "int8"], str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_vector_fields(self) -> Manifest:
        weights = self.member_weights
        if weights is not None:
            if len(weights) != len(self.members):
                raise ValueError(
                    f"member_weights has {len(weights)} weights for {len(self.members)} members"
                )
            if not all(w > 0 for w in weights):
                raise ValueError(f"member_weights must all be positive, got {weights}")
        if self.centering is not None:
            dim = sum(m.spec.fc_dim for m in self.members)
            c = self.centering
            if len(c.photo) != dim or len(c.sketch) != dim:
                raise ValueError(
                    f"centering has {len(c.photo)} photo and {len(c.sketch)} sketch values "
                    f"for a {dim}-d embedding"
                )
        return self

    def centering_means(self) -> tuple[list[float], list[float]] | None:
        """(photo mean, sketch mean) for the embedder, or None."""
        c = self.centering
        return None if c is None else (c.photo, c.sketch)

    def shares(self) -> list[float] | None:
        """The members' normalised weights (sum 1), or None for equal shares."""
        return member_shares(self.member_weights)


def vector_shaping(manifest: Manifest) -> dict[str, Any]:
    """What shapes a bundle's vectors: its weights and how images are embedded (the service's
    embedding key and the evaluation's distractor cache are digests of it)."""
    shaping: dict[str, Any] = {
        "members": [m.sha256 for m in manifest.members],
        "input_size": list(manifest.input_size),
        "mean": list(manifest.mean),
        "std": list(manifest.std),
        "tta_flip": manifest.tta_flip,
        "combine": manifest.combine,
    }
    if manifest.photo_tta_flip is not None:  # absent from older keys: they stay valid
        shaping["photo_tta_flip"] = manifest.photo_tta_flip
    if manifest.centering is not None:  # the means, not where they came from
        means = [manifest.centering.photo, manifest.centering.sketch]
        shaping["centering"] = hashlib.sha256(json.dumps(means).encode()).hexdigest()[:16]
    shares = manifest.shares()
    if shares is not None and len(set(shares)) > 1:  # equal shares embed as None does
        shaping["member_weights"] = [round(w, 6) for w in shares]
    return shaping


def _manifest_json(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_write(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``, moving an existing ``out`` aside first. ``tmp`` (from
    ``mkdtemp``, owner-only) becomes readable by all, like the files in it: bundles are read by
    other users (a container's service user)."""
    tmp.chmod(0o755)
    backup = None
    if out.exists():
        backup = out.parent / f".{out.name}.old-{os.getpid()}-{threading.get_ident()}"
        os.replace(out, backup)
    try:
        os.replace(tmp, out)
    except BaseException:
        if backup is not None:
            os.replace(backup, out)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def read_manifest(bundle_dir: str | os.PathLike[str]) -> Manifest:
    """Parse and validate ``manifest.json`` (weights are not checked; see load_bundle)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"bundle folder {root} does not exist")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{path}: manifest file is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object")
    fmt = raw.get("format_version", FORMAT_VERSION)
    if fmt not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"{path}: format_version {fmt!r} is not supported "
            f"(this program reads {list(SUPPORTED_FORMAT_VERSIONS)})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise BundleError(f"{path}: invalid manifest: {problems}") from exc


def update_manifest(bundle_dir: str | os.PathLike[str], **fields: Any) -> Manifest:
    """Replace top-level manifest fields (e.g. ``evaluation=...``) and rewrite it atomically.

    ``members``, ``translator`` and ``format_version`` describe the weight files and cannot
    be changed this way.
    """
    frozen = {"members", "translator", "format_version"} & set(fields)
    if frozen:
        raise ValueError(f"update_manifest cannot change {sorted(frozen)}")
    root = Path(bundle_dir)
    current = read_manifest(root)
    data = current.model_dump(mode="json")
    data.update(fields)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{root / MANIFEST_FILE}: invalid update: {exc.errors()[:3]}") from exc
    tmp = root / f".{MANIFEST_FILE}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        _fsync_write(tmp, _manifest_json(manifest))
        os.replace(tmp, root / MANIFEST_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def checked_file(root: Path, file_name: str, expected_sha: str) -> Path:
    """``root / file_name`` after checking that it is a plain file name, exists and has the
    sha256 the manifest records; raises :class:`BundleError` naming the problem."""
    if Path(file_name).name != file_name or file_name in ("", ".", ".."):
        raise BundleError(f"{root / MANIFEST_FILE}: weights name {file_name!r} is not a plain file")
    path = root / file_name
    if not path.is_file():
        raise BundleError(f"{path}: weights file is missing")
    actual = _sha256(path)
    if actual != expected_sha.lower():
        raise BundleError(
            f"{path}: sha256 mismatch (manifest {expected_sha[:12]}…, file {actual[:12]}…); "
            "the file is corrupt or was replaced"
        )
    return path


def check_weight_files(root: Path, manifest: Manifest) -> None:
    """Every weight file the manifest lists is present with its recorded sha256 (the files
    are not read as networks: :func:`app.ml.bundle.store.load_bundle` does that)."""
    for entry in manifest.members:
        if tuple(entry.spec.input_size) != tuple(manifest.input_size):
            raise BundleError(
                f"{root / MANIFEST_FILE}: member {entry.name!r} input_size "
                f"{entry.spec.input_size} differs from the bundle's {manifest.input_size}"
            )
        checked_file(root, entry.weights, entry.sha256)
    if manifest.translator is not None:
        checked_file(root, manifest.translator.weights, manifest.translator.sha256)


class Bundle:
    """A verified, loaded bundle: manifest, the PyTorch networks (``members``, ``generator``;
    empty and None when it was loaded for serving from its prepared ONNX files, without
    PyTorch) and what runs them (``embedder``, ``translator``: PyTorch, or ONNX Runtime after
    :func:`app.ml.bundle.onnx_parity.with_onnx` or :func:`app.ml.bundle.prepared.load_prepared`)."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        members: list[nn.Module],
        embedder: BaseEmbedder,
        translator: BaseTranslator | None,
        generator: nn.Module | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.members = members
        self.generator = generator
        self.embedder = embedder
        self.translator = translator

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def view(self) -> QueryView:
        """How this bundle embeds a query sketch unless a request says otherwise."""
        return bundle_view(self.manifest.query_view, self.translator is not None)

    @property
    def inference(self) -> dict[str, str]:
        """How embeddings are computed: backend (torch/onnx) and effective precision."""
        return {"backend": self.embedder.backend, "precision": self.embedder.precision}

    def __repr__(self) -> str:
        return f"Bundle({self.name!r}, {self.version!r}, members={len(self.members)})"
