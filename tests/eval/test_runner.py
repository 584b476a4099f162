"""`lipstep eval`: generate a split, score every available metric, list what was skipped and why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tests.mediafixtures import make_tiny_avatar_data

from lipstep.data.dataset import WindowConfig, open_shard, read_manifest
from lipstep.data.media import read_image
from lipstep.errors import LipstepError
from lipstep.eval.longrun import evaluate_long
from lipstep.eval.runner import (
    EvalConfig,
    Evaluators,
    evaluate_model,
    load_evaluators,
    metrics_markdown,
    spread_frames,
)
from lipstep.eval.train_features import FeatureTrainConfig, train_feature_net
from lipstep.eval.train_identity import IdentityTrainConfig, train_identity
from lipstep.eval.train_mouthreader import MouthTrainConfig, train_mouth_reader
from lipstep.eval.train_syncnet import SyncTrainConfig, train_syncnet
from lipstep.nets.features import FeatureNetConfig
from lipstep.nets.identity import IdentityNetConfig
from lipstep.nets.mouthreader import MouthReaderConfig
from lipstep.nets.syncnet import LipSyncConfig
from lipstep.pipeline import AvatarPipeline
from lipstep.runtime import export_onnx
from lipstep.train.loop import TrainConfig
from lipstep.train.mouth_head import MouthHeadConfig
from lipstep.train.teacher import TeacherConfig, train_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

REQUIRED = ("mouth_err", "mouth_corr", "sync_c", "sync_d", "sync_offset", "fd", "kid", "fvd", "id_sim", "flicker",
            "warp_err", "psnr_gt", "ssim_gt", "psnr_codec", "ssim_codec", "nfe", "id_psnr", "id_psnr_gt", "id_ssim",
            "id_ssim_gt", "colour_shift", "colour_shift_gt")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Tiny data, a tiny teacher (2 training steps) and tiny evaluators of every kind (mechanics, not quality)."""
    root = make_tiny_avatar_data(tmp_path_factory.mktemp("evalrun"))
    prepared = root / "prepared"
    cfg = TeacherConfig(preset="tiny", window=WindowConfig(frames=4, motion_frames=2), val_clips=0,
                        mouth_head=MouthHeadConfig(steps=30, batch_size=32, min_corr=-1))  # mechanics, not fit
    cfg.train = TrainConfig(steps=2, batch_size=2, checkpoint_every=2)
    cfg.sampler.steps = 2
    model = train_teacher(prepared, root / "codec", root / "run", cfg, progress=False)
    ev = root / "evaluators"
    train_mouth_reader(prepared, ev / "mouth", MouthTrainConfig(net=MouthReaderConfig(width=4), steps=3, batch=8),
                       codec_dir=root / "codec", progress=False)
    train_syncnet(prepared, ev / "syncnet", SyncTrainConfig(net=LipSyncConfig(width=8, levels=2, embed_dim=16),
                                                            steps=2, batch=4, warmup_steps=1, eval_pairs=8,
                                                            eval_clips=1), progress=False, device="cpu")
    train_feature_net(prepared, ev / "features", FeatureTrainConfig(net=FeatureNetConfig(channels=(8, 16)), steps=2,
                                                                    batch=8))
    # the tiny world has one train identity; the identity encoder needs two, so it sees every clip as train
    alltrain = root / "prepared_alltrain"
    alltrain.mkdir()
    (alltrain / "shards").symlink_to(prepared / "shards")
    rows = [json.loads(line) | {"split": "train"} for line in (prepared / "manifest.jsonl").read_text().splitlines()]
    (alltrain / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_identity(alltrain, ev / "identity", IdentityTrainConfig(net=IdentityNetConfig(width=8, embed_dim=16),
                                                                  steps=2, batch=8, warmup_steps=1, eval_frames=4),
                   progress=False)
    return {"root": root, "prepared": alltrain, "model": model, "evaluators": ev}


def test_eval_writes_every_weight_free_metric(setup, tmp_path):
    ev = load_evaluators(setup["evaluators"])
    out = tmp_path / "eval"
    res = evaluate_model(setup["model"], setup["prepared"], out, EvalConfig(split="train", max_clips=2, save_videos=1),
                         ev, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(res))
    for key in REQUIRED:
        assert key in saved and np.isfinite(saved[key]), key
    assert saved["clips"] == 2 and saved["nfe"] == 2 * 3  # 2 steps x 3 guidance passes
    # names of the networks behind the metrics, and what was skipped and why
    assert saved["extractors"]["mouth_err"] == "lipstep-mouth-reader-v1"
    assert saved["extractors"]["sync_c"] == "lipstep-syncnet"
    assert saved["extractors"]["fd"] == "lipstep-frames-v1" and "motion" in saved["extractors"]["fvd"]
    assert saved["extractors"]["id_sim"] == "lipstep-identity-v1"
    for key in ("fid", "fvd_i3d", "sync_c_official"):
        assert key in saved["skipped"] and "given" in saved["skipped"][key]
    # ceilings: the same measurement on the ground truth
    assert saved["psnr_codec_gt"] > 0 and saved["id_sim_gt"] <= 1.0 + 1e-6
    md = (out / "metrics.md").read_text()
    assert "| mouth_err |" in md and "Skipped:" in md
    rows = [json.loads(line) for line in (out / "per_clip.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["frames"] == 30
    assert np.mean([r["psnr_gt"] for r in rows]) == pytest.approx(saved["psnr_gt"], abs=1e-4)
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"{rows[0]['clip']}.mp4"]
    # portrait fidelity: the ground truth of a talking head stays close to its own first frame
    assert saved["id_ssim_gt"] <= 1.0 and saved["colour_shift"] >= 0 and saved["mouth_box"] == [0.28, 0.5, 0.72, 0.84]
    assert "| id_psnr |" in md and "| colour_shift |" in md
    # contact sheet: generated over ground truth for each clip (32 px frames, 8 per row), a gap between clips
    sheet = read_image(out / "contact_sheet.png")
    assert sheet.shape == (4 * 32 + 2, 8 * 32, 3)


def test_eval_through_onnx_runtime_scores_what_torch_does(setup, tmp_path):
    """``runtime="onnx"`` generates with the model's ONNX export: the same frames up to fp32 parity, so the same
    metrics; the runtime is recorded."""
    model = tmp_path / "model"
    shutil.copytree(setup["model"], model)
    export_onnx(model, threads=1)
    ev = load_evaluators(setup["evaluators"])
    res = {rt: evaluate_model(model, setup["prepared"], tmp_path / rt, EvalConfig(split="train", max_clips=1,
                                                                                  save_videos=0, runtime=rt),
                              ev, progress=False) for rt in ("torch", "onnx")}
    assert res["onnx"]["eval"]["runtime"] == "onnx" and res["torch"]["eval"]["runtime"] == "torch"
    for key in ("psnr_codec", "psnr_gt", "colour_shift", "flicker"):
        assert res["onnx"][key] == pytest.approx(res["torch"][key], rel=1e-3, abs=1e-4), key


def test_soak_streams_speech_with_pauses_and_reports_per_block(setup, tmp_path):
    """`lipstep soak` on the tiny teacher: every frame of the audio, a row per block, the pauses read by the mouth
    reader, latency at a live pace, the files; then the CLI's one-line refusal of a bad option."""
    r = _run("soak", "--data", setup["prepared"], "--out", tmp_path / "s", "--model", setup["model"], "--split",
             "train", "--seconds", "2", "--speech", "0.8", "--pause", "0.5", "--block", "1", "--pace", "1",
             "--piece", "0.1", "--evaluators", setup["evaluators"], "--threads", "1")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "s" / "soak.json").read_text())
    assert res["frames"] == 50 and [b["frames"] for b in res["blocks"]] == [25, 25]
    assert res["pauses"] == 1 and len((tmp_path / "s" / "pauses.jsonl").read_text().splitlines()) == 1
    assert res["first_frame_s"] >= res["first_chunk_compute_s"] > 0
    assert res["latency_p50_s"] is not None and res["rtf"] > 0 and res["rss_first_mb"] > 0
    assert {"id_sim", "id_psnr", "colour_shift", "rss_mb", "rtf"} <= set(res["blocks"][0])
    assert res["wall_seconds"] >= 2.0                          # pace 1: the audio took its own time to arrive
    assert read_image(tmp_path / "s" / "contact_sheet.png").shape[0] == 2 * 32 + 2  # blocks row + the first pause
    assert "| rss_growth |" in (tmp_path / "s" / "soak.md").read_text()
    bad = _run("soak", "--data", setup["prepared"], "--out", tmp_path / "b", "--pace", "-1")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_audio_shift_control_changes_the_driving_audio_only(setup, tmp_path, monkeypatch):
    heard = []
    call = AvatarPipeline.__call__

    def spy(self, image, audio, **kw):
        heard.append(np.array(audio))
        return call(self, image, audio, **kw)

    monkeypatch.setattr(AvatarPipeline, "__call__", spy)
    ev = load_evaluators(setup["evaluators"])
    cfg = EvalConfig(split="train", max_clips=1, save_videos=0)
    a = evaluate_model(setup["model"], setup["prepared"], tmp_path / "a", cfg, ev, progress=False)
    b = evaluate_model(setup["model"], setup["prepared"], tmp_path / "a2", cfg, ev, progress=False)
    cfg.audio_shift = 0.5
    c = evaluate_model(setup["model"], setup["prepared"], tmp_path / "b", cfg, ev, progress=False)
    assert a["mouth_err"] == b["mouth_err"] and a["sync_c"] == b["sync_c"]   # deterministic
    assert np.array_equal(heard[0], heard[1])
    assert np.array_equal(heard[2], np.roll(heard[0], 8000))                 # 0.5 s at 16 kHz
    assert c["mouth_err_gt"] == a["mouth_err_gt"]    # still scored against the clip's own labels and audio
    assert c["sync_c_gt"] == a["sync_c_gt"]
    assert c["eval"]["audio_shift"] == 0.5


