"""Audio encoders: speech (16 kHz mono) or viseme labels -> per-video-frame feature windows [T, K, D].

Every encoder gives video frame ``t`` (25 fps) a window of K feature vectors around the frame's
centre time, the audio contract of design.md §3 (batched ``[B, T, K, D]``). Window alignment reuses
`lipstep.data.features.window_starts` (the one home of A/V alignment): at a feature rate ``r``,
window t holds feature frames ``round((t + 0.5) * r / fps) - K//2 + arange(K)``, so position
``K//2`` is centred on the middle of video frame t.

- `MelEncoder`: log-mel windows, no weights; exactly the ``mel`` that ``lipstep prepare`` stores
  (100 frames/s, K = 16, edges read as silence).
- `HFAudioEncoder`: a frozen transformers wav2vec2 / HuBERT / WavLM / data2vec-audio or Whisper
  encoder from a local directory. Hidden states of all (or chosen) layers are averaged, then
  linearly interpolated from the model's own frame times (50 Hz: wav2vec2-style conv stacks have
  stride 320 samples, Whisper's encoder 2 mel hops of 10 ms) onto a grid of ``2 * fps`` (50 Hz)
  and windowed as above, as Hallo/EchoMimic do; times before the first / after the last model frame
  repeat the edge vector. Long audio is cut into chunks (Whisper: its fixed 30 s window; others:
  `chunk_seconds`) whose frame times are stitched before interpolation.
- `VisemeEncoder`: per-frame viseme labels -> one-hot windows of K frames around each frame
  (TempoSyncDiff's "viseme tokens"); edges repeat the first / last label (`lipstep.audio.visemes.viseme_windows`).
- `VisemeAudioEncoder` (kind ``viseme-audio``): speech -> log-mel windows -> the viseme classifier of
  ``lipstep train visemes`` -> argmax labels (optionally smoothed) -> the same one-hot windows, so a
  viseme-conditioned denoiser trained on labels runs on raw audio; it streams (`VisemeFeatureStream`).

`AudioConfig` + `build_audio_encoder` select one; `save_audio_encoder` / `load_audio_encoder` keep
the config in ``DIR/config.json`` (an HF model's weights stay at the recorded absolute path; a viseme
classifier is copied into ``DIR/classifier`` and recorded by that relative path).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lipstep.audio.stream import FeatureStream, MelFeatureStream, VisemeFeatureStream, WholeAudioFeatureStream
from lipstep.audio.visemes import (
    N_VISEMES,
    VisemeNet,
    frame_labels,
    load_viseme_classifier,
    save_viseme_classifier,
    silence_windows,
    viseme_windows,
)
from lipstep.config import check, load_config, save_config
from lipstep.data.features import frame_windows, log_mel, window_starts
from lipstep.data.prepare import mel_params
from lipstep.errors import ConfigError, LipstepError

SAMPLE_RATE = 16000
# mel 160 ms at 100 Hz; hf 200 ms at 50 Hz; visemes ±2 frames
DEFAULT_WINDOW = {"mel": 16, "hf": 10, "viseme": 5, "viseme-audio": 5}
CLASSIFIER_DIR = "classifier"  # a viseme-audio encoder's classifier, inside its saved directory


@dataclass
class AudioConfig:
    # log-mel; a transformers model from `path`; viseme labels; speech -> viseme labels by `classifier`
    kind: Literal["mel", "hf", "viseme", "viseme-audio"] = "mel"
    path: str | None = None             # "hf": local transformers directory (weights stay there)
    classifier: str | None = None       # "viseme-audio": viseme classifier directory (`lipstep train visemes`)
    smooth: int = 0                     # "viseme-audio": average class probabilities over 2·smooth + 1 frames
    window: int | None = None           # K; None = the kind's default (mel 16, hf 10, viseme(-audio) 5)
    layers: str | tuple[int, ...] = "all"  # "hf": hidden-state indices averaged (0 = embeddings); "all"
    n_mels: int = 80                    # "mel": mel bands
    n_visemes: int = N_VISEMES          # "viseme": classes of the one-hot
    fps: float = 25.0                   # video frame rate the windows are aligned to
    chunk_seconds: float = 30.0         # "hf" (not Whisper): audio per model forward

    def validate(self) -> None:
        check(self.window is None or self.window >= 1, f"window must be >= 1, got {self.window}")
        check(self.kind != "hf" or bool(self.path), "audio kind 'hf' needs path (a local transformers directory)")
        check(self.kind != "viseme-audio" or bool(self.classifier),
              "audio kind 'viseme-audio' needs classifier (a directory written by `lipstep train visemes`)")
        check(0 <= self.smooth <= 8, f"smooth must be in 0..8 frames, got {self.smooth}")
        check(not isinstance(self.layers, str) or self.layers == "all",
              f"layers must be 'all' or a list of hidden-state indices, got '{self.layers}'")
        check(isinstance(self.layers, str) or len(self.layers) >= 1, "layers must not be empty")
        check(self.n_mels >= 1 and self.n_visemes >= 1, "n_mels and n_visemes must be >= 1")
        check(1.0 <= self.fps <= 120.0, f"fps must be in 1..120, got {self.fps}")
        check(self.chunk_seconds >= 1.0, f"chunk_seconds must be >= 1, got {self.chunk_seconds}")


def _as_wav(wav) -> np.ndarray:
    """A mono float32 waveform as numpy [N]."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    wav = np.array(wav, dtype=np.float32)  # a writable copy (shards are read-only memory maps)
    if wav.ndim != 1 or len(wav) == 0:
        raise ValueError(f"expected a non-empty mono waveform [N], got shape {wav.shape}")
    return wav


