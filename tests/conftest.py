"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ml.data.synth import generate_synthetic

SHARED_DATA = (Path(__file__).parents[1] / "../shared/data").resolve()


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (the real research data sets), or skip the test when it is absent."""
    if not (SHARED_DATA / "pku-sketch-dev").is_dir():
        pytest.skip(f"../shared/data not present: {SHARED_DATA / 'pku-sketch-dev'} is missing")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic PKU-Sketch set shared by the session (read it, never write to it):
    12 people (pids 1..12), one sketch and two photos (cameras 1 and 2) each, seed 0."""
    root = tmp_path_factory.mktemp("synth-small")
    generate_synthetic(root, 12, seed=0)
    return root


@pytest.fixture(scope="session")
def random_bundle_dir(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """A random-weight bundle with a translator for the 32x16 evaluation tests, written as
    `train` would write one (one resnet8 member, a small generator).

    The member has a BN neck whose statistics are set from the synthetic set's photos and grey
    sketches (one forward pass in training mode, no gradient step), so its embeddings are
    centred and spread out. Without that they are all nearly parallel (cosine above 0.9), each
    query's nearest neighbours are the other 11 queries and no k1 below 12 changes the
    re-ranking. The generator keeps PyTorch's default initialisation: with the reference
    N(0, 0.02) one its output hardly depends on the sketch."""
    import torch

    from app.ml.bundle.store import save_bundle
    from app.ml.data.pku import load_pku_sketch
    from app.ml.images import load_image
    from app.ml.models.cyclegan import GeneratorSpec, ResnetGenerator
    from app.ml.models.resnet_cifar import MemberSpec, build_member
    from app.ml.transforms import to_batch

    size = (32, 16)
    dataset = load_pku_sketch(synth_root)
    torch.manual_seed(0)
    member = MemberSpec(arch="resnet8", num_classes=12, fc_dim=16, input_size=size, bn_neck=True)
    net = build_member(member)
    photos = to_batch([load_image(s.path) for s in dataset.photos], size)
    sketches = to_batch([load_image(s.path) for s in dataset.sketches], size, grey=True)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = the mean over the batches seen
    with torch.no_grad():
        net.train()(torch.cat([photos, sketches]))
    generator = GeneratorSpec(ngf=4, n_blocks=1, input_size=size)
    out = tmp_path_factory.mktemp("bundles") / "random"
    save_bundle(
        out,
        name="random",
        version="1",
        members=[("resnet8", member, net.eval(), {})],
        translator=(generator, ResnetGenerator(ngf=4, n_blocks=1).eval(), {}),
        input_size=size,
    )
    return out