def test_without_evaluators_everything_learned_is_skipped(setup, tmp_path):
    ev = Evaluators(skipped={"mouth_err": "no evaluators"})
    res = evaluate_model(setup["model"], setup["prepared"], tmp_path / "e", EvalConfig(split="train", max_clips=1,
                                                                                        save_videos=0), ev,
                         progress=False)
    assert "mouth_err" not in res and "mouth_err" in res["skipped"]
    assert np.isfinite(res["psnr_gt"]) and np.isfinite(res["flicker"])


def test_markdown_lists_metrics_with_ceilings():
    md = metrics_markdown({"model": "m", "eval": {"split": "test"}, "clips": 1, "frames": 10, "mouth_err": 0.1,
                           "mouth_err_gt": 0.05, "extractors": {"mouth_err": "reader"}, "skipped": {"fid": "why"}})
    assert "| mouth_err | 0.1 | 0.05 | reader |" in md and "- `fid`: why" in md
    assert "| mouth_err_gt |" not in md  # a ceiling, shown in its metric's row


def test_markdown_keeps_metrics_named_against_ground_truth():
    md = metrics_markdown({"model": "m", "eval": {"split": "test"}, "clips": 1, "frames": 10, "psnr_gt": 21.5,
                           "ssim_gt": 0.75, "psnr_codec": 30.0, "psnr_codec_gt": 18.0})
    assert "| psnr_gt | 21.5 |" in md and "| ssim_gt | 0.75 |" in md and "| psnr_codec | 30 | 18 |" in md


