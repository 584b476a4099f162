"""AvatarPipeline and `lipstep generate` / `models` / `export`: loading, determinism, real inputs, bad inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lipstep.data.dataset import WindowConfig
from lipstep.data.media import probe, read_audio, write_audio, write_image
from lipstep.errors import LipstepError
from lipstep.pipeline import AvatarPipeline, bundled_models, describe_models, read_info, resolve_model
from lipstep.train.loop import TrainConfig
from lipstep.train.mouth_head import MouthHeadConfig
from lipstep.train.teacher import TeacherConfig, train_teacher
from tests.mediafixtures import SR, make_tiny_avatar_data, speech_like

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny teacher trained for 2 steps on a tiny real synthetic world (mechanics, not quality)."""
    root = make_tiny_avatar_data(tmp_path_factory.mktemp("pipeline"))
    cfg = TeacherConfig(preset="tiny", window=WindowConfig(frames=4, motion_frames=2), val_clips=0,
                        mouth_head=MouthHeadConfig(steps=30, batch_size=32, min_corr=-1))
    cfg.train = TrainConfig(steps=2, batch_size=2, checkpoint_every=2)
    cfg.sampler.steps = 3
    return train_teacher(root / "prepared", root / "codec", root / "run", cfg, progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    import skimage.data

    d = tmp_path_factory.mktemp("inputs")
    write_image(d / "astronaut.png", skimage.data.astronaut())
    write_audio(d / "speech.wav", speech_like(1.1), SR)
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    return d


def _run(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lipstep", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_save_load_gives_identical_outputs(model, tmp_path):
    pipe = AvatarPipeline.from_pretrained(model)
    ref = torch.randn(1, 4, 8, 8)
    audio = torch.randn(8, 16, 80)
    a, nfe = pipe.generate_latents(ref, audio, seed=5)
    assert a.shape == (8, 4, 8, 8) and nfe == 2 * 3 * 3  # 2 chunks x 3 steps x 3 CFG passes
    b, _ = pipe.generate_latents(ref, audio, seed=5)
    assert torch.equal(a, b)                               # seeded: deterministic
    c, _ = pipe.generate_latents(ref, audio, seed=6)
    assert not torch.equal(a, c)
    again = AvatarPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "copy"))
    assert torch.equal(again.generate_latents(ref, audio, seed=5)[0], a)
    half = AvatarPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "half", half=True))
    size = lambda p: sum(f.stat().st_size for f in (p / "denoiser").rglob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "half") < 0.6 * size(tmp_path / "copy")
    assert torch.allclose(half.generate_latents(ref, audio, seed=5)[0], a, atol=0.05)


def test_guidance_scales_one_cost_one_pass(model):
    pipe = AvatarPipeline.from_pretrained(model)
    _, nfe = pipe.generate_latents(torch.randn(1, 4, 8, 8), torch.randn(4, 16, 80), cfg_audio=1, cfg_ref=1, steps=2)
    assert nfe == 2


def test_pipeline_call_covers_the_audio(model):
    pipe = AvatarPipeline.from_pretrained(model)
    image = np.full((32, 32, 3), 128, np.uint8)
    res = pipe(image, speech_like(0.9), seed=0)
    assert res.frames.shape == (round(0.9 * 25), 32, 32, 3) and res.frames.dtype == np.uint8
    assert res.chunks == 6 and res.nfe == 6 * 3 * 3
    with pytest.raises(LipstepError, match="empty"):
        pipe(image, np.zeros(0, np.float32))


@pytest.mark.slow
def test_generate_real_photo_and_real_speech(model, inputs, tmp_path):
    out = tmp_path / "talk.mp4"
    r = _run("generate", "--model", model, "--image", inputs / "astronaut.png", "--audio", inputs / "speech.wav",
             "--out", out, "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert "NFE" in r.stdout and "frames/s" in r.stdout
    info = probe(out)
    assert info["has_video"] and info["has_audio"] and (info["width"], info["height"]) == (32, 32)
    assert info["frames"] == round(1.1 * 25)
    audio_in, audio_out = read_audio(inputs / "speech.wav"), read_audio(out)
    assert abs(len(audio_out) - len(audio_in)) < SR * 0.03
    lag = np.argmax(np.correlate(audio_out[:8000], audio_in[:4000], "valid"))
    assert lag < SR * 0.01  # the original audio, in sync (AAC round trip)


@pytest.mark.parametrize("case", ["missing image", "non-image", "empty audio", "codec dir", "data dir",
                                  "bad name", "bad suffix"])
def test_generate_bad_inputs_fail_cleanly(model, inputs, tmp_path, case):
    args = {"--model": model, "--image": inputs / "astronaut.png", "--audio": inputs / "speech.wav",
            "--out": tmp_path / "out.mp4"}
    expect = {"missing image": "nope.png: file not found", "non-image": "notes.txt", "empty audio": "empty.wav",
              "codec dir": "not a lipstep model directory", "data dir": "data directory",
              "bad name": "neither a directory nor a bundled model", "bad suffix": ".mp4"}[case]
    if case == "missing image":
        args["--image"] = inputs / "nope.png"
    elif case == "non-image":
        args["--image"] = inputs / "notes.txt"
    elif case == "empty audio":
        args["--audio"] = inputs / "empty.wav"
    elif case == "codec dir":
        args["--model"] = model / "codec"
    elif case == "data dir":
        args["--model"] = model.parent.parent / "prepared"
    elif case == "bad name":
        args["--model"] = "no-such-model"
    elif case == "bad suffix":
        args["--out"] = tmp_path / "out.gif"
    r = _run("generate", *[x for kv in args.items() for x in kv])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())  # no partial output


