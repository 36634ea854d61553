"""The PyTorch side of the one inference path: :class:`Embedder` and :class:`Translator` run
a bundle's networks (or a training run's) with PyTorch, behind the numpy
:class:`~app.ml.infer.embedder.BaseEmbedder` / :class:`~app.ml.infer.embedder.BaseTranslator`
that also front ONNX Runtime (preprocessing, flip TTA and combining members are theirs).

Convolutions run on channels-last tensors, in fp32 or under bf16 autocast
(:mod:`app.ml.infer.precision`). :func:`member_embedding` is what a member contributes; the
ONNX export traces the same function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from app.ml.infer.embedder import Backend, BaseEmbedder, BaseTranslator
from app.ml.infer.precision import Precision, autocast_dtype
from app.ml.transforms import DEFAULT_MEAN, DEFAULT_STD


def member_embedding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A member's raw (unnormalised) embedding: ``model.embed(x)`` or the second output of
    ``model(x)`` (or its only output). ONNX export runs the same function."""
    embed = getattr(model, "embed", None)
    if callable(embed):
        return embed(x)
    out = model(x)
    return out[1] if isinstance(out, tuple) else out


def _resolve_device(models: Sequence[nn.Module], device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for model in models:
        for param in model.parameters():
            return param.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(models: Sequence[nn.Module]) -> Iterator[None]:
    """Eval mode for the block, each model's previous mode restored afterwards."""
    modes = [m.training for m in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


class _TorchRunner:
    """Runs networks on one device under inference mode, eval mode and the chosen precision."""

    def __init__(self, device: torch.device, precision: Precision) -> None:
        self.device = device
        self.autocast = autocast_dtype(device, precision)
        self.precision: Literal["bf16", "fp32"] = "bf16" if self.autocast else "fp32"

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device).to(memory_format=torch.channels_last)

    @contextlib.contextmanager
    def running(self, models: Sequence[nn.Module]) -> Iterator[None]:
        with torch.inference_mode(), _eval_mode(models):
            if self.autocast is None:
                yield
            else:
                with torch.autocast(self.device.type, dtype=self.autocast):
                    yield

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class Embedder(BaseEmbedder):
    """:class:`BaseEmbedder` running PyTorch members.

    Models are moved to ``device`` (``None``: keep them where they are, useful for
    evaluating training models) in channels-last layout. Forward passes run in eval mode
    under ``precision`` (see the module docstring); each model's previous train/eval mode is
    restored afterwards.
    """

    backend: Backend = "torch"

    def __init__(
        self,
        models: Sequence[nn.Module],
        input_size: tuple[int, int],
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
        *,
        sketch_grey: bool = True,
        tta_flip: bool = True,
        photo_flip: bool | None = None,
        member_weights: Sequence[float] | None = None,
        centering: tuple[Sequence[float], Sequence[float]] | None = None,
        device: str | torch.device | None = "cpu",
        precision: Precision = "fp32",
    ) -> None:
        if not models:
            raise ValueError("Embedder needs at least one model")
        self._runner = _TorchRunner(_resolve_device(models, device), precision)
        super().__init__(
            input_size,
            mean,
            std,
            sketch_grey=sketch_grey,
            tta_flip=tta_flip,
            photo_flip=photo_flip,
            member_weights=member_weights,
            centering=centering,
            device=self._runner.device,
        )
        self.precision = self._runner.precision
        self.models = [self._runner.prepare(m) for m in models]
        self.member_dims = [self._member_dim(m) for m in self.models]
        self.dim = sum(self.member_dims)

    def _member_dim(self, model: nn.Module) -> int:
        dim = getattr(model, "embedding_dim", None)
        if isinstance(dim, int):
            return dim
        probe = torch.zeros((1, 3, *self.input_size), device=self.device)
        return int(self._run([model], probe)[0].shape[1])

    def _run(self, models: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
        x = self._runner.input(x)
        with self._runner.running(models):
            return [member_embedding(model, x).float() for model in models]

    def intra_op_threads(self) -> int:
        return int(torch.get_num_threads())  # process-wide: INFERENCE_THREADS sets it at load

    def _raw_members(self, x: np.ndarray) -> list[np.ndarray]:
        out = self._run(self.models, torch.from_numpy(x).to(self.device))
        return [o.cpu().numpy() for o in out]


class Translator(BaseTranslator):
    """:class:`BaseTranslator` running a PyTorch CycleGAN generator under ``precision``.

    The generator runs in eval mode and its previous mode is restored; ``device=None``
    keeps it where it is.
    """

    backend: Backend = "torch"

    def __init__(
        self,
        generator: nn.Module,
        input_size: tuple[int, int],
        device: str | torch.device | None = "cpu",
        precision: Precision = "fp32",
    ) -> None:
        self._runner = _TorchRunner(_resolve_device([generator], device), precision)
        super().__init__(input_size, self._runner.device)
        self.precision = self._runner.precision
        self.generator = self._runner.prepare(generator)

    def _generate(self, x: np.ndarray) -> np.ndarray:
        t = self._runner.input(torch.from_numpy(x).to(self.device))
        with self._runner.running([self.generator]):
            return self.generator(t).float().cpu().numpy()