def _run(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lipstep", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("case", ["no_data", "bad_split", "no_evaluators", "bad_weights_dir", "codec_as_model",
                                  "bad_runtime", "runtime_without_export"])
def test_eval_cli_bad_inputs(setup, tmp_path, case):
    args = {"no_data": ["--data", tmp_path / "nope", "--model", setup["model"]],
            "bad_split": ["--data", setup["prepared"], "--model", setup["model"], "--split", "dev"],
            "no_evaluators": ["--data", setup["prepared"], "--model", setup["model"], "--evaluators", tmp_path / "x"],
            "bad_weights_dir": ["--data", setup["prepared"], "--model", setup["model"], "--weights-dir",
                                tmp_path / "w"],
            "codec_as_model": ["--data", setup["prepared"], "--model", setup["root"] / "codec"],
            "bad_runtime": ["--data", setup["prepared"], "--model", setup["model"], "--runtime", "tensorrt"],
            "runtime_without_export": ["--data", setup["prepared"], "--model", setup["model"], "--runtime", "onnx"]}[case]
    r = _run("eval", "--out", tmp_path / "out", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_other_audio_control_drives_with_the_next_clip(setup, tmp_path, monkeypatch):
    heard = []
    call = AvatarPipeline.__call__

    def spy(self, image, audio, **kw):
        heard.append(np.array(audio))
        return call(self, image, audio, **kw)

    monkeypatch.setattr(AvatarPipeline, "__call__", spy)
    res = evaluate_model(setup["model"], setup["prepared"], tmp_path / "o",
                         EvalConfig(split="train", max_clips=2, save_videos=0, other_audio=True),
                         load_evaluators(setup["evaluators"]), progress=False)
    rows = read_manifest(setup["prepared"])[:2]
    second = np.asarray(open_shard(setup["prepared"] / rows[1]["shard"], ("audio",))["audio"])
    assert np.array_equal(heard[0], second[:len(heard[0])])
    assert res["eval"]["other_audio"] is True and np.isfinite(res["mouth_err"])


def test_contact_sheet_shows_generated_over_ground_truth(setup, tmp_path, monkeypatch):
    made = []
    call = AvatarPipeline.__call__

    def spy(self, image, audio, **kw):
        res = call(self, image, audio, **kw)
        made.append(res.frames)
        return res

    monkeypatch.setattr(AvatarPipeline, "__call__", spy)
    out = tmp_path / "sheet"
    evaluate_model(setup["model"], setup["prepared"], out, EvalConfig(split="train", max_clips=1, save_videos=0),
                   load_evaluators(setup["evaluators"]), progress=False)
    sheet = read_image(out / "contact_sheet.png")
    gt = np.asarray(open_shard(setup["prepared"] / read_manifest(setup["prepared"])[0]["shard"], ("frames",))["frames"])
    assert np.array_equal(sheet[:32], np.concatenate(list(spread_frames(made[0])), axis=1))
    assert np.array_equal(sheet[32:], np.concatenate(list(spread_frames(gt[:len(made[0])])), axis=1))


def test_long_run_drives_each_identity_through_the_chunked_pipeline(setup, tmp_path, monkeypatch):
    calls = []
    call = AvatarPipeline.__call__

    def spy(self, image, audio, **kw):
        calls.append((np.array(image), np.array(audio), kw))
        return call(self, image, audio, **kw)

    monkeypatch.setattr(AvatarPipeline, "__call__", spy)
    out = tmp_path / "long"
    cfg = EvalConfig(split="train", long=1.6, long_block=1.0, long_identities=2, save_videos=1)
    res = evaluate_long(setup["model"], setup["prepared"], out, cfg, load_evaluators(setup["evaluators"]),
                        progress=False)
    with pytest.raises(LipstepError, match="evaluate_long"):
        evaluate_model(setup["model"], setup["prepared"], tmp_path / "x", cfg, load_evaluators(setup["evaluators"]))
    rows = read_manifest(setup["prepared"])
    first = open_shard(setup["prepared"] / rows[0]["shard"], ("frames", "audio"))
    # 1.6 s rounds up to two 1-s blocks: 50 frames driven by the 1.2-s clip's speech, then its start again
    assert len(calls) == 2 and len(calls[0][1]) == 32000
    wav = np.asarray(first["audio"])[:19200]
    assert np.array_equal(calls[0][1], np.concatenate([wav, wav[:12800]]))
    assert np.array_equal(calls[0][0], np.asarray(first["frames"])[0])                      # the reference portrait
    assert res["identities"] == 2 and res["long_seconds"] == 2.0 and res["frames"] == 100
    assert res["identity_names"] == [rows[0]["identity"], rows[1]["identity"]]
    blocks = [json.loads(line) for line in (out / "long_blocks.jsonl").read_text().splitlines()]
    assert [(b["identity"], b["block"], b["frames"]) for b in blocks] == [
        (rows[0]["identity"], 0, 25), (rows[0]["identity"], 1, 25), (rows[1]["identity"], 0, 25),
        (rows[1]["identity"], 1, 25)]
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("id_psnr", "id_ssim", "colour_shift", "id_sim"):
        delta = np.mean([blocks[1][key] - blocks[0][key], blocks[3][key] - blocks[2][key]])
        assert saved[f"long_{key}_delta"] == pytest.approx(delta, abs=1e-4), key
        assert np.isfinite(saved[f"long_{key}_gt"]) and len(saved["long_blocks"]) == 2
        assert saved["long_blocks"][1][key] == pytest.approx((blocks[1][key] + blocks[3][key]) / 2, abs=1e-4)
    assert saved["nfe"] == 6 and saved["extractors"]["long_id_sim"] == "lipstep-identity-v1"
    md = (out / "metrics.md").read_text()
    assert "| long_id_psnr |" in md and "| block | seconds | id_psnr |" in md and "| 1 | 1-2 |" in md
    sheet = read_image(out / "contact_sheet.png")   # one row per identity: reference + 10 frames over the run
    assert sheet.shape == (2 * 32 + 2, 11 * 32, 3) and np.array_equal(sheet[:32, :32], calls[0][0])
    assert [p.name for p in (out / "videos").iterdir()] == [f"{rows[0]['identity']}_long.mp4"]
    assert not (out / "per_clip.jsonl").exists()


@pytest.mark.parametrize("case", ["long_with_max_clips", "long_with_audio_shift", "negative_long"])
def test_long_run_cli_bad_inputs(setup, tmp_path, case):
    args = {"long_with_max_clips": ["--long", "60", "--max-clips", "2"],
            "long_with_audio_shift": ["--long", "60", "--audio-shift", "0.5"],
            "negative_long": ["--long", "-1"]}[case]
    r = _run("eval", "--out", tmp_path / "out", "--data", setup["prepared"], "--model", setup["model"], *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_long_run_cli(setup, tmp_path):
    r = _run("eval", "--out", tmp_path / "out", "--data", setup["prepared"], "--model", setup["model"],
             "--evaluators", setup["evaluators"], "--split", "train", "--long", "0.8", "--long-block", "0.4",
             "--identities", "1", "--steps", "1", "--save-videos", "0")
    assert r.returncode == 0, r.stderr
    assert "long_colour_shift" in r.stdout and "1 identities x 0.8 s" in r.stdout
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["eval"]["steps"] == 1 and saved["nfe"] == 3 and len(saved["long_blocks"]) == 2
