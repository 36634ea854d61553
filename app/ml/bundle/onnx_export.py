"""Export a bundle's networks to ONNX, with a record that ties each file to its source.

``export_onnx(bundle, OUT)`` writes ``<member>.onnx`` per ensemble member (the raw embedding:
what :func:`app.ml.infer.torch_embedder.member_embedding` returns), ``translator.onnx`` when the
bundle has a generator, and ``onnx.json``: each file's sha256, the sha256 of the bundle weights
it was exported from, the opset, and the parity measured right after export against the PyTorch
networks (:func:`app.ml.bundle.onnx_parity.check_parity`). Preprocessing, flip test-time
augmentation and normalisation stay outside the graphs, in the code that both backends share
(:class:`app.ml.infer.embedder.BaseEmbedder`).

The exporter is PyTorch's TorchScript-based one (``dynamo=False``): on this project's 2-core
CPU the torch.export-based exporter took 76-200 s for a ResNet-8 against 6.5 s, and both
give the same graph for these networks. Correctness does not rest on the exporter: every
export is checked for parity against the verified PyTorch weights, and so is every load of an
export folder (:func:`app.ml.bundle.onnx_parity.with_onnx`) except a bundle's prepared files,
which the sha256s recorded in its manifest tie to this check (:mod:`app.ml.bundle.prepared`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

from app.errors import BundleError
from app.ml.bundle.onnx_files import (
    ONNX_MANIFEST,
    OPSET,
    TRANSLATOR_ONNX,
    OnnxFile,
    OnnxManifest,
    OnnxMember,
    _record_json,
)
from app.ml.bundle.onnx_parity import check_parity, with_onnx
from app.ml.bundle.onnx_runtime import load_sessions
from app.ml.bundle.store import Bundle, _fsync_write, _replace_dir, _sha256
from app.ml.infer.torch_embedder import member_embedding
from app.ml.models.resnet_cifar import SpatialPyramidPool

log = logging.getLogger(__name__)


class _Embed(nn.Module):
    """A member's raw embedding as a module's forward (what the graph holds)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return member_embedding(self.model, x)


class _SlicedPyramidPool(nn.Module):
    """:class:`SpatialPyramidPool` as fixed slices: the same windows as
    ``adaptive_avg_pool2d`` (start ``floor(i*H/l)``, end ``ceil((i+1)*H/l)``), which the
    exporter cannot convert once the batch dimension is dynamic."""

    def __init__(self, levels: tuple[int, ...], height: int, width: int) -> None:
        super().__init__()
        self.windows = [
            [
                (
                    i * height // lv,
                    -(-(i + 1) * height // lv),
                    j * width // lv,
                    -(-(j + 1) * width // lv),
                )
                for i in range(lv)
                for j in range(lv)
            ]
            for lv in levels
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for cells in self.windows:
            pooled = [x[:, :, h0:h1, w0:w1].mean(dim=(2, 3)) for h0, h1, w0, w1 in cells]
            parts.append(torch.stack(pooled, 2).flatten(1))
        return torch.cat(parts, 1)


def _exportable(module: nn.Module, input_size: tuple[int, int]) -> nn.Module:
    """A CPU, fp32, contiguous, eval-mode copy of ``module`` with pyramid pooling sliced."""
    copy = deepcopy(module).to("cpu", torch.float32).to(memory_format=torch.contiguous_format)
    copy.eval()
    pools = {n: m for n, m in copy.named_modules() if isinstance(m, SpatialPyramidPool)}
    if pools:
        shapes: dict[str, tuple[int, int]] = {}
        hooks = [
            m.register_forward_pre_hook(
                lambda _m, args, n=n: shapes.__setitem__(n, tuple(args[0].shape[2:]))
            )
            for n, m in pools.items()
        ]
        with torch.no_grad():
            copy(torch.zeros((1, 3, *input_size)))
        for hook in hooks:
            hook.remove()
        for name, pool in pools.items():
            parent = copy.get_submodule(name.rpartition(".")[0])
            setattr(parent, name.rpartition(".")[2], _SlicedPyramidPool(pool.levels, *shapes[name]))
    return copy


def _export(module: nn.Module, input_size: tuple[int, int], path: Path) -> None:
    """Trace an exportable copy of ``module`` (whatever device, layout and mode the original
    serves in) into ``path`` with a dynamic batch dimension."""
    example = torch.zeros((2, 3, *input_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            _exportable(module, input_size),
            (example,),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )


def export_onnx(
    bundle: Bundle, out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> OnnxManifest:
    """Export ``bundle``'s members (and generator) to ``out_dir``, check parity, write
    ``onnx.json``. The folder appears whole or not at all; a parity failure raises
    :class:`BundleError` and leaves nothing behind."""

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BundleError(f"{out} already exists and is not empty; choose another folder")
    manifest = bundle.manifest
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        members: list[OnnxMember] = []
        for entry, model in zip(manifest.members, bundle.members, strict=True):
            path = tmp / f"{entry.name}.onnx"
            _export(_Embed(model), manifest.input_size, path)
            members.append(
                OnnxMember(
                    name=entry.name,
                    file=path.name,
                    sha256=_sha256(path),
                    source_sha256=entry.sha256,
                    dim=int(bundle.embedder.member_dims[len(members)]),
                )
            )
        translator = None
        if manifest.translator is not None and bundle.generator is not None:
            path = tmp / TRANSLATOR_ONNX
            _export(bundle.generator, manifest.translator.spec.input_size, path)
            translator = OnnxFile(
                file=path.name, sha256=_sha256(path), source_sha256=manifest.translator.sha256
            )
        record = OnnxManifest(
            bundle=manifest.name,
            version=manifest.version,
            opset=OPSET,
            torch=torch.__version__,
            members=members,
            translator=translator,
            parity={},
        )
        sessions = load_sessions(tmp, record, manifest, torch.get_num_threads())
        record.parity = check_parity(bundle, *sessions)
        _fsync_write(tmp / ONNX_MANIFEST, _record_json(record))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def with_fp32_export(bundle: Bundle, folder: str | os.PathLike[str]) -> Bundle:
    """``bundle`` running the ONNX Runtime fp32 graphs of its export in ``folder`` (a cache):
    reused when it passes :func:`with_onnx`'s checks, exported again when missing, stale or
    altered. The service's unprepared bundles and ``evaluate --backend onnx`` both go here."""
    out = Path(folder)
    if out.exists():
        try:
            return with_onnx(bundle, out, "fp32")
        except BundleError as exc:
            log.warning("exporting the model to ONNX again: %s", exc)
    export_logged(bundle, out)
    return with_onnx(bundle, out, "fp32")


def export_logged(bundle: Bundle, folder: Path) -> OnnxManifest:
    """:func:`export_onnx` into ``folder`` (replacing what is there), logging how long it took:
    the service exports at start when a bundle carries no prepared files."""
    start = time.perf_counter()
    record = export_onnx(bundle, folder, overwrite=True)
    log.info(
        "exported the model to ONNX in %.1f s into %s (parity %s)",
        time.perf_counter() - start,
        folder,
        record.parity,
    )
    return record
