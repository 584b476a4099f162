"""`lipstep bench`: a tiny teacher against itself at fewer steps: layout, NFE, timing budget, bad specs."""

import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lipstep.data.dataset import WindowConfig
from lipstep.data.media import write_audio, write_image
from lipstep.eval.bench import COMPONENTS, PeakMemory, run_bench
from lipstep.train.loop import TrainConfig
from lipstep.train.teacher import TeacherConfig, train_teacher
from lipstep.train.mouth_head import MouthHeadConfig
from tests.mediafixtures import SR, astronaut_clip, make_tiny_avatar_data, speech_like

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL_KEYS = {"nfe", "steps", "seconds_total", "seconds_total_p90", "ms_per_frame", "fps", "rtf",
              "first_chunk_s", "peak_mem_mb", "frames", "audio_seconds", "components", "component_sum_s",
              "unaccounted_frac", "load_s", "repeats"}
AUDIO_S = 0.6


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny teacher (3 steps x 3 CFG passes, 4-frame chunks) trained for 2 steps: mechanics, not quality."""
    root = make_tiny_avatar_data(tmp_path_factory.mktemp("bench_model"))
    cfg = TeacherConfig(preset="tiny", window=WindowConfig(frames=4, motion_frames=2), val_clips=0,
                        mouth_head=MouthHeadConfig(steps=30, batch_size=32, min_corr=-1))  # mechanics, not fit
    cfg.train = TrainConfig(steps=2, batch_size=2, checkpoint_every=2)
    cfg.sampler.steps = 3
    return train_teacher(root / "prepared", root / "codec", root / "run", cfg, progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bench_inputs")
    write_image(d / "face.png", astronaut_clip(1, 48, 48)[0])
    write_audio(d / "speech.wav", speech_like(AUDIO_S), SR)
    (d / "slow.json").write_text(json.dumps({"mouth_err": 0.20, "sync_c": 3.0, "nfe": 9}))
    (d / "fast.json").write_text(json.dumps({"mouth_err": 0.25, "sync_c": 2.5, "nfe": 6, "note": "x"}))
    return d


def _run(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lipstep", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def cli_run(model, inputs, tmp_path_factory):
    """`lipstep bench` in a subprocess: the model at its 3 steps against itself @2, with eval results."""
    out = tmp_path_factory.mktemp("bench_out")
    fast = f"{model}@2"
    r = _run("bench", "--models", model, fast, "--image", inputs / "face.png",
             "--audio", inputs / "speech.wav", "--out", out, "--warmup", "1", "--repeats", "3",
             "--threads", "1",
             "--eval", f"{model}={inputs / 'slow.json'}", f"{fast}={inputs / 'fast.json'}")
    assert r.returncode == 0, r.stderr
    return out, r, json.loads((out / "bench.json").read_text()), str(model), fast


def test_bench_json_has_every_key(cli_run):
    out, _, report, slow, fast = cli_run
    for key in ("device", "cpu", "threads", "torch", "settings", "definitions", "load_avg_start"):
        assert key in report, key
    assert report["threads"] == 1 and report["device"] == "cpu"
    assert list(report["models"]) == [slow, fast]
    for m in report["models"].values():
        assert MODEL_KEYS <= set(m), MODEL_KEYS - set(m)
        assert set(m["components"]) == set(COMPONENTS) and all(v > 0 for v in m["components"].values())
        assert m["repeats"] == 3 and len(m["runs"]) == 3 and m["dtype"] == "float32"
        assert m["frames"] == round(AUDIO_S * 25) and m["audio_seconds"] == pytest.approx(AUDIO_S, abs=1e-3)
        assert m["load_s"] > 0 and m["peak_mem_mb"] >= 0 and m["peak_mem_total_mb"] > 0
        assert m["peak_mem_method"].startswith(("Linux VmHWM", "RSS sampled"))
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_nfe_follows_the_steps(cli_run):
    _, _, report, slow, fast = cli_run
    a, b = report["models"][slow], report["models"][fast]
    assert (a["steps"], b["steps"]) == (3, 2)
    assert (a["nfe"], b["nfe"]) == (3 * 3, 2 * 3)          # per chunk: steps x 3 CFG passes
    assert a["nfe"] / b["nfe"] == a["steps"] / b["steps"]
    assert a["nfe_total"] == a["nfe"] * a["chunks"] and a["chunks"] == 4  # 15 frames in 4-frame chunks


def test_components_add_up_to_the_measured_total(cli_run):
    _, _, report, *_ = cli_run
    for m in report["models"].values():
        for run in m["runs"]:
            parts = sum(run["components"].values())
            assert parts <= run["seconds_total"]  # the components sit inside the outer timer
            assert (run["seconds_total"] - parts) / run["seconds_total"] < 0.10
        assert 0 <= m["unaccounted_frac"] < 0.10
        sums = [sum(r["components"].values()) for r in m["runs"]]
        totals = [r["seconds_total"] for r in m["runs"]]
        assert m["component_sum_s"] == pytest.approx(np.median(sums), rel=1e-4)
        assert m["seconds_total"] == pytest.approx(np.median(totals), rel=1e-4)
        assert m["seconds_total_p90"] >= m["seconds_total"]


def test_rates_are_consistent(cli_run):
    _, _, report, *_ = cli_run
    for m in report["models"].values():
        assert m["fps"] == pytest.approx(m["frames"] / m["seconds_total"], rel=1e-3)
        assert m["ms_per_frame"] == pytest.approx(1000 * m["seconds_total"] / m["frames"], rel=1e-3)
        assert m["rtf"] == pytest.approx(m["seconds_total"] / m["audio_seconds"], rel=1e-3)
        assert 0 < m["first_chunk_s"] < m["seconds_total"]           # 1 of 4 chunks, no mux


def test_table_markdown_and_quality_plot(cli_run):
    out, r, report, slow, fast = cli_run
    assert "| model | NFE |" in r.stdout and f"| {fast} | 6 |" in r.stdout
    assert (out / "bench.md").read_text().count("\n| ") == 2 + len(report["models"])  # header, rule, rows
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out / "bench.png") as im:
        im.verify()
    assert "bench" in r.stderr  # the progress bar


@pytest.mark.filterwarnings("ignore:no face found")
def test_unaccounted_time_is_reported(model, inputs, tmp_path, monkeypatch):
    """The total is an outer timer, not the sum: time spent outside the components shows up as unaccounted.

    Also: the default inputs are the cached OUT/inputs files, and --seconds cuts the audio."""
    from lipstep.pipeline import AvatarPipeline

    (tmp_path / "inputs").mkdir()
    write_image(tmp_path / "inputs" / "portrait.png", astronaut_clip(1, 48, 48)[0])
    write_audio(tmp_path / "inputs" / "speech.wav", speech_like(AUDIO_S), SR)
    n_frames = AvatarPipeline.n_frames

    def slow_n_frames(self, n):  # called by AvatarPipeline.__call__ between two timed stages
        time.sleep(0.3)
        return n_frames(self, n)

    monkeypatch.setattr(AvatarPipeline, "n_frames", slow_n_frames)
    report = run_bench([f"{model}@1"], tmp_path, seconds=0.3, warmup=0, repeats=1, threads=1, progress=False)
    m = report["models"][f"{model}@1"]
    assert m["audio_seconds"] == pytest.approx(0.3) and m["frames"] == round(0.3 * 25)
    assert m["seconds_total"] - m["component_sum_s"] >= 0.3
    assert m["unaccounted_frac"] > 0.10
    assert (tmp_path / "bench.json").is_file() and not (tmp_path / "inputs" / "world").exists()


@pytest.mark.parametrize("method", ["vmhwm", "psutil"])
def test_peak_memory_sees_an_allocation(method):
    import torch

    from lipstep.eval.bench import _can_reset_hwm

    if method == "vmhwm" and not _can_reset_hwm():
        pytest.skip("no resettable VmHWM (not Linux)")
    # A fresh anonymous mapping, touched page by page: malloc may hand a numpy array pages that are
    # already resident (freed earlier in this worker, or a preloaded allocator keeps them), so RSS
    # need not move for one; a new mapping's pages always count once written.
    size = 40 * 2**20
    with PeakMemory(torch.device("cpu"), method=method) as mem:
        block = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        time.sleep(0.05)
        block.close()
    assert mem.increase_mb >= 30 and mem.total_mb > mem.increase_mb


@pytest.mark.parametrize("case", ["unknown model", "@0", "@abc", "missing image", "eval label"])
def test_bad_specs_fail_with_one_line(model, inputs, tmp_path, case, capsys):
    models, image, extra = [str(model), f"{model}@2"], inputs / "face.png", []
    expect = {"unknown model": "neither a directory nor a bundled model", "@0": "an integer in 1..1000",
              "@abc": "an integer in 1..1000", "missing image": "nope.png: file not found",
              "eval label": "not a benchmarked model"}[case]
    if case == "unknown model":
        models[1] = "no-such-model@2"
    elif case in ("@0", "@abc"):
        models[1] = f"{model}{case}"
    elif case == "missing image":
        image = inputs / "nope.png"
    else:
        extra = ["--eval", f"other={inputs / 'slow.json'}"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.json").write_text("{}\n")  # an earlier result must survive a failed run
    import torch

    from lipstep.cli import main

    threads = torch.get_num_threads()
    try:  # in process (a subprocess per case cost 2 s of start-up each)
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", "--models", *models, "--image", str(image), "--audio", str(inputs / "speech.wav"),
                  "--out", str(out), "--repeats", "1", *map(str, extra)])
    finally:
        torch.set_num_threads(threads)
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], err
    assert sorted(p.name for p in out.iterdir()) == ["bench.json"]  # no inputs/, bench.md, temporary files
    assert (out / "bench.json").read_text() == "{}\n"


def test_default_plot_shows_the_headline_metrics():
    from lipstep.eval.bench import quality_metrics

    evals = {"a": {"mouth_err": 0.2, "mouth_err_gt": 0.1, "fd": 3.0, "fd_frames": 400, "zeta": 1.0},
             "b": {"mouth_err": 0.3, "mouth_err_gt": 0.1, "fd": 4.0, "fd_frames": 400, "zeta": 2.0}}
    assert quality_metrics(evals) == ["mouth_err", "fd"]
    assert quality_metrics({"a": {"zeta": 1.0}, "b": {"zeta": 2.0}}) == ["zeta"]  # nothing headline: all shared


def test_flops_count_attention_and_the_estimate_scales_by_throughput():
    import torch
    import torch.nn.functional as F

    from lipstep.eval.edge import count_flops, estimate, parse_device_gflops

    q = torch.randn(2, 3, 10, 8)
    assert count_flops(F.scaled_dot_product_attention, q, q, q) == 4 * 2 * 3 * 10 * 10 * 8  # QK^T and AV, 2 per MAC
    assert count_flops(torch.mm, torch.randn(4, 5), torch.randn(5, 6)) == 2 * 4 * 5 * 6
    e = estimate(ms_per_frame=20.0, flops_per_frame=1e9, host=100.0, devices={"slow": 25.0}, fps=25.0)
    assert e["achieved_gflops"] == pytest.approx(50.0) and e["efficiency"] == pytest.approx(0.5)
    assert e["devices"]["slow"]["ms_per_frame"] == pytest.approx(80.0) and e["devices"]["slow"]["rtf"] == pytest.approx(2.0)
    assert parse_device_gflops(None) == {"rpi5": 60.0} and parse_device_gflops(["a=1.5", "b=3"]) == {"a": 1.5, "b": 3.0}
