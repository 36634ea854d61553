"""ONNX files held to the bundle's PyTorch networks: parity checks and :func:`with_onnx`.

:func:`with_onnx` is the way in where PyTorch runs: it verifies an export folder against the
bundle (:func:`app.ml.bundle.onnx_files.verify_onnx_dir`: source weights and sha256 of each
file) and then checks parity against the bundle's PyTorch networks on a fixed probe batch, so
what is served computes the same function as the verified weights. An int8 folder
(:mod:`app.ml.bundle.onnx_quantize`) cannot meet fp32 parity; it is held to the int8 checks of
:mod:`app.ml.bundle.onnx_int8` instead (quantised graphs, cosine to fp32 on its probe). The
exporter records these figures once; a bundle's prepared folders
(:mod:`app.ml.bundle.prepared`) are then served on their sha256 alone, without PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from app.errors import BundleError
from app.ml.bundle import onnx_int8
from app.ml.bundle.onnx_files import OnnxManifest, OnnxPrecision, verify_onnx_dir
from app.ml.bundle.onnx_runtime import OnnxEmbedder, OnnxTranslator, load_sessions
from app.ml.bundle.store import Bundle, manifest_embedder
from app.ml.infer.torch_embedder import Embedder, Translator

# Parity bounds, PyTorch fp32 vs ONNX Runtime: combined unit-length embeddings (measured
# ~1e-6 on the shipped ResNet-56) and generator outputs in [-1, 1] (1e-3 is 0.13 of a level).
EMBEDDING_ATOL = 1e-4
TRANSLATOR_ATOL = 1e-3
PROBE_IMAGES = 8


def _probe(size: tuple[int, int]) -> torch.Tensor:
    """Fixed uint8 probe images: noise and smooth gradients (seeded, same on every run)."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (PROBE_IMAGES // 2, 3, *size), generator=gen, dtype=torch.uint8)
    ramp = torch.linspace(0, 255, size[0] * size[1]).reshape(1, 1, *size)
    smooth = (ramp * torch.rand((PROBE_IMAGES // 2, 3, 1, 1), generator=gen)).to(torch.uint8)
    return torch.cat([noise, smooth])


def reference_embedder(bundle: Bundle) -> Embedder:
    """The bundle's PyTorch networks on the CPU in fp32: what every ONNX file answers to."""
    return manifest_embedder(bundle.manifest, bundle.members, "cpu", "fp32")


def check_translator_parity(bundle: Bundle, translator: OnnxTranslator) -> dict[str, float]:
    """Max abs difference between the ONNX translator and the bundle's PyTorch generator on
    the probe batch; raises :class:`BundleError` beyond :data:`TRANSLATOR_ATOL`."""
    m = bundle.manifest
    if bundle.generator is None or m.translator is None:
        return {}
    size = m.translator.spec.input_size
    x = _probe(size).float().div(127.5).sub(1.0)
    torch_out = Translator(bundle.generator, size, device="cpu").generate(x)
    tdiff = float((translator.generate(x) - torch_out).abs().max())
    if tdiff > TRANSLATOR_ATOL:
        raise BundleError(
            f"ONNX translator output differs from PyTorch by {tdiff:.2e} (> {TRANSLATOR_ATOL:.0e})"
        )
    return {"translator_max_abs": tdiff}


def check_parity(
    bundle: Bundle, embedder: OnnxEmbedder, translator: OnnxTranslator | None
) -> dict[str, float]:
    """Max abs differences between ONNX Runtime (fp32) and the bundle's PyTorch fp32
    networks on the probe batch; raises :class:`BundleError` beyond :data:`EMBEDDING_ATOL` /
    :data:`TRANSLATOR_ATOL`."""
    probe = _probe(bundle.manifest.input_size)
    want = reference_embedder(bundle).embed_tensor(probe)
    diff = float((embedder.embed_tensor(probe) - want).abs().max())
    result = {"embedding_max_abs": diff}
    if diff > EMBEDDING_ATOL:
        raise BundleError(
            f"ONNX embeddings differ from PyTorch by {diff:.2e} (> {EMBEDDING_ATOL:.0e})"
        )
    if translator is not None:
        result.update(check_translator_parity(bundle, translator))
    return result


def check_int8(
    bundle: Bundle, folder: Path, record: OnnxManifest, embedder: OnnxEmbedder
) -> dict[str, float]:
    """The int8 checks of :mod:`app.ml.bundle.onnx_int8` on a verified int8 folder: every
    member graph quantised, the folder's probe within the int8 bounds of PyTorch fp32."""
    return onnx_int8.check_int8(folder, record, embedder, reference_embedder(bundle))


def with_onnx(
    bundle: Bundle, onnx_dir: str | Path, precision: OnnxPrecision | None = None
) -> Bundle:
    """``bundle`` with its embedder and translator run by ONNX Runtime from ``onnx_dir``,
    after checking the files against the bundle and the outputs against its PyTorch
    networks: fp32 folders to :data:`EMBEDDING_ATOL`, int8 folders (``precision`` in their
    record, ``inference`` then says int8) by :func:`check_int8`. ``precision`` given: the
    folder must hold that precision."""

    folder = Path(onnx_dir)
    record = verify_onnx_dir(folder, bundle.manifest, precision)
    embedder, translator = load_sessions(folder, record, bundle.manifest, torch.get_num_threads())
    if record.precision == "int8":
        check_int8(bundle, folder, record, embedder)
        if translator is not None:
            check_translator_parity(bundle, translator)
    else:
        check_parity(bundle, embedder, translator)
    if bundle.translator is not None and translator is None:
        raise BundleError(f"{folder}: the bundle has a translator but the export does not")
    return Bundle(
        bundle.path, bundle.manifest, bundle.members, embedder, translator, bundle.generator
    )
