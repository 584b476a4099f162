"""ONNX Runtime stand-ins for the denoiser net, the codec's decoder and the log-mel front end.

`lipstep export MODEL OUT --onnx` (`lipstep.runtime.export`) writes ``OUT/onnx/``::

    denoiser.onnx        AvatarDiT.forward for the model's chunk layout (fixed T and M, dynamic batch B)
    decoder.onnx         scaled latents [N, C, h, w] -> frames [N, 3, H, W] in [-1, 1] (dynamic N)
    audio.onnx           16 kHz PCM [1, L] -> log-mel [1, N, n_mels], uncentred frames (log-mel models only)
    denoiser.int8.onnx   with --int8: the denoiser's MatMul/Gemm weights dynamically quantised to int8
    export.json          input/output names and shapes, opset, parity measured at export, sha256 of each file

`load_onnx_model` turns them into objects behind the interfaces the pipeline already calls: `OnnxNet`
(``net(x_t, t, cond) -> Tensor`` with ``.cfg``, what `Denoiser` and `ChunkSampler` need), `OnnxCodec`
(``decode`` / ``decode_video``; the portrait is still encoded once by the PyTorch codec, whose encoder is
not exported) and `OnnxLogMel` (``features.log_mel``'s signature, given to `MelEncoder`, so the
windowing and the streaming logic stay the ones of `lipstep.audio`). Sessions run on the
CPUExecutionProvider with ``threads`` intra-op threads (default: torch's thread count) and one inter-op
thread.

Runtimes: ``torch`` (eager PyTorch), ``onnx`` (the fp32 graphs) and ``onnx-int8`` (the int8 denoiser; the
decoder and the audio front end stay fp32: the denoiser does nearly all of the arithmetic, and a
quantised DFT or decoder would cost accuracy for little time).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lipstep.audio.encoders import MelEncoder, load_audio_encoder
from lipstep.codecs.vae import load_codec
from lipstep.diffusion.cond import Cond
from lipstep.errors import IntegrityError, LipstepError, MissingDependency
from lipstep.fsutil import read_checksums, sha256_file, verify_checksums
from lipstep.modeldir import check_components, components_dir, read_denoiser_config, read_info, resolve_model
from lipstep.nets.dit import DiTConfig
from lipstep.samplers.chunks import ChunkLayout

RUNTIMES = ("torch", "onnx", "onnx-int8")
ONNX_DIR = "onnx"
EXPORT_NAME = "export.json"
EXPORT_FORMAT = 1


def check_runtime(name: str, option: str = "--runtime") -> str:
    """`name` if it is one of `RUNTIMES`; a one-line `LipstepError` naming `option` otherwise."""
    if name not in RUNTIMES:
        raise LipstepError(f"{option} must be one of {', '.join(RUNTIMES)}, got {name!r}")
    return name


def import_onnxruntime():
    """The onnxruntime module; `MissingDependency` naming the extra when it is not installed."""
    try:
        import onnxruntime  # optional dependency: only the ONNX runtimes need it
    except ImportError:
        raise MissingDependency("the ONNX runtimes need onnxruntime: pip install 'lipstep[onnx]'") from None
    return onnxruntime


def make_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session of the model file at `path` (``threads`` intra-op threads, default torch's)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No busy-waiting between ops: ONNX Runtime's spinning workers fight torch's threads (the sampler's small
    # tensor ops) for the cores, which made 2 threads 3x slower than 1 on a 2-core machine (experiments/
    # temposyncdiff, bench_idle); without it 2 threads are faster than 1, as they should be.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the CLI prints one line per problem
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# the denoiser


def denoiser_inputs(cfg: DiTConfig, layout: ChunkLayout) -> list[tuple[str, list, str]]:
    """(name, shape, dtype) of every input the exported denoiser takes, in order; "B" is the batch axis.

    ``t`` is model time (`Schedule.model_time`); the drop masks are always inputs (classifier-free guidance
    batches three condition patterns into one call); ``motion`` only for a layout with motion frames,
    ``cfg_scales`` only for a net with a CFG layer, ``visemes`` and ``blink`` only for a net that reads them.
    """
    T, M, C, s = layout.frames, layout.motion_frames, cfg.latent_channels, cfg.latent_size
    inputs = [("x_t", ["B", T, C, s, s], "float32"), ("t", ["B"], "float32"),
              ("reference", ["B", C, s, s], "float32"),
              ("audio", ["B", T, cfg.audio_window, cfg.audio_dim], "float32")]
    if M:
        inputs.append(("motion", ["B", M, C, s, s], "float32"))
    inputs += [("drop_audio", ["B"], "bool"), ("drop_ref", ["B"], "bool")]
    if cfg.cfg_layer != "none":
        inputs.append(("cfg_scales", ["B", 2], "float32"))
    if cfg.use_visemes:
        inputs.append(("visemes", ["B", T], "int64"))
    if cfg.blink:
        inputs.append(("blink", ["B", T], "float32"))
    return inputs


def cond_values(x_t: Tensor, t: Tensor, cond: Cond) -> dict[str, Tensor | None]:
    """The denoiser's inputs by name (`denoiser_inputs`) from a call ``net(x_t, t, cond)``."""
    b = x_t.shape[0]
    drop_audio, drop_ref = cond.masks()
    scales = cond.cfg_scales if cond.cfg_scales is not None else torch.ones(b, 2)
    return {"x_t": x_t, "t": torch.as_tensor(t).reshape(-1).expand(b), "reference": cond.reference,
            "audio": cond.audio, "motion": cond.motion, "drop_audio": drop_audio, "drop_ref": drop_ref,
            "cfg_scales": scales, "visemes": cond.visemes, "blink": cond.blink}


