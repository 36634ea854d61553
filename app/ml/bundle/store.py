"""Model bundles: a folder with ``manifest.json`` and plain state-dict weight files.

A bundle holds one or more ResNet-CIFAR ensemble members (``<name>.pt``) and optionally a
sketch -> photo generator (``translator.pt``). The manifest records each file's
architecture and sha256; :func:`load_bundle` verifies both, so a corrupt or inconsistent
bundle fails with :class:`app.errors.BundleError` naming the file and the problem.

A loaded :class:`Bundle` carries an :class:`app.ml.infer.torch_embedder.Embedder` (the one
embedding path) and optionally an :class:`app.ml.infer.torch_embedder.Translator`, running at
the precision asked for; this module only stores, verifies and loads the networks.
:func:`app.ml.bundle.onnx_parity.with_onnx` swaps them for ONNX Runtime ones checked against
these. The manifest schema, reading it and :class:`Bundle` live in :mod:`app.ml.bundle.manifest`
(no PyTorch there) and are re-exported here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.errors import BundleError
from app.ml.bundle.manifest import (
    _NAME_RE,
    MANIFEST_FILE,
    TRANSLATOR_FILE,
    Bundle,
    Centering,
    Manifest,
    MemberEntry,
    TranslatorEntry,
    _fsync_write,
    _manifest_json,
    _replace_dir,
    _sha256,
    checked_file,
    read_manifest,
)
from app.ml.bundle.manifest import update_manifest as update_manifest
from app.ml.infer.precision import Precision
from app.ml.infer.query_views import QueryView
from app.ml.infer.torch_embedder import Embedder, Translator
from app.ml.models.cyclegan import GeneratorSpec, build_generator
from app.ml.models.resnet_cifar import MemberSpec, build_member, count_parameters
from app.ml.transforms import DEFAULT_MEAN, DEFAULT_STD

_STRIP_PREFIXES = ("module.", "_orig_mod.")


# --------------------------------------------------------------------------- manifest


def _plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the state dict without ``module.``/``_orig_mod.`` prefixes."""
    state: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        for prefix in _STRIP_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value.detach().to("cpu").clone().contiguous()
    return state


def _unwrap(module: nn.Module) -> nn.Module:
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(module, wrappers):
        module = module.module
    inner = getattr(module, "_orig_mod", None)  # torch.compile
    return inner if isinstance(inner, nn.Module) else module


