"""ONNX export and the onnx runtimes on tiny models: parity of each graph and of generated frames with PyTorch,
the export's record, the edge bench rows, and the refusals (damaged files, other weights, untraceable nets)."""

import json

import numpy as np
import pytest
import torch
from tests.mediafixtures import speech_like
from tests.tinypipe import portrait, tiny_pipeline

from lipstep.audio import MelEncoder
from lipstep.cli import main
from lipstep.codecs.vae import CodecConfig, build_codec
from lipstep.data.features import log_mel
from lipstep.data.prepare import mel_params
from lipstep.diffusion.cond import Cond
from lipstep.errors import IntegrityError, LipstepError
from lipstep.fsutil import sha256_file
from lipstep.nets.dit import AvatarDiT, DiTConfig
from lipstep.pipeline import AvatarPipeline, ModelInfo, SamplerInfo
from lipstep.runtime import export_onnx, load_onnx_model
from lipstep.runtime.export import DecoderGraph
from lipstep.runtime.onnx import make_session

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4  # fp32 parity on frames in [-1, 1] and on raw outputs


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny pipeline's model (DDIM + multi-CFG: the net runs at batch 3), exported with `lipstep export MODEL OUT
    --onnx --int8` (the positional form)."""
    root = tmp_path_factory.mktemp("onnx")
    tiny_pipeline().save_pretrained(root / "src")
    with pytest.raises(SystemExit) as done:
        main(["export", str(root / "src"), str(root / "model"), "--onnx", "--int8"])
    assert done.value.code == 0
    return root / "model"


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A one-step CFG-token student that also reads visemes and blinks: the optional inputs cfg_scales, visemes and
    blink."""
    root = tmp_path_factory.mktemp("onnx_student")
    cfg = DiTConfig.preset("tiny", latent_channels=12, latent_size=8, patch=2, frames=4, motion_frames=2,
                           audio_mean=-8.8, audio_std=3.3, cfg_layer="tokens", use_visemes=True, mouth_state=3,
                           blink=True)
    net = AvatarDiT(cfg).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    info = ModelInfo(kind="student", schedule="vp_x0", frames=4, motion_frames=2, image_size=16, blinks_per_second=3.0,
                     sampler=SamplerInfo(name="fewstep", steps=1, guidance="embedded"))
    codec = build_codec(CodecConfig(kind="pixel", image_size=16, factor=2))
    AvatarPipeline(info, codec, MelEncoder(16, 80), net).save_pretrained(root / "model")
    return root / "model", export_onnx(root / "model", threads=1)


def test_export_writes_every_file_with_its_record(model):
    manifest = json.loads((model / "onnx" / "export.json").read_text())
    assert manifest["opset"] == 17 and set(manifest["runtimes"]) == {"onnx", "onnx-int8"}
    assert set(manifest["files"]) == {"denoiser.onnx", "decoder.onnx", "audio.onnx", "denoiser.int8.onnx"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(model / "onnx" / name) and entry["bytes"] > 0
    denoiser = manifest["files"]["denoiser.onnx"]
    assert [i["name"] for i in denoiser["inputs"]] == ["x_t", "t", "reference", "audio", "motion", "drop_audio",
                                                       "drop_ref"]
    assert denoiser["inputs"][0]["shape"] == ["B", 4, 12, 8, 8] and denoiser["outputs"][0]["name"] == "out"
    for name in ("denoiser.onnx", "decoder.onnx", "audio.onnx"):
        assert manifest["files"][name]["parity"]["max_abs_diff"] <= TOL, name
    assert manifest["parity_frames"]["max_abs_diff"]["onnx"] <= TOL
    assert 0 < manifest["files"]["denoiser.int8.onnx"]["bytes"] < manifest["files"]["denoiser.onnx"]["bytes"]
    assert not list((model / "onnx").glob(".*")) and not list(model.parent.glob(".*"))  # nothing half-written


def _random_cond(cfg: DiTConfig, batch: int, gen: torch.Generator, with_extras: bool) -> tuple:
    x = torch.randn(batch, 4, 12, 8, 8, generator=gen)
    cond = Cond(reference=torch.randn(batch, 12, 8, 8, generator=gen),
                audio=-8.8 + 3.3 * torch.randn(batch, 4, 16, 80, generator=gen),
                motion=torch.randn(batch, 2, 12, 8, 8, generator=gen),
                drop_audio=torch.tensor([False, True, True][:batch]), drop_ref=torch.tensor([False, False, True][:batch]),
                visemes=torch.randint(0, 15, (batch, 4), generator=gen) if with_extras else None,
                cfg_scales=1 + 3 * torch.rand(batch, 2, generator=gen) if with_extras else None,
                blink=torch.rand(batch, 4, generator=gen) if with_extras else None)
    return x, 1000 * torch.rand(batch, generator=gen), cond


def test_denoiser_parity_at_batch_1_and_3(model):
    net = AvatarPipeline.from_pretrained(model).denoiser
    _, _, _, _, onnx_net = load_onnx_model(model, "onnx", threads=1)
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        x, t, cond = _random_cond(net.cfg, batch, gen, with_extras=False)
        with torch.no_grad():
            want = net(x, t, cond)
        got = onnx_net(x, t, cond)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert (got - want).abs().max() <= TOL and want.abs().max() > 0.1  # the net reacts: a real comparison


def test_cfg_token_viseme_and_blink_inputs(student):
    root, manifest = student
    names = [i["name"] for i in manifest["files"]["denoiser.onnx"]["inputs"]]
    assert names[-3:] == ["cfg_scales", "visemes", "blink"]
    assert manifest["parity_frames"]["max_abs_diff"]["onnx"] <= TOL
    net = AvatarPipeline.from_pretrained(root).denoiser
    _, _, _, _, onnx_net = load_onnx_model(root, threads=1)
    x, t, cond = _random_cond(net.cfg, 2, torch.Generator().manual_seed(2), with_extras=True)
    with torch.no_grad():
        want = net(x, t, cond)
    assert (onnx_net(x, t, cond) - want).abs().max() <= TOL


def test_audio_front_end_parity(model):
    _, _, _, audio, _ = load_onnx_model(model, threads=1)
    stft = mel_params(16000)
    wav = speech_like(0.6, seed=4)
    for center in (True, False):
        want = log_mel(wav, 16000, 80, center=center, **stft)
        got = audio.log_mel(wav, 16000, 80, center=center, **stft)
        assert got.shape == want.shape and np.abs(got - want).max() <= TOL
    windows = audio.encode(wav, 15)
    assert (windows - MelEncoder(16, 80).encode(wav, 15)).abs().max() <= TOL
    with pytest.raises(ValueError, match="made for"):
        audio.log_mel(wav, 16000, 64, **stft)  # other settings than exported: refused, not silently different


def test_kl_decoder_parity(tmp_path):
    """A learned (AutoencoderKL) decoder: frames in [-1, 1] within 1e-4 of PyTorch's."""
    torch.manual_seed(0)
    codec = build_codec(CodecConfig(kind="kl", image_size=16, block_out_channels=(8, 8), norm_num_groups=8,
                                    latent_channels=4))
    z = torch.randn(3, 4, 8, 8)
    torch.onnx.export(DecoderGraph(codec).eval(), (z,), str(tmp_path / "d.onnx"), input_names=["latents"],
                      output_names=["frames"], dynamic_axes={"latents": {0: "N"}, "frames": {0: "N"}}, dynamo=False)
    z = torch.randn(5, 4, 8, 8)
    with torch.no_grad():
        want = codec.decode(z)
    got = make_session(tmp_path / "d.onnx", 1).run(None, {"latents": z.numpy()})[0]
    assert got.shape == (5, 3, 16, 16) and np.abs(got - want.numpy()).max() <= TOL


def test_sessions_do_not_busy_wait(model):
    """Spinning ONNX Runtime workers fight torch's threads for the cores (3x slower at 2 threads on 2 cores)."""
    options = make_session(model / "onnx" / "decoder.onnx", 2).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


def test_generated_frames_match_torch(model):
    """The onnx runtime behind the same stream path: frames within 1e-4 in [-1, 1], the same uint8 frames."""
    speech = speech_like(0.7, seed=1)
    torch_pipe = AvatarPipeline.from_pretrained(model)
    onnx_pipe = AvatarPipeline.from_pretrained(model, runtime="onnx", threads=1)
    assert onnx_pipe.runtime == "onnx" and onnx_pipe.device == torch.device("cpu")
    za, stats = torch_pipe.emit_latents(portrait(), speech, seed=3)
    zb, _ = onnx_pipe.emit_latents(portrait(), speech, seed=3)
    assert stats.nfe == 5 * 2 * 3  # 5 chunks x 2 steps x 3 CFG passes: the batch-3 path ran
    assert (torch_pipe.codec.decode(za) - onnx_pipe.codec.decode(zb)).abs().max() <= TOL
    a, b = torch_pipe(portrait(), speech, seed=3), onnx_pipe(portrait(), speech, seed=3)
    assert a.frames.shape == b.frames.shape == (18, 16, 16, 3)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1
    int8 = AvatarPipeline.from_pretrained(model, runtime="onnx-int8", threads=1)(portrait(), speech, seed=3)
    assert int8.frames.shape == a.frames.shape  # its quality cost is measured by eval, not here


def test_bench_rows_per_runtime_threads_and_emit(model, tmp_path):
    from tests.mediafixtures import SR

    from lipstep.data.media import write_audio, write_image
    from lipstep.eval.bench import run_bench

    write_image(tmp_path / "face.png", portrait())
    write_audio(tmp_path / "speech.wav", speech_like(0.3), SR)
    report = run_bench([str(model)], tmp_path / "out", image=tmp_path / "face.png", audio=tmp_path / "speech.wav",
                       seconds=0.3, warmup=0, repeats=1, threads=[1], runtimes=["torch", "onnx"],
                       emits=["frames", "latents"], device_gflops=["pi=10"], progress=False)
    rows = report["models"]
    assert list(rows) == [f"{model} {r} {e}" for r in ("torch", "onnx") for e in ("frames", "latents")]
    for label, m in rows.items():
        assert (m["runtime"], m["threads"], m["emit"]) == (label.split()[1], 1, label.split()[2])
        assert m["flops_per_nfe"] > 0 and m["gflops_per_frame"] > 0 and m["peak_rss_mb"] > 0
        assert m["latent_kb_per_s"] == pytest.approx(12 * 8 * 8 * 4 * 25 / 1024)
        assert m["first_frame_s"] == m["first_chunk_s"] > 0
        assert set(m["estimate"]["devices"]) == {"pi"} and m["estimate"]["devices"]["pi"]["ms_per_frame"] > 0
        if m["emit"] == "latents":
            assert m["components"]["decode"] == 0 and m["components"]["mux"] < 0.01
    assert rows[f"{model} onnx frames"]["dtype"] == "float32"
    md = (tmp_path / "out" / "bench.md").read_text()
    assert md.count("\n| ") == 2 + len(rows) and "ESTIMATE, not a measurement" in md and "pi = 10 GFLOP/s" in md


def test_damaged_or_stale_exports_are_refused(model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    data = bytearray((copy / "onnx" / "decoder.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "onnx" / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"decoder\.onnx is damaged"):
        load_onnx_model(copy)
    shutil.rmtree(copy / "onnx")
    with pytest.raises(LipstepError, match="has no ONNX export .*lipstep export"):
        AvatarPipeline.from_pretrained(copy, runtime="onnx")
    shutil.copytree(model / "onnx", copy / "onnx")
    pipe = AvatarPipeline.from_pretrained(copy)
    with torch.no_grad():
        next(pipe.denoiser.parameters()).add_(1.0)
    pipe.save_pretrained(tmp_path / "retrained")
    shutil.copytree(model / "onnx", tmp_path / "retrained" / "onnx")
    with pytest.raises(LipstepError, match="exported from other denoiser weights"):
        load_onnx_model(tmp_path / "retrained")
    with pytest.raises(LipstepError, match="no onnx-int8 files"):
        json_path = copy / "onnx" / "export.json"
        manifest = json.loads(json_path.read_text())
        del manifest["runtimes"]["onnx-int8"]
        json_path.write_text(json.dumps(manifest))
        load_onnx_model(copy, "onnx-int8")


def test_untraceable_or_bundled_models_fail_in_one_line(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported: an op the exporter does not know\nmore lines")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(LipstepError) as e:
        export_onnx(model)
    assert "denoiser cannot be exported to ONNX (RuntimeError: Unsupported" in str(e.value)
    assert "\n" not in str(e.value)
    assert (model / "onnx" / "export.json").is_file()  # the earlier export is untouched
    with pytest.raises(LipstepError, match="bundled model"):
        export_onnx("turbo1")