class OnnxNet:
    """An exported AvatarDiT behind the net's own call: ``net(x_t, t, cond) -> raw output [B, T, C, h, w]``.

    ``cfg`` is the net's `DiTConfig`; ``device`` is the CPU (where the session's inputs come from and its
    outputs go); ``nbytes`` the size of the model file. No parameters, no autograd: inference only.
    """

    def __init__(self, session, cfg: DiTConfig, inputs: list[tuple[str, list, str]], nbytes: int = 0):
        self.session, self.cfg, self.inputs, self.nbytes = session, cfg, inputs, nbytes
        self.device = torch.device("cpu")

    def __call__(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        values = cond_values(x_t, t, cond)
        feeds = {}
        for name, shape, dtype in self.inputs:
            if values[name] is None:
                raise ValueError(f"the ONNX denoiser takes {name} {shape}; the condition has none")
            feeds[name] = np.ascontiguousarray(values[name].detach().cpu().numpy().astype(dtype, copy=False))
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def eval(self) -> OnnxNet:
        return self

    def requires_grad_(self, flag: bool = True) -> OnnxNet:
        return self


# ---------------------------------------------------------------------------------------------
# the codec and the audio front end


class OnnxCodec:
    """A codec whose decoder is an ONNX Runtime session (the encoder, used once per portrait, stays PyTorch).

    Same calls as `lipstep.codecs.vae.Codec` where the pipeline uses them: ``encode``, ``decode``,
    ``decode_video``, ``identity``, ``latent_channels``, ``downsample``.
    """

    def __init__(self, codec, session, nbytes: int = 0):
        self.codec, self.session, self.nbytes = codec, session, nbytes
        self.latent_channels, self.downsample = codec.latent_channels, codec.downsample
        self.kind, self.name, self.cfg = codec.kind, codec.name, codec.cfg
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def encode(self, frames: Tensor, **kwargs) -> Tensor:
        return self.codec.encode(frames, **kwargs)

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents [N, C, h, w] -> frames [N, 3, H, W] in [-1, 1]."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"decode expects latents [N, {self.latent_channels}, h, w], got {tuple(latents.shape)}")
        x = np.ascontiguousarray(latents.detach().cpu().numpy().astype(np.float32, copy=False))
        return torch.from_numpy(self.session.run(None, {"latents": x})[0]).to(latents.dtype)

    def decode_video(self, latents: Tensor, *, chunk: int = 32) -> Tensor:
        """Latents [B, T, C, h, w] -> video [B, T, 3, H, W], `chunk` frames per call (as `Codec.decode_video`)."""
        B, T = latents.shape[:2]
        return torch.cat([self.decode(z) for z in latents.flatten(0, 1).split(chunk)]).unflatten(0, (B, T))

    def identity(self) -> str:
        return self.codec.identity()


class OnnxLogMel:
    """`lipstep.data.features.log_mel` as an ONNX Runtime session of the exported front end (same signature).

    The graph computes uncentred frames (``center=False``); a centred call pads ``n_fft // 2`` zeros at both
    ends first, as ``torch.stft(center=True, pad_mode="constant")`` does. Settings other than the exported
    ones are a ValueError, not a silent mismatch.
    """

    def __init__(self, session, settings: dict, nbytes: int = 0):
        self.session, self.settings, self.nbytes = session, dict(settings), nbytes

    def __call__(self, wav: np.ndarray, sample_rate: int = 16000, n_mels: int = 80, n_fft: int = 512,
                 win_length: int = 400, hop_length: int = 160, fmin: float | None = None,
                 fmax: float | None = None, center: bool = True) -> np.ndarray:
        asked = {"sample_rate": sample_rate, "n_mels": n_mels, "n_fft": n_fft, "win_length": win_length,
                 "hop_length": hop_length, "fmin": self.settings["fmin"] if fmin is None else fmin,
                 "fmax": self.settings["fmax"] if fmax is None else fmax}
        wrong = {k: v for k, v in asked.items() if v != self.settings[k]}
        if wrong:
            raise ValueError(f"the exported log-mel front end was made for {self.settings}, not {wrong}")
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        if center:
            wav = np.pad(wav, (n_fft // 2, n_fft // 2))
        return self.session.run(None, {"pcm": np.ascontiguousarray(wav[None])})[0][0]


# ---------------------------------------------------------------------------------------------
# loading an export


def read_export(root: str | os.PathLike) -> dict:
    """The ``onnx/export.json`` of a model directory; a one-line `LipstepError` saying how to make it otherwise."""
    root = Path(root)
    path = root / ONNX_DIR / EXPORT_NAME
    if not path.is_file():
        raise LipstepError(f"{root} has no ONNX export ({ONNX_DIR}/{EXPORT_NAME} is missing); run "
                           f"lipstep export {root} OUT --onnx [--int8] and use the model directory OUT")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        runtimes, files = data["runtimes"], data["files"]
        ok = isinstance(runtimes, dict) and isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise LipstepError(f"{path} is damaged (not a lipstep ONNX export); run lipstep export --onnx again")
    if int(data.get("format", 0)) > EXPORT_FORMAT:
        raise LipstepError(f"{path}: export format {data['format']} is newer than this lipstep ({EXPORT_FORMAT})")
    return data


def _checked_file(root: Path, export: dict, name: str) -> Path:
    """`name` under ``root/onnx``, with the sha256 export.json records; `IntegrityError` otherwise."""
    path = root / ONNX_DIR / name
    want = export["files"].get(name, {}).get("sha256")
    if not path.is_file():
        raise IntegrityError(f"{path} is missing (listed in {ONNX_DIR}/{EXPORT_NAME})")
    if want is None or sha256_file(path) != want:
        raise IntegrityError(f"{path} is damaged (sha256 mismatch); run lipstep export --onnx again")
    return path


def _check_source(root: Path, parts: Path, export: dict, codec) -> None:
    """Refuse an export made from other weights than the directory holds now (`parts`: its `components_dir`)."""
    source = export.get("source", {})
    sums = read_checksums(parts / "denoiser") or {}
    denoiser = source.get("denoiser_sha256")
    if denoiser and sums.get("model.safetensors") and denoiser != sums["model.safetensors"]:
        raise LipstepError(f"{root / ONNX_DIR} was exported from other denoiser weights than {root / 'denoiser'} "
                           f"holds; run lipstep export --onnx again")
    if source.get("codec_sha256") and source["codec_sha256"] != codec.identity():
        raise LipstepError(f"{root / ONNX_DIR} was exported from another codec than {root / 'codec'}; run "
                           f"lipstep export --onnx again")


def load_onnx_model(model: str | os.PathLike | None, runtime: str = "onnx", *, threads: int | None = None):
    """(directory, info, codec, audio encoder, net) of a model directory with an ONNX export, like
    `lipstep.modeldir.load_model` but with `OnnxCodec`, `OnnxNet` and (log-mel models) `OnnxLogMel` standing
    in for the PyTorch codec decoder, denoiser and spectrogram. ``runtime`` is ``onnx`` or ``onnx-int8``."""
    if check_runtime(runtime) == "torch":
        raise ValueError("load_onnx_model loads the onnx runtimes; use lipstep.modeldir.load_model for torch")
    root = resolve_model(model)
    info = read_info(root)
    export = read_export(root)
    files = export["runtimes"].get(runtime)
    if not files:
        raise LipstepError(f"{root / ONNX_DIR} has no {runtime} files; run lipstep export --onnx"
                           f"{' --int8' if runtime == 'onnx-int8' else ''} again")
    import_onnxruntime()  # the one-line MissingDependency before any work
    parts = components_dir(root, info)
    verify_checksums(parts / "audio")
    codec = load_codec(parts / "codec")
    _check_source(root, parts, export, codec)
    cfg = read_denoiser_config(parts / "denoiser")
    audio = load_audio_encoder(parts / "audio")
    check_components(root, info, codec, audio, cfg)
    paths = {part: _checked_file(root, export, name) for part, name in files.items() if name}
    sessions = {part: make_session(path, threads) for part, path in paths.items()}
    size = {part: path.stat().st_size for part, path in paths.items()}
    net = OnnxNet(sessions["denoiser"], cfg, denoiser_inputs(cfg, info.layout()), size["denoiser"])
    codec = OnnxCodec(codec, sessions["decoder"], size["decoder"])
    if "audio" in sessions and isinstance(audio, MelEncoder):
        spectrogram = OnnxLogMel(sessions["audio"], export["audio_front_end"], size["audio"])
        audio = MelEncoder(audio.window, audio.feature_dim, audio.fps, audio.sample_rate, spectrogram=spectrogram)
    return root, info, codec, audio, net


__all__ = ["EXPORT_FORMAT", "EXPORT_NAME", "ONNX_DIR", "RUNTIMES", "OnnxCodec", "OnnxLogMel", "OnnxNet",
           "check_runtime", "cond_values", "denoiser_inputs", "import_onnxruntime", "load_onnx_model", "make_session",
           "read_export"]
