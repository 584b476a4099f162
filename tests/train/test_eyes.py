"""Training the eyelid renderer on a tiny synthetic world's labelled blinks (`lipstep.train.eyes`)."""

import json

import numpy as np
import pytest

from lipstep.codecs.vae import CodecConfig, build_codec, save_codec
from lipstep.data.blinks import blink_rate, eye_brightness
from lipstep.data.dataset import open_shard, read_manifest
from lipstep.data.prepare import PrepareConfig, prepare_dataset
from lipstep.data.world import WorldConfig, synthesize_world
from lipstep.errors import DataError, LipstepError
from lipstep.nets.eyes import EyeConfig, load_eye_net
from lipstep.train.eyes import EyeTrainConfig, blink_pairs, open_neighbour, train_eyes

pytestmark = pytest.mark.usefixtures("one_thread")


def _world(root, rate):
    synthesize_world(WorldConfig(identities=3, clips_per_identity=1, seconds=1.6, size=32, seed=3,
                                 blinks_per_second=rate), root / "world", workers=1, progress=False)
    prepare_dataset(root / "world", root / "prepared", PrepareConfig(size=32), workers=1, progress=False)
    save_codec(build_codec(CodecConfig(kind="pixel", image_size=32, factor=2)), root / "codec")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _world(tmp_path_factory.mktemp("eyes_world"), rate=4.0)


def test_open_neighbour_finds_the_nearest_open_frame_within_the_gap():
    blink = np.array([0, 0, 0.35, 0.85, 1.0, 0.7, 0.3, 0, 0], np.float32)
    assert open_neighbour(blink, 4, -1, 4) == 1 and open_neighbour(blink, 4, 1, 4) == 7
    assert open_neighbour(blink, 4, -1, 2) is None          # frames 3 and 2 still blink
    assert open_neighbour(blink, 2, -1, 4) == 1 and open_neighbour(np.ones(3), 1, 1, 4) is None


def test_pairs_hold_every_blink_frame_beside_its_open_neighbours(world):
    root = world / "prepared"
    pairs = blink_pairs(root, "train", max_gap=4)
    rows = [r for r in read_manifest(root) if r["split"] == "train"]
    tracks = [np.asarray(open_shard(root / r["shard"], ("blink",))["blink"]) for r in rows]
    frames = np.concatenate([np.asarray(open_shard(root / r["shard"], ("frames",))["frames"]) for r in rows])
    blinking = int(sum((t > 0).sum() for t in tracks))
    assert blinking > 0 and blinking <= len(pairs.closure) <= 2 * blinking
    assert (pairs.closure > 0).all() and pairs.blinks_per_second == pytest.approx(blink_rate(tracks, 25.0))
    # every target is a real blink frame of the split, every input a real frame of it
    flat = frames.reshape(len(frames), -1)
    for x in (pairs.inputs[:5], pairs.targets[:5]):
        assert all((flat == f.reshape(-1)).all(1).any() for f in x)


def test_training_brings_the_lids_down_and_writes_a_loadable_directory(world, tmp_path):
    cfg = EyeTrainConfig(net=EyeConfig(hidden=16, dilations=(1, 2, 1)), steps=150, batch=16, lr=3e-3)
    r = train_eyes(world / "prepared", world / "codec", tmp_path / "eyes", cfg, progress=False)
    assert np.mean(r.losses[-20:]) < 0.7 * np.mean(r.losses[:5])
    train = r.heldout["train"]
    # the shut eyes are darker than the open input, and the output is nearer to them than the input is
    assert train["eyes_real"] < train["eyes_input"]
    assert abs(train["eyes_output"] - train["eyes_real"]) < 0.6 * abs(train["eyes_input"] - train["eyes_real"])
    assert train["psnr_output"] > train["psnr_input"]
    net = load_eye_net(tmp_path / "eyes")
    assert (net.cfg.latent_channels, net.cfg.latent_size) == (12, 16)
    record = json.loads((tmp_path / "eyes" / "train.json").read_text())
    assert record["blinks_per_second"] == pytest.approx(r.blinks_per_second, abs=1e-4) and record["pairs"] > 0
    assert set(r.heldout) >= {"train"} and len(r.heldout) == 2  # and one held-out split of unseen identities
    # the held-out reading scores the real frames through the same eye band the soak reads
    pairs = blink_pairs(world / "prepared", "train", 4)
    assert train["eyes_real"] == pytest.approx(float(eye_brightness(pairs.targets[pairs.closure >= 0.5]).mean()),
                                               abs=0.01)


def test_bad_data_and_outputs_are_one_line_errors(world, tmp_path):
    cfg = EyeTrainConfig(steps=1)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(LipstepError, match="not an eye net directory; refusing"):
        train_eyes(world / "prepared", world / "codec", tmp_path / "taken", cfg, progress=False)
    still = _world(tmp_path / "still", rate=0.0)
    with pytest.raises(DataError, match="hold no blink"):
        train_eyes(still / "prepared", still / "codec", tmp_path / "eyes", cfg, progress=False)
    assert not (tmp_path / "eyes").exists()


def test_the_command_trains(world, tmp_path, capsys):
    """(Its bad input: tests/test_bad_inputs.py.)"""
    from lipstep.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", "eyes", "--data", str(world / "prepared"), "--codec", str(world / "codec"), "--out",
              str(tmp_path / "eyes"), "--steps", "3", "net.hidden=8", "batch=4"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    assert "wrote eye net" in out and "blinks in the training labels" in out
    assert load_eye_net(tmp_path / "eyes").cfg.hidden == 8
