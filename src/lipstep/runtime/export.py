"""ONNX export of a model directory's denoiser, codec decoder and log-mel front end (``lipstep export --onnx``).

Three graphs, traced with ``torch.onnx.export(dynamo=False)`` at opset `OPSET` (layout in
`lipstep.runtime.onnx`):

- `DenoiserGraph`: ``AvatarDiT.forward`` with the `Cond` fields as separate inputs
  (`lipstep.runtime.onnx.denoiser_inputs`), for the model's chunk layout; the batch axis is dynamic
  (classifier-free guidance calls the net with three condition patterns at once).
- `DecoderGraph`: ``Codec.decode``: scaled latents -> frames in [-1, 1], any number of frames.
- `LogMelGraph`: PCM -> log-mel, the spectrogram of `lipstep.data.features.log_mel` with the STFT written
  as a strided ``conv1d`` whose kernels are the Hann-windowed DFT basis (cos and −sin rows, the window
  centred in ``n_fft`` as ``torch.stft`` places it), then power, the Slaney mel filters and the log.
  A convolution exports to every runtime; an STFT operator does not. Uncentred frames: the runtime pads a
  centred call itself (`OnnxLogMel`). Only for log-mel models; other audio encoders stay PyTorch.

``int8=True`` adds ``denoiser.int8.onnx``: onnxruntime's ``quantize_dynamic`` with int8 weights on the
MatMul/Gemm nodes (activations quantised per call). Every file's sha256, the input/output names and shapes,
and the parity measured at export go to ``export.json``: the max abs difference to PyTorch on random inputs
per graph, and on the frames (in [-1, 1]) of one chunk sampled end to end with the model's sampler.
The ``onnx/`` folder is written atomically (a temporary folder renamed into place).

This module lives in `lipstep.runtime`, after the training layers and before `lipstep.pipeline` in the import
order (design.md §1): it needs the model directory reader and the networks, codecs and audio front end of the
earlier layers, and nothing later; the pipeline then loads what it writes (`lipstep.runtime.onnx`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lipstep import __version__
from lipstep.data.features import LOG_FLOOR, MEL_FMAX, MEL_FMIN, log_mel, mel_basis
from lipstep.data.prepare import mel_params
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.denoiser import Denoiser
from lipstep.errors import LipstepError
from lipstep.fsutil import atomic_dir, read_checksums, sha256_file, write_json_atomic
from lipstep.modeldir import BUNDLED_ROOT, components_dir, load_model, resolve_model
from lipstep.runtime.onnx import (
    EXPORT_FORMAT,
    EXPORT_NAME,
    ONNX_DIR,
    OnnxCodec,
    OnnxNet,
    denoiser_inputs,
    import_onnxruntime,
    make_session,
)
from lipstep.samplers.chunks import ChunkSampler

OPSET = 17
FRAMES_TOLERANCE = 1e-4   # fp32 parity on frames in [-1, 1] above this is reported as a warning


# ---------------------------------------------------------------------------------------------
# the graphs


class DenoiserGraph(nn.Module):
    """``net(x_t, t, Cond(...))`` with the condition's fields as positional inputs named by ``names``."""

    def __init__(self, net: nn.Module, names: list[str]):
        super().__init__()
        self.net, self.names = net, names

    def forward(self, *inputs: Tensor) -> Tensor:
        x = dict(zip(self.names, inputs, strict=True))
        cond = Cond(reference=x["reference"], audio=x["audio"], motion=x.get("motion"), visemes=x.get("visemes"),
                    drop_audio=x["drop_audio"], drop_ref=x["drop_ref"], cfg_scales=x.get("cfg_scales"),
                    blink=x.get("blink"))
        return self.net(x["x_t"], x["t"], cond)


class DecoderGraph(nn.Module):
    """Scaled latents [N, C, h, w] -> frames [N, 3, H, W] in [-1, 1] (``Codec.decode``)."""

    def __init__(self, codec: nn.Module):
        super().__init__()
        self.codec = codec

    def forward(self, latents: Tensor) -> Tensor:
        return self.codec.decode(latents)


