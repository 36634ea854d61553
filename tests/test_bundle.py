"""Tests for app.ml.bundle.store: saving, verified loading, ensemble embedding, translation."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from app.errors import BundleError
from app.ml.bundle.store import Bundle, load_bundle, save_bundle, update_manifest
from app.ml.infer.torch_embedder import Embedder, Translator
from app.ml.models.cyclegan import GeneratorSpec, build_generator
from app.ml.models.resnet_cifar import MemberSpec, build_member

torch.set_num_threads(1)

SPEC_A = MemberSpec(arch="resnet8", num_classes=5, fc_dim=16)
SPEC_B = MemberSpec(arch="resnet8", num_classes=5, fc_dim=24, spp=True, bn_neck=True)
GEN_SPEC = GeneratorSpec(ngf=4, n_blocks=1, input_size=(64, 32))


def _randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def nets() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "a": _randomise_bn(build_member(SPEC_A)).eval(),
        "b": _randomise_bn(build_member(SPEC_B)).eval(),
        "gen": build_generator(GEN_SPEC).eval(),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, nets: dict[str, torch.nn.Module]) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "demo"
    save_bundle(
        out,
        name="demo",
        version="1.0.0",
        members=[("a", SPEC_A, nets["a"], {"epochs": 1}), ("b", SPEC_B, nets["b"], {})],
        translator=(GEN_SPEC, nets["gen"], {"epochs": 2}),
        training={"seed": 0},
        notes=["test bundle"],
    )
    return out


@pytest.fixture()
def bundle_copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (80, 40, 3), dtype=np.uint8)) for _ in range(5)]


@pytest.fixture(scope="module")
def loaded(saved: Path) -> Bundle:
    return load_bundle(saved)


def test_saved_layout(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "a.pt",
        "b.pt",
        "manifest.json",
        "translator.pt",
    ]
    assert [p.name for p in saved.parent.iterdir()] == ["demo"]  # no temp folders left
    state = torch.load(saved / "a.pt", weights_only=True)
    assert isinstance(state, dict) and "fc.weight" in state and "classifier.weight" in state
    assert all(v.device.type == "cpu" for v in state.values())
    raw = json.loads((saved / "manifest.json").read_text())
    assert raw["format_version"] == 1 and raw["combine"] == "concat-l2"
    assert raw["members"][0]["weights"] == "a.pt" and len(raw["members"][0]["sha256"]) == 64


def test_round_trip_embeddings(loaded: Bundle, nets: dict, images: list[Image.Image]) -> None:
    manifest = loaded.manifest
    assert (loaded.name, loaded.version) == ("demo", "1.0.0")
    assert manifest.input_size == (64, 32) and manifest.sketch_grey and manifest.tta_flip
    assert manifest.members[0].training == {"epochs": 1} and manifest.notes == ["test bundle"]
    a = manifest.members[0]
    assert a.parameters - a.embedding_parameters == 16 * 5 + 5
    original = Embedder([nets["a"], nets["b"]], (64, 32))
    assert loaded.embedder.dim == original.dim == 40
    for modality in ("photo", "sketch"):
        np.testing.assert_array_equal(
            loaded.embedder.embed(images, modality), original.embed(images, modality)
        )
    assert len(loaded.members) == 2 and not loaded.members[0].training
    again = load_bundle(loaded.path)
    assert again.manifest == manifest


def test_embeddings_unit_norm_shape_and_batching(loaded: Bundle, images: list[Image.Image]) -> None:
    emb = loaded.embedder.embed(images)
    assert emb.dtype == np.float32 and emb.shape == (5, 40)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(loaded.embedder.embed(images, batch_size=2), emb, atol=1e-6)
    empty = loaded.embedder.embed([])
    assert empty.shape == (0, 40) and empty.dtype == np.float32
    with pytest.raises(ValueError):
        loaded.embedder.embed(images, "drawing")  # type: ignore[arg-type]


def test_flip_tta_and_grey_sketches(loaded: Bundle, images: list[Image.Image]) -> None:
    emb = loaded.embedder.embed(images[:2])
    flipped = loaded.embedder.embed([ImageOps.mirror(im) for im in images[:2]])
    np.testing.assert_allclose(flipped, emb, atol=1e-5)  # TTA makes it mirror-invariant
    colour = loaded.embedder.embed(images[:2], "sketch")
    grey = loaded.embedder.embed([im.convert("L") for im in images[:2]], "sketch")
    np.testing.assert_allclose(colour, grey, atol=1e-6)
    assert not np.allclose(colour, emb, atol=1e-3)


def test_ensemble_cosine_is_mean_of_member_cosines(nets: dict, images: list[Image.Image]) -> None:
    pair = images[:2]
    members = [nets["a"], nets["b"]]
    combined = Embedder(members, (64, 32), tta_flip=False).embed(pair)
    singles = [Embedder([m], (64, 32), tta_flip=False).embed(pair) for m in members]
    member_cos = [float(e[0] @ e[1]) for e in singles]
    assert float(combined[0] @ combined[1]) == pytest.approx(np.mean(member_cos), abs=1e-5)
    assert combined.shape == (2, 40)
    np.testing.assert_allclose(combined[:, :16] * np.sqrt(2), singles[0], atol=1e-5)


def test_embed_tensor_and_mode_restore(nets: dict, images: list[Image.Image]) -> None:
    model = build_member(SPEC_A).train()
    embedder = Embedder([model], (64, 32), device=None)
    out = embedder.embed_tensor(torch.zeros((3, 3, 64, 32), dtype=torch.uint8))
    assert out.shape == (3, 16) and model.training  # train mode restored
    assert embedder.embed_tensor(torch.zeros((0, 3, 64, 32), dtype=torch.uint8)).shape == (0, 16)
    with pytest.raises(ValueError):
        embedder.embed_tensor(torch.zeros((1, 3, 32, 32), dtype=torch.uint8))
    with pytest.raises(ValueError):
        embedder.embed_tensor(torch.zeros((1, 3, 64, 32)))


def test_thread_safety(loaded: Bundle, images: list[Image.Image]) -> None:
    expected = loaded.embedder.embed(images)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: loaded.embedder.embed(images, batch_size=2), range(8)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_translator(loaded: Bundle, images: list[Image.Image], nets: dict) -> None:
    translator = loaded.translator
    assert translator is not None
    out = translator.translate(images[0])
    assert out.mode == "RGB" and out.size == (32, 64)  # PIL size is (W, H)
    batch = translator.translate_batch(images[:3], batch_size=2)
    assert len(batch) == 3 and all(im.size == (32, 64) for im in batch)
    assert np.array_equal(np.asarray(batch[0]), np.asarray(out))
    direct = Translator(nets["gen"], (64, 32)).translate(images[0])
    assert np.array_equal(np.asarray(direct), np.asarray(out))
    assert translator.translate_batch([]) == []
    assert not translator.generator.training
    training_gen = build_generator(GEN_SPEC).train()
    Translator(training_gen, (64, 32), device=None).translate(images[0])
    assert training_gen.training  # mode restored


def test_checksum_corruption(bundle_copy: Path) -> None:
    path = bundle_copy / "b.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"b\.pt.*sha256"):
        load_bundle(bundle_copy)


def test_architecture_mismatch(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["members"][0]["spec"]["fc_dim"] = 32
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"a\.pt.*architecture"):
        load_bundle(bundle_copy)


def test_translator_architecture_mismatch(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["translator"]["spec"]["n_blocks"] = 2
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"translator\.pt.*architecture"):
        load_bundle(bundle_copy)


def test_missing_weights(bundle_copy: Path) -> None:
    (bundle_copy / "a.pt").unlink()
    with pytest.raises(BundleError, match=r"a\.pt.*missing"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"format_version": 99}', "format_version 99"),
        ('{"format_version": 1, "name": "x"}', "invalid manifest"),
    ],
)
def test_bad_manifest(bundle_copy: Path, text: str, pattern: str) -> None:
    (bundle_copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=rf"manifest\.json.*{pattern}"):
        load_bundle(bundle_copy)


def test_extra_manifest_key_and_path_escape(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    (bundle_copy / "manifest.json").write_text(json.dumps({**manifest, "colour": 1}))
    with pytest.raises(BundleError, match="colour"):
        load_bundle(bundle_copy)
    manifest["members"][0]["weights"] = "../a.pt"
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="plain file"):
        load_bundle(bundle_copy)


def test_missing_folder_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match=r"manifest\.json.*missing"):
        load_bundle(tmp_path)


def test_save_refuses_bad_input_and_leaves_nothing(tmp_path: Path, nets: dict) -> None:
    out = tmp_path / "b"
    with pytest.raises(BundleError, match="architecture"):
        save_bundle(out, name="x", version="1", members=[("a", SPEC_B, nets["a"], {})])
    with pytest.raises(BundleError, match="unique"):
        save_bundle(out, name="x", version="1", members=[("a", SPEC_A, nets["a"], {})] * 2)
    with pytest.raises(BundleError, match="plain file stem"):
        save_bundle(out, name="x", version="1", members=[("../a", SPEC_A, nets["a"], {})])
    assert list(tmp_path.iterdir()) == []


def test_overwrite_and_wrapped_modules(tmp_path: Path, nets: dict) -> None:
    out = tmp_path / "b"
    wrapped = torch.nn.DataParallel(nets["a"])
    save_bundle(out, name="x", version="1", members=[("a", SPEC_A, wrapped, {})])
    assert not any(k.startswith("module.") for k in torch.load(out / "a.pt", weights_only=True))
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(out, name="x", version="2", members=[("a", SPEC_A, nets["a"], {})])
    save_bundle(out, name="x", version="2", members=[("a", SPEC_A, nets["a"], {})], overwrite=True)
    bundle = load_bundle(out)
    assert bundle.version == "2" and bundle.translator is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_update_manifest(bundle_copy: Path) -> None:
    updated = update_manifest(bundle_copy, evaluation={"rank1": 0.5, "mAP": 0.4})
    assert updated.evaluation == {"rank1": 0.5, "mAP": 0.4}
    assert load_bundle(bundle_copy).manifest.evaluation["rank1"] == 0.5
    assert sorted(p.name for p in bundle_copy.iterdir())[-1] == "translator.pt"  # no temp file
    with pytest.raises(ValueError):
        update_manifest(bundle_copy, members=[])
    with pytest.raises(BundleError):
        update_manifest(bundle_copy, tta_flip="sometimes")