class AudioEncoder:
    """Audio (or labels) of a clip -> feature windows [T, K, D] for its T video frames."""

    name: str
    feature_dim: int  # D
    window: int       # K
    cfg: AudioConfig

    def encode(self, source, n_frames: int) -> torch.Tensor:
        raise NotImplementedError

    def encode_batch(self, sources, n_frames: int) -> torch.Tensor:
        """Several clips with the same frame count -> [B, T, K, D]."""
        return torch.stack([self.encode(s, n_frames) for s in sources])

    def stream(self, block: int, fps: float = 25.0, sample_rate: int = SAMPLE_RATE) -> FeatureStream:
        """Features of audio that arrives in pieces, `block` frames at a time (`lipstep.audio.stream`).

        This default keeps all audio and encodes it at the end (an encoder without a bounded window
        cannot do better); `MelEncoder` streams.
        """
        return WholeAudioFeatureStream(self.encode, block, sample_rate=sample_rate, fps=fps)


class MelEncoder(AudioEncoder):
    """Log-mel windows (`features.log_mel` + `features.frame_windows` with prepare's STFT settings).

    ``spectrogram`` replaces `features.log_mel` (same signature) for the spectrogram itself, e.g. an ONNX
    Runtime session of the same front end (`lipstep.runtime.onnx`); the windowing stays here.
    """

    def __init__(self, window: int = 16, n_mels: int = 80, fps: float = 25.0, sample_rate: int = SAMPLE_RATE, *,
                 spectrogram: Callable[..., np.ndarray] | None = None):
        self.window, self.feature_dim, self.fps, self.sample_rate = int(window), int(n_mels), float(fps), sample_rate
        self.name = f"mel{self.feature_dim}"
        self.cfg = AudioConfig(kind="mel", window=self.window, n_mels=self.feature_dim, fps=self.fps)
        self.log_mel = spectrogram or log_mel

    def encode(self, wav, n_frames: int) -> torch.Tensor:
        """Waveform [N] at 16 kHz -> float32 [T, K, n_mels] (CPU)."""
        stft = mel_params(self.sample_rate)
        mel = self.log_mel(_as_wav(wav), self.sample_rate, self.feature_dim, **stft)
        rate = self.sample_rate / stft["hop_length"]
        return torch.from_numpy(frame_windows(mel, int(n_frames), self.fps, rate, self.window))

    def stream(self, block: int, fps: float | None = None, sample_rate: int | None = None) -> MelFeatureStream:
        """The same windows as `encode`, made block by block as audio arrives, in flat memory."""
        return MelFeatureStream(block, window=self.window, n_mels=self.feature_dim, fps=fps or self.fps,
                                sample_rate=sample_rate or self.sample_rate, log_mel=self.log_mel)