class LogMelGraph(nn.Module):
    """PCM [B, L] -> log-mel [B, N, n_mels] of uncentred frames (see the module docstring)."""

    def __init__(self, sample_rate: int, n_mels: int, n_fft: int, win_length: int, hop_length: int,
                 fmin: float = MEL_FMIN, fmax: float = MEL_FMAX):
        super().__init__()
        self.hop = hop_length
        window = torch.zeros(n_fft, dtype=torch.float64)
        left = (n_fft - win_length) // 2                       # torch.stft centres a shorter window
        window[left:left + win_length] = torch.hann_window(win_length, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * k * torch.arange(n_fft, dtype=torch.float64)[None] / n_fft   # [F, n_fft]
        kernels = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])        # [2F, n_fft]
        self.register_buffer("kernels", kernels[:, None].float())                          # [2F, 1, n_fft]
        self.register_buffer("basis", torch.from_numpy(mel_basis(sample_rate, n_fft, n_mels, fmin, fmax)).float())

    def forward(self, pcm: Tensor) -> Tensor:
        spec = nn.functional.conv1d(pcm[:, None], self.kernels, stride=self.hop)   # [B, 2F, N]
        re, im = spec.chunk(2, dim=1)
        mel = torch.matmul(self.basis, re * re + im * im)                          # [B, n_mels, N]
        return torch.log(mel.clamp_min(LOG_FLOOR)).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# export