def _check_state(what: str, fresh: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` strictly into ``fresh``; on mismatch raise a short BundleError."""
    own = fresh.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches, file vs architecture", shapes),
        )
        if items
    ]
    if problems:
        raise BundleError(f"{what}: weights do not match the architecture: {'; '.join(problems)}")
    try:
        fresh.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise BundleError(f"{what}: weights do not match the architecture: {detail[:400]}") from exc


# --------------------------------------------------------------------------- saving


def save_bundle(
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    members: Sequence[tuple[str, MemberSpec, nn.Module, dict[str, Any]]],
    translator: tuple[GeneratorSpec, nn.Module, dict[str, Any]] | None = None,
    input_size: tuple[int, int] = (64, 32),
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    sketch_grey: bool = True,
    tta_flip: bool = True,
    photo_tta_flip: bool | None = None,
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    query_view: QueryView | None = None,
    translation_weight: float = 0.5,
    member_weights: Sequence[float] | None = None,
    centering: Centering | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Write a bundle folder atomically and return its manifest.

    Each member is ``(name, spec, module, training_info)``; its weights go to ``<name>.pt``
    as a plain dict of CPU tensors after checking they load strictly into ``spec``'s
    architecture. Files are written to a temporary folder beside ``out_dir`` that is then
    renamed, so a reader never sees a half-written bundle. An existing non-empty
    ``out_dir`` is replaced only with ``overwrite=True``.
    """
    out = Path(out_dir)
    if not members:
        raise BundleError("a bundle needs at least one member")
    names = [m[0] for m in members]
    for member_name in names:
        if not _NAME_RE.match(member_name) or member_name == "translator":
            raise BundleError(
                f"member name {member_name!r} must be a plain file stem (letters, digits, _.-)"
            )
    if len(set(names)) != len(names):
        raise BundleError(f"member names must be unique, got {names}")
    size = (int(input_size[0]), int(input_size[1]))
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BundleError(f"{out} already exists; pass overwrite=True to replace it")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        entries = []
        for member_name, spec, module, info in members:
            if tuple(spec.input_size) != size:
                raise BundleError(
                    f"member {member_name!r}: spec input_size {spec.input_size} differs "
                    f"from the bundle input_size {size}"
                )
            state = _plain_state_dict(_unwrap(module))
            fresh = build_member(spec)
            _check_state(f"member {member_name!r}", fresh, state)
            file_name = f"{member_name}.pt"
            torch.save(state, tmp / file_name)
            entries.append(
                MemberEntry(
                    name=member_name,
                    spec=spec,
                    weights=file_name,
                    sha256=_sha256(tmp / file_name),
                    parameters=count_parameters(fresh),
                    embedding_parameters=count_parameters(fresh)
                    - count_parameters(fresh.classifier),
                    training=dict(info or {}),
                )
            )
        translator_entry = None
        if translator is not None:
            gen_spec, generator, info = translator
            state = _plain_state_dict(_unwrap(generator))
            fresh_gen = build_generator(gen_spec)
            _check_state("translator", fresh_gen, state)
            torch.save(state, tmp / TRANSLATOR_FILE)
            translator_entry = TranslatorEntry(
                spec=gen_spec,
                weights=TRANSLATOR_FILE,
                sha256=_sha256(tmp / TRANSLATOR_FILE),
                parameters=count_parameters(fresh_gen),
                training=dict(info or {}),
            )
        manifest = Manifest(
            name=name,
            version=version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            input_size=size,
            mean=_triple("mean", mean),
            std=_triple("std", std),
            sketch_grey=sketch_grey,
            tta_flip=tta_flip,
            photo_tta_flip=photo_tta_flip,
            members=entries,
            translator=translator_entry,
            query_view=query_view,
            translation_weight=translation_weight,
            member_weights=None if member_weights is None else list(member_weights),
            centering=centering,
            training=dict(training or {}),
            evaluation=dict(evaluation or {}),
            notes=list(notes or []),
        )
        _fsync_write(tmp / MANIFEST_FILE, _manifest_json(manifest))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _triple(what: str, values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise BundleError(f"{what} needs 3 values (R, G, B), got {list(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))


# --------------------------------------------------------------------------- loading


def _load_weights(root: Path, file_name: str, expected_sha: str) -> dict[str, torch.Tensor]:
    path = checked_file(root, file_name, expected_sha)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BundleError(f"{path}: cannot read weights ({exc})") from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BundleError(f"{path}: expected a plain state dict of tensors")
    return state


def load_bundle(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
) -> Bundle:
    """Load and verify a bundle; any problem raises :class:`BundleError`.

    ``precision`` (fp32, bf16 or auto, :mod:`app.ml.infer.precision`) is how the embedder and the
    translator run; the weights are the same either way.
    """
    root = Path(path)
    manifest = read_manifest(root)
    if manifest.combine != "concat-l2":  # pragma: no cover - guarded by the Literal
        raise BundleError(f"{root / MANIFEST_FILE}: unknown combine {manifest.combine!r}")
    members: list[nn.Module] = []
    for entry in manifest.members:
        if tuple(entry.spec.input_size) != tuple(manifest.input_size):
            raise BundleError(
                f"{root / MANIFEST_FILE}: member {entry.name!r} input_size "
                f"{entry.spec.input_size} differs from the bundle's {manifest.input_size}"
            )
        state = _load_weights(root, entry.weights, entry.sha256)
        model = build_member(entry.spec)
        _check_state(f"{root / entry.weights} (member {entry.name!r})", model, state)
        if count_parameters(model) != entry.parameters:
            raise BundleError(
                f"{root / entry.weights}: {count_parameters(model)} parameters, "
                f"manifest says {entry.parameters}"
            )
        members.append(model.eval())
    translator = None
    generator = None
    if manifest.translator is not None:
        entry_t = manifest.translator
        state = _load_weights(root, entry_t.weights, entry_t.sha256)
        generator = build_generator(entry_t.spec).eval()
        _check_state(f"{root / entry_t.weights} (translator)", generator, state)
        translator = Translator(
            generator, entry_t.spec.input_size, device=device, precision=precision
        )
    embedder = manifest_embedder(manifest, members, device, precision)
    return Bundle(root, manifest, members, embedder, translator, generator)


def manifest_embedder(
    manifest: Manifest,
    members: list[nn.Module],
    device: str | torch.device,
    precision: Precision,
) -> Embedder:
    """The embedder of ``members`` with the manifest's input size, normalisation, sketch
    handling and flip-TTA."""
    return Embedder(
        members,
        manifest.input_size,
        manifest.mean,
        manifest.std,
        sketch_grey=manifest.sketch_grey,
        tta_flip=manifest.tta_flip,
        photo_flip=manifest.photo_tta_flip,
        member_weights=manifest.member_weights,
        centering=manifest.centering_means(),
        device=device,
        precision=precision,
    )


def combine_bundles(bundles: Sequence[Bundle], device: str | torch.device = "cpu") -> Bundle:
    """One ensemble of the members of several loaded bundles (e.g. a ResNet-56 and a
    ResNet-110 trained in separate runs on the same identities).

    The bundles must embed alike: same input size, normalisation, sketch handling and
    flip-TTA. A member whose name an earlier bundle already uses is renamed ``NAME-i`` (``i``
    its bundle's position), so two runs of one architecture can be combined. The translator is
    the first bundle's that has one.
    The result lives in memory (its ``path`` is the first bundle's); nothing is written.
    """
    if not bundles:
        raise BundleError("combine_bundles needs at least one bundle")
    first = bundles[0].manifest
    alike = {"input_size", "mean", "std", "sketch_grey", "tta_flip", "photo_tta_flip", "combine"}
    want = first.model_dump(include=alike)
    for other in bundles[1:]:
        got = other.manifest.model_dump(include=alike)
        differ = sorted(k for k in alike if got[k] != want[k])
        if differ:
            raise BundleError(
                f"{other.path} and {bundles[0].path} differ in {', '.join(differ)}: "
                "they cannot be combined into one ensemble"
            )
    entries = []
    seen: set[str] = set()
    for i, b in enumerate(bundles):
        for entry in b.manifest.members:
            name = entry.name if entry.name not in seen else f"{entry.name}-{i}"
            if name in seen:
                raise BundleError(f"member name {name!r} occurs twice; cannot combine")
            seen.add(name)
            entries.append(entry.model_copy(update={"name": name}))
    members = [model for b in bundles for model in b.members]
    translator = next((b.translator for b in bundles if b.translator is not None), None)
    generator = next((b.generator for b in bundles if b.translator is not None), None)
    manifest = first.model_copy(
        update={
            "name": "+".join(b.name for b in bundles),
            "members": entries,
            "member_weights": None,  # a new ensemble: equal shares until annotated
            "centering": None,  # and no modality means until `model center`
            "translator": next(
                (b.manifest.translator for b in bundles if b.manifest.translator), None
            ),
        }
    )
    precision = bundles[0].embedder.precision  # int8 graphs are per bundle: combine in fp32
    embedder = manifest_embedder(
        manifest, members, device, "fp32" if precision == "int8" else precision
    )
    return Bundle(bundles[0].path, manifest, members, embedder, translator, generator)


def resave(
    bundle: Bundle, bundle_dir: str | os.PathLike[str], *, overwrite: bool = True, **changes: Any
) -> Manifest:
    """Write ``bundle`` (loaded, or combined in memory) to ``bundle_dir`` with some fields
    changed (e.g. a new translator)."""
    m = bundle.manifest
    members = [
        (e.name, e.spec, model, e.training)
        for e, model in zip(m.members, bundle.members, strict=True)
    ]
    translator = None
    if m.translator is not None and bundle.generator is not None:
        translator = (m.translator.spec, bundle.generator, m.translator.training)
    kwargs: dict[str, Any] = {
        "name": m.name,
        "version": m.version,
        "members": members,
        "translator": translator,
        "input_size": m.input_size,
        "mean": m.mean,
        "std": m.std,
        "sketch_grey": m.sketch_grey,
        "tta_flip": m.tta_flip,
        "photo_tta_flip": m.photo_tta_flip,
        "training": m.training,
        "evaluation": m.evaluation,
        "notes": m.notes,
        "query_view": m.query_view,
        "translation_weight": m.translation_weight,
        "member_weights": m.member_weights,
        "centering": m.centering,
    }
    kwargs.update(changes)
    return save_bundle(bundle_dir, overwrite=overwrite, **kwargs)
