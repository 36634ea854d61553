"""The learning test: a short training run on synthetic data after which Rank-1 is clearly above
chance on identities the model has never seen.

Setting: 80 synthetic identities (``generate_synthetic(seed=0, photos_per_camera=2)``: 2 cameras
× 2 photos and 1 sketch each), one random identity split (``random_splits(seed=0)``) of 60
training and 20 test identities. ``sketchreid train reid --preset smoke --arch resnet20
--seed 0`` trains from scratch on the 300 training images with the ``smoke`` preset
(``app/ml/train/config.py``): 32×16 input, FC-128, no dropout, Adam 1e-3, batch 16, 60 epochs
with ×0.1 after epoch 45, cross-entropy only, pseudo-sketches for half of the photos, random
crop (2 px) and flip, no random erasing; about 25 s on one CPU core (the whole test about 30 s).
``sketchreid evaluate --split-file --no-translate`` then ranks the 80 photos of the 20 test
identities for each of their 20 sketches.

Chance: Rank-1 1/20 = 0.05; mAP of random rankings 0.096. Measured by hand (this function with
other seeds):

    training seed, split seed   0, 0    1, 0    2, 0    0, 1    0, 2
    Rank-1                      0.20    0.20    0.20    0.25    0.25
    mAP                         0.278   0.278   0.308   0.327   0.339

The test asks for Rank-1 >= 2× chance (0.10) and mAP >= 2× the random expectation (0.19).
What did not get there within the time: the previous smoke settings (SGD 0.01, batch-hard
triplet, random erasing 0.2, 40 epochs at 64×32: Rank-1 0.00, train accuracy 0.02), and 64×32
input in general, which needs about 70 epochs (~100 s) before held-out sketches match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.cli.main import main
from app.ml.data.splits import random_splits, save_split_file
from app.ml.data.synth import generate_synthetic
from app.ml.retrieval.metrics import ranking_result

IDENTITIES = 80
TEST_IDENTITIES = 20


def _random_ranking_map(q_pids: np.ndarray, g_pids: np.ndarray, trials: int = 200) -> float:
    """Mean average precision of random rankings of this gallery (its chance level)."""
    rng = np.random.default_rng(0)
    q_cams, g_cams = np.full(len(q_pids), -1), np.ones(len(g_pids), dtype=np.int64)
    maps = [
        ranking_result(
            rng.random((len(q_pids), len(g_pids))).astype(np.float32),
            q_pids,
            g_pids,
            q_cams,
            g_cams,
            50,
        ).mAP
        for _ in range(trials)
    ]
    return float(np.mean(maps))


def held_out_figures(tmp_path: Path, *, seed: int = 0, split_seed: int = 0) -> dict[str, Any]:
    """Train on the training identities of one split, evaluate on its test identities; the
    evaluation report with the chance levels added (``chance_rank1``, ``chance_mAP``)."""
    root = tmp_path / "synth"
    dataset = generate_synthetic(root, IDENTITIES, seed=0, photos_per_camera=2, overwrite=True)
    split = random_splits(dataset, 1, seed=split_seed, test_size=TEST_IDENTITIES)[0]
    split_file = tmp_path / "split.json"
    save_split_file(split, split_file)
    bundle, report_path = tmp_path / "bundle", tmp_path / "report.json"
    data = ["--data-root", str(root), "--split-file", str(split_file)]
    train = ["train", "reid", *data, "--preset", "smoke", "--arch", "resnet20"]
    train += ["--seed", str(seed), "--workdir", str(tmp_path / "runs"), "--no-progress"]
    assert main([*train, "--out", str(bundle)]) == 0
    evaluate = ["evaluate", *data, "--model", str(bundle), "--no-translate"]
    assert main([*evaluate, "--json", str(report_path)]) == 0

    report: dict[str, Any] = json.loads(report_path.read_text())
    test = dataset.subset(split.test)
    assert report["n_queries"] == len(test.sketches) == TEST_IDENTITIES
    assert report["n_gallery"] == len(test.photos) == 4 * TEST_IDENTITIES
    report["chance_rank1"] = 1 / TEST_IDENTITIES  # every test identity has 4 photos
    report["chance_mAP"] = _random_ranking_map(
        np.array([s.pid for s in test.sketches]), np.array([s.pid for s in test.photos])
    )
    return report


@pytest.mark.slow
def test_short_training_ranks_unseen_identities_well_above_chance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(1)
    report = held_out_figures(tmp_path)
    assert "warning" not in capsys.readouterr().err, "no test identity was seen in training"
    assert report["splits"][0]["train_test_overlap"] == 0
    figures = {
        k: round(report[k], 3) for k in ("rank1", "rank5", "mAP", "chance_rank1", "chance_mAP")
    }
    print(f"held-out identities: {figures}")
    assert report["rank1"] >= 2 * report["chance_rank1"], figures
    assert report["mAP"] >= 2 * report["chance_mAP"], figures
