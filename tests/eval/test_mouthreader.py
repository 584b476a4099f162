"""The CNN mouth reader behind MouthErr: it learns the labelled mouth state and generalises to unseen identities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lipstep.data.dataset import open_shard, read_manifest
from lipstep.data.prepare import PrepareConfig, prepare_dataset
from lipstep.data.world import WorldConfig, synthesize_world
from lipstep.errors import DataError, LipstepError
from lipstep.eval.mouthreader import MouthReader, mouth_scores
from lipstep.eval.train_mouthreader import MouthTrainConfig, _augment, train_mouth_reader
from lipstep.nets.mouthreader import MouthReaderConfig, MouthReaderNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """6 identities x 2 clips x 2 s at 32 px: enough held-out identities to measure generalisation."""
    root = tmp_path_factory.mktemp("mouthworld")
    synthesize_world(WorldConfig(identities=6, clips_per_identity=2, seconds=2.0, size=32, seed=11), root / "world",
                     workers=1, progress=False)
    prepare_dataset(root / "world", root / "prepared", PrepareConfig(size=32), workers=1, progress=False)
    return root / "prepared"


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("reader") / "mouth"
    cfg = MouthTrainConfig(steps=300, batch=64)
    return train_mouth_reader(world, out, cfg, progress=False)


def _heldout(world: Path, split: str):
    frames, labels = [], []
    for row in read_manifest(world):
        if row["split"] == split:
            d = open_shard(world / row["shard"], ("frames", "mouth"))
            frames.append(np.asarray(d["frames"]))
            labels.append(np.asarray(d["mouth"][:, 0]))
    return np.concatenate(frames), np.concatenate(labels)


def test_reader_reads_openness_of_unseen_identities(trained, world):
    held = next(iter(trained.heldout))
    assert held in ("val", "test")
    frames, truth = _heldout(world, held)
    pred = MouthReader(trained.out).openness(frames)
    mae, corr = mouth_scores(pred, truth)
    assert corr > 0.6, corr                                  # it follows the mouth of identities it never saw
    assert trained.heldout[held]["mae"] == pytest.approx(mae, abs=1e-3)
    frames, truth = _heldout(world, "train")
    mae, corr = mouth_scores(MouthReader(trained.out).openness(frames), truth)
    baseline = float(np.abs(truth - truth.mean()).mean())   # always answering the mean opening
    assert mae < 0.5 * baseline and corr > 0.9, (mae, baseline, corr)


def test_saved_reader_matches_and_reports(trained, world):
    info = json.loads((trained.out / "train.json").read_text())
    assert info["name"] == "lipstep-mouth-reader-v1"
    assert set(info["heldout"]) <= {"val", "test"} and info["parameters"] == trained.parameters
    reader = MouthReader(trained.out)
    frames, _ = _heldout(world, next(iter(trained.heldout)))
    a, b = reader.state(frames[:10]), reader.state(frames[:10])
    assert a.shape == (10, 3) and np.array_equal(a, b)
    assert ((a > 0) & (a < 1)).all()
    # a resized input reads (almost) the same as the native size
    big = np.repeat(np.repeat(frames[:10], 2, axis=1), 2, axis=2)
    assert np.abs(reader.openness(big) - a[:, 0]).mean() < 0.05


def test_mouth_scores_known_answers():
    t = np.linspace(0, 1, 20)
    assert mouth_scores(t, t) == (0.0, pytest.approx(1.0))
    err, corr = mouth_scores(t + 0.1, t)
    assert err == pytest.approx(0.1) and corr == pytest.approx(1.0)
    assert mouth_scores(1 - t, t)[1] == pytest.approx(-1.0)
    with pytest.raises(DataError, match="equally long"):
        mouth_scores(t, t[:5])


def test_augment_keeps_shape_range_and_is_seeded():
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    cfg = MouthTrainConfig()
    a = _augment(x, cfg, torch.Generator().manual_seed(1))
    b = _augment(x, cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, x)


def test_bad_inputs(tmp_path, trained):
    reader = MouthReader(trained.out)
    with pytest.raises(DataError, match="uint8"):
        reader.openness(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(DataError, match="square"):
        reader.openness(np.zeros((2, 32, 40, 3), np.uint8))
    with pytest.raises(LipstepError, match="not found"):
        MouthReader(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_type": "CodecConfig"}))
    with pytest.raises(LipstepError, match="not a mouth reader"):
        MouthReader(tmp_path / "other")
    with pytest.raises(LipstepError, match="steps"):
        MouthTrainConfig(steps=0).validate()


def test_training_refuses_missing_data(tmp_path):
    with pytest.raises(LipstepError):
        train_mouth_reader(tmp_path / "missing", tmp_path / "out", MouthTrainConfig(steps=1), progress=False)
    assert not (tmp_path / "out").exists()


def test_net_shape():
    net = MouthReaderNet(MouthReaderConfig(image_size=32, width=8))
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
