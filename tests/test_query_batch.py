"""One forward pass per search (issue 21): a fused query's sketch and translation, with their
mirror images, go through each member in one call, with the embeddings of the per-view path
(one call per view); a batch of sketches and photos is preprocessed image by image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml.infer.embedder import Modality, fuse_views
from app.ml.infer.query_views import embed_queries
from app.ml.infer.torch_embedder import Embedder, Translator
from app.ml.models.cyclegan import GeneratorSpec, build_generator
from app.ml.models.resnet_cifar import MemberSpec, build_member

torch.set_num_threads(1)

SIZE = (64, 32)


def picture(seed: int) -> Image.Image:
    """A coloured picture (grey conversion changes it)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize((32, 64), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    torch.manual_seed(0)
    spec = MemberSpec(arch="resnet8", num_classes=5, fc_dim=16, input_size=SIZE, bn_neck=True)
    members = [build_member(spec).eval(), build_member(spec).eval()]
    return Embedder(members, SIZE, tta_flip=True)


@pytest.fixture(scope="module")
def translator() -> Translator:
    torch.manual_seed(1)
    spec = GeneratorSpec(ngf=8, n_blocks=1, input_size=SIZE)
    return Translator(build_generator(spec).eval(), SIZE)


class CountingEmbed:
    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.calls: list[list[Modality]] = []

    def __call__(self, images: Sequence[Image.Image], kinds: Sequence[Modality]) -> np.ndarray:
        self.calls.append(list(kinds))
        return self.embedder.embed(images, modality=kinds)


def test_fused_queries_are_one_call_with_the_per_view_embeddings(
    embedder: Embedder, translator: Translator
) -> None:
    sketches = [picture(i) for i in range(3)]
    embed = CountingEmbed(embedder)
    got, translations = embed_queries(sketches, "fused", embed, translator.translate_batch, 0.3)

    # One call: the three sketches as sketches, then their three translations as photos.
    assert embed.calls == [["sketch"] * 3 + ["photo"] * 3]
    # The per-view path: one call per view, fused with the same weights.
    drawn = embedder.embed(sketches, modality="sketch")
    photos = embedder.embed(translator.translate_batch(sketches), modality="photo")
    want = fuse_views(drawn, photos, weights=(0.7, 0.3))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert len(translations) == 3
    # Each view matters: without either one the query is another vector.
    for alone in (drawn, photos):
        assert np.abs(got - alone).max() > 1e-2


@pytest.mark.parametrize(("view", "kind"), [("sketch", "sketch"), ("translated", "photo")])
def test_single_views_are_one_call_too(
    embedder: Embedder, translator: Translator, view: str, kind: Modality
) -> None:
    sketches = [picture(10 + i) for i in range(2)]
    embed = CountingEmbed(embedder)
    got, _ = embed_queries(sketches, view, embed, translator.translate_batch)  # type: ignore[arg-type]
    assert embed.calls == [[kind, kind]]
    source = sketches if view == "sketch" else translator.translate_batch(sketches)
    np.testing.assert_allclose(got, embedder.embed(source, modality=kind), rtol=0, atol=1e-5)


def test_a_mixed_batch_embeds_each_image_as_its_kind(embedder: Embedder) -> None:
    images = [picture(20 + i) for i in range(4)]
    kinds: list[Modality] = ["sketch", "photo", "photo", "sketch"]
    mixed = embedder.embed(images, modality=kinds)
    for image, kind, row in zip(images, kinds, mixed, strict=True):
        np.testing.assert_allclose(row, embedder.embed([image], modality=kind)[0], atol=1e-5)
    # The check means something: a coloured picture embeds otherwise as a (grey) sketch.
    assert np.abs(mixed[0] - embedder.embed([images[0]], modality="photo")[0]).max() > 1e-3
    with pytest.raises(ValueError, match="2 modalities for 4 images"):
        embedder.embed(images, modality=["photo", "sketch"])
    with pytest.raises(ValueError, match="modality must be"):
        embedder.embed(images[:1], modality=["drawing"])  # type: ignore[list-item]