@contextlib.contextmanager
def _quiet():
    """Tracer warnings and onnxruntime's quantisation log lines off (the CLI prints one line per problem)."""
    root = logging.getLogger()
    handler = logging.NullHandler()   # so logging.warning() does not install a stderr handler for good
    root.addHandler(handler)
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        root.removeHandler(handler)


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def _trace(module: nn.Module, args: tuple, path: Path, names: list[str], outputs: list[str],
           dynamic: dict[str, dict[int, str]], what: str, root: Path) -> None:
    """``torch.onnx.export`` of one graph; a one-line `LipstepError` naming `what` when it cannot be traced."""
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(module.eval(), args, str(path), input_names=names, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    except Exception as e:  # noqa: BLE001 - the tracer and the exporter raise many types for one cause
        raise LipstepError(f"{root}: the {what} cannot be exported to ONNX ({_first_line(e)})") from None


def _max_diff(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _random_cond_inputs(inputs, cfg, info, batch: int, gen: torch.Generator) -> list[Tensor]:
    """Random inputs for the denoiser: latents ~ N(0, 1), audio ~ N(audio_mean, audio_std), t ~ U(model time)."""
    schedule = info.make_schedule()
    out = []
    for name, shape, dtype in inputs:
        shape = [batch if d == "B" else d for d in shape]
        if name == "t":
            out.append(schedule.model_time(torch.rand(shape, generator=gen)).float())
        elif name == "audio":
            out.append(cfg.audio_mean + max(cfg.audio_std, 1.0) * torch.randn(shape, generator=gen))
        elif dtype == "bool":
            out.append(torch.rand(shape, generator=gen) < 0.5)
        elif name == "cfg_scales":
            out.append(1 + 3 * torch.rand(shape, generator=gen))
        elif name == "visemes":
            out.append(torch.randint(0, cfg.n_visemes, shape, generator=gen))
        elif name == "blink":
            out.append(torch.rand(shape, generator=gen))
        else:
            out.append(torch.randn(shape, generator=gen))
    return out


def _export_denoiser(net, info, folder: Path, root: Path, gen: torch.Generator) -> dict:
    inputs = denoiser_inputs(net.cfg, info.layout())
    names = [n for n, _, _ in inputs]
    graph = DenoiserGraph(net, names)
    _trace(graph, tuple(_random_cond_inputs(inputs, net.cfg, info, 2, gen)), folder / "denoiser.onnx", names,
           ["out"], {n: {0: "B"} for n in [*names, "out"]}, "denoiser", root)
    C, s = net.cfg.latent_channels, net.cfg.latent_size
    return {"inputs": [{"name": n, "shape": sh, "dtype": d} for n, sh, d in inputs],
            "outputs": [{"name": "out", "shape": ["B", info.frames, C, s, s], "dtype": "float32"}]}


def _denoiser_parity(net, session, info, gen: torch.Generator) -> dict:
    """Max abs difference of the ONNX denoiser's raw output to PyTorch's at batch 1 and 3."""
    inputs = denoiser_inputs(net.cfg, info.layout())
    graph, diffs, scale = DenoiserGraph(net, [n for n, _, _ in inputs]).eval(), [], 0.0
    for batch in (1, 3):
        args = _random_cond_inputs(inputs, net.cfg, info, batch, gen)
        with torch.no_grad():
            want = graph(*args)
        got = session.run(None, {n: a.numpy() for (n, _, _), a in zip(inputs, args, strict=True)})[0]
        diffs.append(_max_diff(got, want))
        scale = max(scale, float(want.abs().max()))
    return {"max_abs_diff": max(diffs), "max_abs_output": scale,
            "inputs": "random, batch 1 and 3: latents N(0,1), audio N(audio_mean, audio_std), t U(model time), "
                      "random drop masks and scales"}


def _export_decoder(codec, info, folder: Path, root: Path, gen: torch.Generator) -> dict:
    C, s = codec.latent_channels, info.image_size // codec.downsample
    _trace(DecoderGraph(codec), (torch.randn(2, C, s, s, generator=gen),), folder / "decoder.onnx", ["latents"],
           ["frames"], {"latents": {0: "N"}, "frames": {0: "N"}}, "codec decoder", root)
    return {"inputs": [{"name": "latents", "shape": ["N", C, s, s], "dtype": "float32"}],
            "outputs": [{"name": "frames", "shape": ["N", 3, info.image_size, info.image_size], "dtype": "float32",
                         "range": [-1, 1]}]}


def _decoder_parity(codec, session, info, gen: torch.Generator) -> dict:
    C, s = codec.latent_channels, info.image_size // codec.downsample
    z = torch.randn(info.frames, C, s, s, generator=gen)
    with torch.no_grad():
        want = codec.decode(z)
    return {"max_abs_diff": _max_diff(session.run(None, {"latents": z.numpy()})[0], want),
            "inputs": f"{info.frames} random latents N(0,1); frames in [-1, 1]"}


def _audio_settings(audio, info) -> dict | None:
    """The exported front end's settings, or None when the model's audio encoder is not log-mel."""
    if getattr(audio, "cfg", None) is None or audio.cfg.kind != "mel":
        return None
    return {"sample_rate": info.sample_rate, "n_mels": audio.feature_dim, **mel_params(info.sample_rate),
            "fmin": MEL_FMIN, "fmax": MEL_FMAX, "center": False}


def _export_audio(settings: dict, folder: Path, root: Path, gen: torch.Generator) -> dict:
    graph = LogMelGraph(**{k: v for k, v in settings.items() if k != "center"})
    _trace(graph, (torch.randn(1, settings["sample_rate"], generator=gen),), folder / "audio.onnx", ["pcm"], ["mel"],
           {"pcm": {1: "L"}, "mel": {1: "N"}}, "audio front end", root)
    return {"inputs": [{"name": "pcm", "shape": [1, "L"], "dtype": "float32", "sample_rate": settings["sample_rate"]}],
            "outputs": [{"name": "mel", "shape": [1, f"1 + (L - {settings['n_fft']}) // {settings['hop_length']}",
                                                  settings["n_mels"]], "dtype": "float32"}]}


def _audio_parity(settings: dict, session) -> dict:
    """Max abs difference (log-mel units) to `features.log_mel` on 1 s of noise and on silence."""
    stft = {k: settings[k] for k in ("n_fft", "win_length", "hop_length")}
    rng = np.random.default_rng(0)
    diffs = []
    for wav in ((0.1 * rng.standard_normal(settings["sample_rate"])).astype(np.float32),
                np.zeros(settings["sample_rate"] // 4, np.float32)):
        want = log_mel(wav, settings["sample_rate"], settings["n_mels"], center=False, **stft)
        diffs.append(_max_diff(session.run(None, {"pcm": wav[None]})[0][0], want))
    return {"max_abs_diff": max(diffs), "inputs": "1 s of N(0, 0.1) noise and 0.25 s of silence (log-mel units)"}


def _quantize(src: Path, dst: Path, root: Path) -> None:
    """Dynamic int8 quantisation of the MatMul/Gemm weights (activations quantised per call)."""
    import_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    except Exception as e:  # noqa: BLE001 - the quantiser raises many types for one cause
        raise LipstepError(f"{root}: the denoiser cannot be quantised to int8 ({_first_line(e)})") from None


def chunk_frames_parity(info, net, codec, onnx_net, onnx_codec, gen: torch.Generator) -> float:
    """Max abs difference of one chunk's frames in [-1, 1], sampled with the model's sampler and default steps and
    scales from the same noise, random reference latent and audio windows: PyTorch against ONNX."""
    cfg, schedule = net.cfg, info.make_schedule()
    C, s = cfg.latent_channels, cfg.latent_size
    reference = torch.randn(1, C, s, s, generator=gen)
    audio = cfg.audio_mean + max(cfg.audio_std, 1.0) * torch.randn(info.frames, cfg.audio_window, cfg.audio_dim,
                                                                   generator=gen)
    visemes = torch.randint(0, cfg.n_visemes, (info.frames,), generator=gen) if cfg.use_visemes else None
    frames = []
    for n, c in ((net, codec), (onnx_net, onnx_codec)):
        core = ChunkSampler(Denoiser(n, schedule), reference, sampler=info.sampler, layout=info.layout(), seed=0)
        with torch.no_grad():
            frames.append(c.decode(core.step(audio, visemes)))
    return _max_diff(frames[0], frames[1])


def _file_entry(path: Path, graph: str, precision: str, spec: dict, parity: dict) -> dict:
    return {"graph": graph, "precision": precision, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            **spec, "parity": parity}


def export_onnx(model, *, int8: bool = False, threads: int | None = None) -> dict:
    """Export the denoiser, decoder and (log-mel models) audio front end of the model directory `model` to
    ``model/onnx/`` (replacing an earlier export atomically); returns the contents of its ``export.json``.

    Args:
        model: a model directory (or bundled name; bundled models live in the package, so export a copy).
        int8: also write ``denoiser.int8.onnx`` (dynamic int8 quantisation) for the ``onnx-int8`` runtime.
        threads: ONNX Runtime intra-op threads for the parity runs (default: torch's thread count).

    Raises:
        LipstepError: a graph cannot be traced or quantised (one line naming the part).
    """
    import_onnxruntime()
    started = time.perf_counter()
    if resolve_model(model).resolve().is_relative_to(BUNDLED_ROOT.resolve()):
        raise LipstepError(f"{model} is a bundled model (inside the lipstep package); export a copy: "
                           f"lipstep export {model} OUT --onnx")
    root, info, codec, audio, net = load_model(model)
    gen = torch.Generator().manual_seed(0)
    settings = _audio_settings(audio, info)
    with atomic_dir(root / ONNX_DIR) as tmp:
        specs = {"denoiser.onnx": ("denoiser", "fp32", _export_denoiser(net, info, tmp, root, gen)),
                 "decoder.onnx": ("decoder", "fp32", _export_decoder(codec, info, tmp, root, gen))}
        if settings is not None:
            specs["audio.onnx"] = ("audio", "fp32", _export_audio(settings, tmp, root, gen))
        if int8:
            _quantize(tmp / "denoiser.onnx", tmp / "denoiser.int8.onnx", root)
            specs["denoiser.int8.onnx"] = ("denoiser", "int8 weights (MatMul/Gemm), dynamic activations",
                                           specs["denoiser.onnx"][2])
        sessions = {name: make_session(tmp / name, threads) for name in specs}
        parity = {"denoiser.onnx": _denoiser_parity(net, sessions["denoiser.onnx"], info, gen),
                  "decoder.onnx": _decoder_parity(codec, sessions["decoder.onnx"], info, gen)}
        if settings is not None:
            parity["audio.onnx"] = _audio_parity(settings, sessions["audio.onnx"])
        if int8:
            parity["denoiser.int8.onnx"] = _denoiser_parity(net, sessions["denoiser.int8.onnx"], info, gen)
        runtimes = {"onnx": {"denoiser": "denoiser.onnx", "decoder": "decoder.onnx",
                             "audio": "audio.onnx" if settings else None}}
        if int8:
            runtimes["onnx-int8"] = {**runtimes["onnx"], "denoiser": "denoiser.int8.onnx"}
        frames = {}
        for runtime, files in runtimes.items():
            onnx_net = OnnxNet(sessions[files["denoiser"]], net.cfg, denoiser_inputs(net.cfg, info.layout()))
            onnx_codec = OnnxCodec(codec, sessions["decoder.onnx"])
            frames[runtime] = chunk_frames_parity(info, net, codec, onnx_net, onnx_codec, gen)
        if frames["onnx"] > FRAMES_TOLERANCE:
            warnings.warn(f"{root}: ONNX frames differ from PyTorch's by up to {frames['onnx']:.2g} (more than "
                          f"{FRAMES_TOLERANCE:g}); check the export before deploying it", stacklevel=2)
        manifest = {
            "format": EXPORT_FORMAT, "opset": OPSET, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "lipstep_version": __version__, "torch": torch.__version__, "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime"),
            "source": {"denoiser_sha256": (read_checksums(components_dir(root) / "denoiser") or {}).get(
                "model.safetensors"),
                       "codec_sha256": codec.identity()},
            "layout": {"frames": info.frames, "motion_frames": info.motion_frames,
                       "latent": [net.cfg.latent_channels, net.cfg.latent_size, net.cfg.latent_size],
                       "image_size": info.image_size, "audio_window": net.cfg.audio_window,
                       "audio_dim": net.cfg.audio_dim, "fps": info.fps, "sample_rate": info.sample_rate},
            "audio_front_end": settings,
            "files": {name: _file_entry(tmp / name, graph, precision, spec, parity[name])
                      for name, (graph, precision, spec) in specs.items()},
            "runtimes": runtimes,
            "parity_frames": {"max_abs_diff": frames,
                              "what": "one chunk sampled end to end with the model's sampler and default steps from "
                                      "the same noise, random reference latent and audio windows; frames in [-1, 1]"},
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_json_atomic(tmp / EXPORT_NAME, manifest)
    return manifest


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


__all__ = ["OPSET", "DecoderGraph", "DenoiserGraph", "LogMelGraph", "chunk_frames_parity", "export_onnx"]