class VisemeEncoder(AudioEncoder):
    """Viseme labels int [T] -> one-hot windows float32 [T, K, n_visemes] (position K//2 = frame t)."""

    def __init__(self, window: int = 5, n_visemes: int = N_VISEMES):
        self.window, self.feature_dim = int(window), int(n_visemes)
        self.name = f"viseme{self.feature_dim}"
        self.cfg = AudioConfig(kind="viseme", window=self.window, n_visemes=self.feature_dim)

    def encode(self, visemes, n_frames: int | None = None) -> torch.Tensor:
        """Labels [T'] -> [n_frames, K, n_visemes]; a length mismatch repeats the last label or cuts."""
        labels = torch.as_tensor(np.asarray(visemes), dtype=torch.int64).reshape(-1)
        if len(labels) == 0:
            raise ValueError("VisemeEncoder needs at least one label")
        T = len(labels) if n_frames is None else int(n_frames)
        fitted = labels[torch.arange(T).clamp(max=len(labels) - 1)]  # [T]
        return viseme_windows(fitted[None], self.window, self.feature_dim)[0]  # [T, K, n_visemes]


class VisemeAudioEncoder(AudioEncoder):
    """Speech [N] at 16 kHz -> classifier viseme labels -> one-hot windows float32 [T, K, n_visemes] (CPU).

    The frame conventions (silence before the audio, labels before frame 0 repeat frame 0's) are those of
    `lipstep.audio.visemes`; the tokens of frame t read the audio up to K//2 + context + smooth frames past
    it. `classifier` is the directory the net came from (recorded in `cfg`; None for a net built in memory).
    """

    def __init__(self, net: VisemeNet, window: int = 5, smooth: int = 0, *, classifier: str | None = None,
                 sample_rate: int = SAMPLE_RATE):
        self.net = net.eval().requires_grad_(False)
        self.window, self.smooth, self.feature_dim = int(window), int(smooth), net.cfg.n_visemes
        self.fps, self.sample_rate = net.cfg.fps, sample_rate
        self.mel = MelEncoder(net.cfg.mel_window, net.cfg.n_mels, self.fps, sample_rate)
        self.context = net.cfg.context + self.smooth  # windows read on each side of a labelled frame
        self.name = f"viseme{self.feature_dim}-audio"
        self.cfg = AudioConfig(kind="viseme-audio", classifier=classifier, window=self.window, smooth=self.smooth,
                               n_visemes=self.feature_dim, fps=self.fps)

    def _labels(self, wav, n_frames: int) -> torch.Tensor:
        """Labels of frames 0 .. n_frames - 1 (int64)."""
        mel = self.mel.encode(wav, n_frames + self.context)             # frames [0, n_frames + context)
        x = torch.cat([silence_windows(self.context, self.net.cfg), mel])  # frames [-context, ..)
        return frame_labels(self.net, x, self.smooth)

    def predict(self, wav, n_frames: int) -> torch.Tensor:
        """The classifier's viseme label of each of `n_frames` frames: int64 [n_frames]."""
        return self._labels(wav, int(n_frames))

    def encode(self, wav, n_frames: int) -> torch.Tensor:
        """Waveform [N] at 16 kHz -> float32 [n_frames, K, n_visemes]."""
        T = int(n_frames)
        labels = self._labels(wav, T + self.window // 2)                 # the windows read K//2 frames past T
        return viseme_windows(labels[None], self.window, self.feature_dim)[0, :T]

    def stream(self, block: int, fps: float | None = None, sample_rate: int | None = None) -> VisemeFeatureStream:
        """The same windows as `encode`, made block by block as audio arrives, in flat memory."""
        if fps is not None and fps != self.fps:
            raise LipstepError(f"the viseme classifier labels {self.fps:g} fps frames; the model asks for {fps:g} fps")
        return VisemeFeatureStream(block, partial(frame_labels, self.net, smooth=self.smooth), self.net.cfg,
                                   context=self.context, window=self.window, fps=self.fps,
                                   sample_rate=sample_rate or self.sample_rate)


# ------------------------------------------------------------------------------- transformers models

_W2V_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
_HF_EXPECTED = "a local transformers wav2vec2 / HuBERT / WavLM / data2vec-audio / Whisper directory"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _interpolate(times: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of values [N, D] known at sorted times [N] at query times [...]; edges repeat."""
    if len(times) == 1:
        return values[0].expand(*query.shape, values.shape[1]).clone()
    flat = query.reshape(-1)
    right = torch.searchsorted(times, flat).clamp(1, len(times) - 1)
    t0, t1 = times[right - 1], times[right]
    w = ((flat - t0) / (t1 - t0)).clamp(0.0, 1.0)[:, None].to(values.dtype)
    out = values[right - 1] * (1 - w) + values[right] * w
    return out.reshape(*query.shape, values.shape[1])


class HFAudioEncoder(AudioEncoder):
    """A frozen transformers speech encoder from a local directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, layers: str | list[int] | tuple[int, ...] = "all",
                 window: int = 10, *, fps: float = 25.0, chunk_seconds: float = 30.0,
                 device: str | torch.device = "cpu"):
        self.path = Path(path)
        self.window, self.fps, self.chunk_seconds = int(window), float(fps), float(chunk_seconds)
        self.feature_rate = 2.0 * self.fps  # the interpolation grid: 50 Hz at 25 fps
        config = self._read_config()
        self.model_type = config.model_type
        self.is_whisper = self.model_type == "whisper"
        self.model, self.extractor = self._load_model(), self._load_extractor(config)
        self.model.to(device).float().eval().requires_grad_(False)
        self.feature_dim = int(config.d_model if self.is_whisper else config.hidden_size)
        n_states = 1 + int(config.encoder_layers if self.is_whisper else config.num_hidden_layers)
        self.layers = self._layer_indices(layers, n_states)
        self.name = f"{self.model_type}-{self.path.name}"
        self.cfg = AudioConfig(kind="hf", path=str(self.path.resolve()), window=self.window,
                               layers="all" if layers == "all" else tuple(int(i) for i in layers),
                               fps=self.fps, chunk_seconds=self.chunk_seconds)

    def _read_config(self):
        # transformers here and below, not at module top: about 1 s to import, only for an HF encoder
        from transformers import AutoConfig

        if not self.path.is_dir():
            raise LipstepError(f"audio encoder directory {self.path} does not exist (expected {_HF_EXPECTED})")
        if not (self.path / "config.json").is_file():
            raise LipstepError(f"{self.path} has no config.json; expected {_HF_EXPECTED}")
        try:
            config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise LipstepError(f"{self.path}: not a transformers model directory ({_first_line(e)})") from None
        if config.model_type not in _W2V_TYPES + ("whisper",):
            raise LipstepError(f"{self.path} holds a '{config.model_type}' model; expected {_HF_EXPECTED}")
        return config

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoModel, WhisperModel

        try:
            if self.is_whisper:
                return WhisperModel.from_pretrained(str(self.path), local_files_only=True).get_encoder()
            return AutoModel.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise LipstepError(f"{self.path}: cannot load the {self.model_type} model ({_first_line(e)})") from None

    def _load_extractor(self, config):
        """The directory's feature extractor (preprocessor_config.json), else the model type's default."""
        from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

        if (self.path / "preprocessor_config.json").is_file():
            try:
                fe = AutoFeatureExtractor.from_pretrained(str(self.path), local_files_only=True)
            except (OSError, ValueError, KeyError) as e:
                raise LipstepError(f"{self.path}: cannot load preprocessor_config.json ({_first_line(e)})") from None
        elif self.is_whisper:
            seconds = config.max_source_positions * 2 * 160 // SAMPLE_RATE
            fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=max(1, seconds))
        else:
            fe = Wav2Vec2FeatureExtractor(do_normalize=True)  # wav2vec2 recipe: zero mean, unit variance
        if fe.sampling_rate != SAMPLE_RATE:
            raise LipstepError(f"{self.path}: the feature extractor expects {fe.sampling_rate} Hz, lipstep "
                               f"gives {SAMPLE_RATE} Hz")
        if self.is_whisper and fe.nb_max_frames != 2 * config.max_source_positions:
            raise LipstepError(f"{self.path}: the feature extractor's window ({fe.nb_max_frames} mel frames) "
                               f"does not match the model's ({2 * config.max_source_positions})")
        return fe

    def _layer_indices(self, layers, n_states: int) -> list[int]:
        if isinstance(layers, str):
            if layers != "all":
                raise ConfigError(f"layers must be 'all' or a list of hidden-state indices, got '{layers}'")
            return list(range(n_states))
        indices = [int(i) for i in layers]
        bad = [i for i in indices if not -n_states <= i < n_states]
        if not indices or bad:
            raise ConfigError(f"layers {list(layers)} out of range for {self.path} "
                              f"({n_states} hidden states: 0 = embeddings .. {n_states - 1})")
        return [i % n_states for i in indices]

    def to(self, device) -> HFAudioEncoder:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _average(self, hidden_states) -> torch.Tensor:
        """Mean of the chosen hidden states [1, N, D] -> [N, D] (float32)."""
        return torch.stack([hidden_states[i][0] for i in self.layers]).float().mean(0)

    def _conv_geometry(self) -> tuple[int, int]:
        """(stride, receptive field) in samples of a wav2vec2-style conv feature encoder."""
        stride, field = 1, 1
        for k, s in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            field += (k - 1) * stride
            stride *= s
        return stride, field

    def _w2v_features(self, wav: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame centre times [N] (s) and averaged hidden states [N, D] of a wav2vec2-style model."""
        stride, field = self._conv_geometry()
        x = self.extractor(wav, sampling_rate=SAMPLE_RATE, return_tensors="np").input_values[0]
        x = np.pad(x, (0, max(0, field - len(x))))  # shorter than one frame: pad with zeros
        chunk = max(field, int(self.chunk_seconds * SAMPLE_RATE) // stride * stride)
        starts = list(range(0, len(x), chunk))
        if len(starts) > 1 and len(x) - starts[-1] < field:
            starts.pop()  # a too-short tail joins the previous chunk
        times, feats = [], []
        for a, b in zip(starts, starts[1:] + [len(x)]):
            inp = torch.from_numpy(np.ascontiguousarray(x[a:b]))[None].to(self.device)
            out = self.model(input_values=inp, output_hidden_states=True)
            h = self._average(out.hidden_states)  # [n, D]
            feats.append(h)
            times.append((a + torch.arange(len(h), dtype=torch.float64) * stride + field / 2) / SAMPLE_RATE)
        return torch.cat(times), torch.cat(feats)

    def _whisper_features(self, wav: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame centre times [N] (s) and averaged hidden states [N, D] of a Whisper encoder."""
        fe = self.extractor
        step = fe.hop_length * self.model.conv1.stride[0] * self.model.conv2.stride[0]  # samples per frame
        times, feats = [], []
        for a in range(0, len(wav), fe.n_samples):
            piece = wav[a:a + fe.n_samples]
            mel = fe(piece, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features.to(self.device)
            out = self.model(mel, output_hidden_states=True)
            n = min(len(piece) // step + 1, out.hidden_states[0].shape[1])  # frames inside the real audio
            feats.append(self._average(out.hidden_states)[:n])
            times.append((a + torch.arange(n, dtype=torch.float64) * step) / SAMPLE_RATE)
        return torch.cat(times), torch.cat(feats)

    @torch.no_grad()
    def encode(self, wav, n_frames: int) -> torch.Tensor:
        """Waveform [N] at 16 kHz -> float32 [T, K, D] on the model's device."""
        wav = _as_wav(wav)
        times, feats = self._whisper_features(wav) if self.is_whisper else self._w2v_features(wav)
        starts = window_starts(int(n_frames), self.fps, self.feature_rate, self.window)
        grid = (starts[:, None] + np.arange(self.window)[None, :]) / self.feature_rate  # [T, K] seconds
        return _interpolate(times.to(feats.device), feats, torch.from_numpy(grid).to(feats.device))


# ------------------------------------------------------------------------------------- build / save


def build_audio_encoder(cfg: AudioConfig | None = None, *, device: str | torch.device = "cpu") -> AudioEncoder:
    """The encoder `cfg` describes (``window`` None = the kind's default)."""
    cfg = cfg or AudioConfig()
    cfg.validate()
    window = cfg.window or DEFAULT_WINDOW[cfg.kind]
    if cfg.kind == "mel":
        return MelEncoder(window, cfg.n_mels, cfg.fps)
    if cfg.kind == "viseme":
        return VisemeEncoder(window, cfg.n_visemes)
    if cfg.kind == "viseme-audio":
        net = load_viseme_classifier(cfg.classifier)
        if (net.cfg.n_visemes, net.cfg.fps) != (cfg.n_visemes, cfg.fps):
            raise ConfigError(f"the viseme classifier {cfg.classifier} labels {net.cfg.n_visemes} classes at "
                              f"{net.cfg.fps:g} fps; the audio config asks for {cfg.n_visemes} at {cfg.fps:g}")
        return VisemeAudioEncoder(net, window, cfg.smooth, classifier=cfg.classifier)
    return HFAudioEncoder(cfg.path, cfg.layers if isinstance(cfg.layers, str) else list(cfg.layers), window,
                          fps=cfg.fps, chunk_seconds=cfg.chunk_seconds, device=device)


def save_audio_encoder(encoder: AudioEncoder, directory: str | os.PathLike) -> Path:
    """Write the encoder's resolved config to ``directory/config.json`` (HF weights stay at their path; a
    viseme classifier is written to ``directory/classifier``)."""
    cfg = dataclasses.replace(encoder.cfg)
    if isinstance(encoder, VisemeAudioEncoder):
        save_viseme_classifier(encoder.net, Path(directory) / CLASSIFIER_DIR)
        cfg.classifier = CLASSIFIER_DIR
    return save_config(cfg, directory)


def load_audio_encoder(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> AudioEncoder:
    """The encoder saved by `save_audio_encoder` in `directory`."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise LipstepError(f"{directory} has no config.json; expected an audio encoder directory "
                           "(written by save_audio_encoder)")
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("_type")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind not in (None, "AudioConfig"):
        raise LipstepError(f"{path} holds a {kind}, not an AudioConfig")
    cfg = load_config(AudioConfig, path)
    if cfg.classifier is not None and not Path(cfg.classifier).is_absolute():
        cfg.classifier = str(Path(directory) / cfg.classifier)  # saved beside the config
    return build_audio_encoder(cfg, device=device)


__all__ = [
    "CLASSIFIER_DIR",
    "DEFAULT_WINDOW",
    "N_VISEMES",
    "AudioConfig",
    "AudioEncoder",
    "HFAudioEncoder",
    "MelEncoder",
    "VisemeAudioEncoder",
    "VisemeEncoder",
    "build_audio_encoder",
    "load_audio_encoder",
    "save_audio_encoder",
]