def test_read_info_rejects_mismatched_components(model, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    cfg = json.loads((bad / "denoiser" / "config.json").read_text())
    cfg["audio_window"] = 10
    (bad / "denoiser" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LipstepError):
        AvatarPipeline.from_pretrained(bad)
    info = json.loads((bad / "lipstep.json").read_text())
    info["kind"] = "widget"
    (bad / "lipstep.json").write_text(json.dumps(info))
    with pytest.raises(LipstepError, match="kind"):
        read_info(bad)


def test_a_denoiser_config_naming_removed_options_loads_only_at_their_neutral_values(model, tmp_path):
    import shutil

    from lipstep.pipeline import load_denoiser

    old = tmp_path / "old"
    shutil.copytree(model / "denoiser", old)
    cfg = json.loads((old / "config.json").read_text())
    assert "audio_adaln" not in cfg and "audio_probe" not in cfg        # no longer written
    # saved before 2026-12-05: the removed options at the values that left the net as it is now
    (old / "config.json").write_text(json.dumps({**cfg, "audio_adaln": False, "audio_probe": 0}))
    assert load_denoiser(old).cfg == load_denoiser(model / "denoiser").cfg
    for key, value in (("audio_adaln", True), ("audio_probe", 3)):
        (old / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(LipstepError, match=f"trained with the removed option {key}={json.dumps(value)}"):
            load_denoiser(old)
    (old / "config.json").write_text(json.dumps({**cfg, "audio_gain": 2}))  # other unknown keys still fail
    with pytest.raises(LipstepError, match="unknown config key 'audio_gain'"):
        load_denoiser(old)
    load_denoiser(bundled_models()["teacher"] / "denoiser")               # its config names both, neutral


def test_bundled_models_are_listed_small_and_loadable():
    from lipstep.modeldir import BUNDLED_ROOT, default_model

    bundled = bundled_models()
    assert {"teacher", "fada", "turbo1", "lite"} <= set(bundled)
    total = sum(f.stat().st_size for f in BUNDLED_ROOT.rglob("*") if f.is_file())  # models, evaluators, anchor
    assert total <= 60 * 2**20  # three 6-7 M-parameter models and a 1.5 M one in float16, the evaluators
    rows = {r["name"]: r for r in describe_models()}
    assert rows["teacher"]["kind"] == "teacher" and rows["teacher"]["nfe_per_chunk"] == 75
    assert (rows["fada"]["kind"], rows["fada"]["recipe"], rows["fada"]["nfe_per_chunk"]) == ("student", "perflow", 6)
    assert (rows["turbo1"]["recipe"], rows["turbo1"]["nfe_per_chunk"], rows["turbo1"]["quality_bar"]) == (
        "dmd", 1, "met")
    assert (rows["lite"]["recipe"], rows["lite"]["nfe_per_chunk"], rows["lite"]["quality_bar"]) == ("lite", 1, "met")
    assert resolve_model("teacher") == bundled["teacher"] and default_model() == "lite"
    r = _run("models")
    assert r.returncode == 0 and "teacher" in r.stdout and "75" in r.stdout and "fada" in r.stdout
    assert "default (the fastest not judged below the bar): lite" in r.stdout


def test_generate_with_the_default_bundled_model(inputs, tmp_path):
    out = tmp_path / "default.mp4"
    r = _run("generate", "--image", inputs / "astronaut.png", "--audio", inputs / "speech.wav", "--out", out)
    assert r.returncode == 0, r.stderr
    assert probe(out)["frames"] == round(1.1 * 25)
    assert "4 chunks x 1 steps, NFE 4" in r.stdout  # the default bundled model, lite: 1 NFE per chunk


def test_demo_generates_a_talking_video(model, tmp_path):
    from lipstep.demo import run_demo

    run_demo(tmp_path / "demo", model=str(model), bench_seconds=0)
    info = probe(tmp_path / "demo" / "talk.mp4")
    assert info["has_audio"] and info["frames"] > 25
    assert abs(info["seconds"] - len(read_audio(tmp_path / "demo" / "speech.wav")) / SR) < 0.1
    assert (tmp_path / "demo" / "contact_sheet.png").is_file() and (tmp_path / "demo" / "portrait.png").is_file()
    assert not (tmp_path / "demo" / "bench").exists()


def test_demo_benchmarks_every_bundled_model_side_by_side(model, tmp_path, monkeypatch, capsys):
    import lipstep.modeldir
    from lipstep.data.examples import example_portrait, example_speech
    from lipstep.demo import bench_bundled

    example_portrait(tmp_path, progress=False)
    example_speech(tmp_path)
    monkeypatch.setattr(lipstep.modeldir, "bundled_models", lambda: {"one": Path(model)})
    assert bench_bundled(tmp_path, 0.4) is None  # a single model: nothing to compare
    monkeypatch.setattr(lipstep.modeldir, "bundled_models", lambda: {"one": Path(model), "two": Path(model)})
    report = bench_bundled(tmp_path, 0.4)
    assert set(report["models"]) == {"one", "two"} and (tmp_path / "bench" / "bench.json").is_file()
    assert "one" in capsys.readouterr().out


def test_a_bundled_name_wins_over_a_same_named_folder_that_is_not_a_model(tmp_path, monkeypatch, model):
    from lipstep.pipeline import resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher").mkdir()  # e.g. a run or data folder called like the bundled model
    assert resolve_model("teacher") == bundled_models()["teacher"]
    other = tmp_path / "mine"
    other.mkdir()
    assert resolve_model("mine") == Path("mine")  # not bundled: the folder (read_info then names the problem)
    import shutil

    shutil.copytree(model, tmp_path / "fada_local")
    (tmp_path / "teacher").rmdir()
    shutil.copytree(model, tmp_path / "teacher")  # a real model folder of that name is used as given
    assert resolve_model("teacher") == Path("teacher")


def test_export_records_the_quality_bar_judgement_and_default_steps(tmp_path):
    r = _run("export", "-m", "fada", "-o", tmp_path / "m", "--half", "--quality-bar", "not-met", "--evidence",
             "experiments/x", "--steps", "8")
    assert r.returncode == 0, r.stderr
    info = read_info(tmp_path / "m")
    assert info.trained["quality_bar"] == {"met": False, "evidence": "experiments/x"}
    assert info.sampler.steps == 8 and info.nfe_per_chunk() == 8
    bad = _run("export", "-m", "fada", "-o", tmp_path / "n", "--quality-bar", "good")
    assert bad.returncode == 2 and "met or not-met" in bad.stderr and "Traceback" not in bad.stderr


def test_export_attaches_an_eye_net_at_its_training_rate(tmp_path, capsys):
    """(A given rate, a missing eye net and a bad rate: tests/test_modeldir.py and tests/test_bad_inputs.py.)"""
    from lipstep.cli import main
    from lipstep.nets.eyes import EyeConfig, EyeNet, save_eye_net

    def export(*args):  # in process: a subprocess costs 2 s of start-up
        with pytest.raises(SystemExit) as info:
            main(["export", *map(str, args)])
        return info.value.code, capsys.readouterr().err

    save_eye_net(EyeNet(EyeConfig(hidden=4, dilations=(1,))), tmp_path / "eyes", train={"blinks_per_second": 0.3})
    assert export("-m", "lite", "-o", tmp_path / "off", "--blink-rate", "0")[0] == 0
    assert read_info(tmp_path / "off").blinks_per_second == 0
    code, err = export("-m", tmp_path / "off", "-o", tmp_path / "m", "--eyes", tmp_path / "eyes")
    assert code == 0, err   # a model that drew no blinks takes the eye net's training rate
    info = read_info(tmp_path / "m")
    assert info.blinks_per_second == 0.3 and (tmp_path / "m" / "eyes" / "config.json").is_file()
    assert info.trained["eyes"]["from"] == str((tmp_path / "eyes").resolve())
    pipe = AvatarPipeline.from_pretrained(tmp_path / "m")
    assert pipe.eyes is not None and pipe.eyes.cfg.hidden == 4


def test_every_bundled_weights_file_is_checksummed_and_intact():
    """Each folder of bundled weights lists its files' sha256 (so a flipped byte is refused on load), and they
    match what ships."""
    from lipstep.fsutil import read_checksums, verify_checksums
    from lipstep.modeldir import BUNDLED_ROOT

    folders = sorted({p.parent for p in BUNDLED_ROOT.rglob("*.safetensors")})
    assert len(folders) >= 10
    for folder in folders:
        sums = read_checksums(folder)
        assert sums is not None and {p.name for p in folder.glob("*.safetensors")} <= set(sums), folder
        assert verify_checksums(folder)
