"""Streaming audio features: per-frame windows [T, K, D] computed as audio arrives, one block at a time.

A video frame can be generated only once every audio sample its feature window reads has arrived. For
the log-mel windows (`lipstep.data.features`) window t reads mel frames ``4t-6 .. 4t+9`` at 25 fps, and
mel frame m reads samples ``[160m - 256, 160m + 256)`` (a 512-sample FFT centred on it), so frame t
needs the audio up to 1056 samples (66 ms) past its own end: the **look-ahead**. A block of B frames
(one chunk of the model) is ready when the audio up to its last frame's look-ahead has arrived, or when
the stream ends (the missing audio is then silence, as it is for a whole file).

Blocks are computed in one fixed-size call each, from the samples of that block's span alone (zeros
outside the signal, mel frames past the end read as silence exactly as `frame_windows` reads them), so
the windows do not depend on how the audio was cut into pieces: one sample at a time, odd sizes or the
whole file at once give the same numbers, bit for bit. Only the span the next block needs is kept, so
memory stays flat however long the stream runs.

`MelFeatureStream` is the streaming form of `MelEncoder`. `VisemeFeatureStream`, that of
`VisemeAudioEncoder`, reads the mel windows frame by frame and labels a block once the windows its one-hot
windows and its classifier read have arrived: its look-ahead is the mel look-ahead plus K//2 + context +
smooth frames (`lipstep.audio.visemes`). An encoder without a bounded window (a
transformers model attends over whole 30-s pieces) gets `WholeAudioFeatureStream`: it keeps all audio
and makes every block at the end, which is what a whole file needs anyway but is not streaming.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from lipstep.audio.visemes import VisemeNetConfig, silence_windows, viseme_windows
from lipstep.data.features import LOG_FLOOR, frame_count, log_mel, window_starts
from lipstep.data.prepare import mel_params


def _as_samples(wav) -> np.ndarray:
    """A piece of mono audio as float32 [N] (a copy: callers may reuse their buffers)."""
    wav = np.array(wav, dtype=np.float32).reshape(-1)
    if not np.isfinite(wav).all():
        raise ValueError("audio contains NaN or infinite samples")
    return wav


class FeatureStream:
    """Audio of unknown length in pieces -> feature windows of whole blocks of `block` video frames.

    ``push`` pieces, then ``finish``; ``ready()`` says whether the next block can be made now and
    ``next_block()`` makes it ([block, K, D]). After ``finish``, ``n_frames`` is the video's length
    (`frame_count` of the audio; 0 without audio) and blocks run to cover it, the last one padded.
    """

    can_preview = False  # whether `peek` works (`complete_frames` > 0 before a block is complete)

    def __init__(self, block: int, sample_rate: int, fps: float):
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.block, self.sample_rate, self.fps = int(block), int(sample_rate), float(fps)
        self.received = 0                  # samples pushed so far
        self.done = 0                      # blocks made so far
        self.total: int | None = None      # samples in all, once finished

    @property
    def finished(self) -> bool:
        return self.total is not None

    @property
    def n_frames(self) -> int | None:
        """Frames of the whole video once finished (None before)."""
        if self.total is None:
            return None
        return frame_count(self.total, self.sample_rate, self.fps) if self.total else 0

    @property
    def n_blocks(self) -> int | None:
        return None if self.total is None else math.ceil(self.n_frames / self.block)

    @property
    def buffered(self) -> int:
        """Samples held now (what the memory of this stream grows with)."""
        raise NotImplementedError

    def push(self, wav) -> None:
        if self.finished:
            raise ValueError("the audio stream is finished")
        wav = _as_samples(wav)
        if wav.size:
            self._add(wav)
            self.received += wav.size

    def finish(self) -> None:
        self.total = self.received

    def ready(self) -> bool:
        if self.finished:
            return self.done < self.n_blocks
        # before the end: the block's frames lie inside the audio and its windows' look-ahead has arrived
        frames_in = self.received * self.fps / self.sample_rate
        return frames_in >= (self.done + 1) * self.block and self.received >= self._needs(self.done)

    def next_block(self) -> torch.Tensor:
        if not self.ready():
            raise ValueError("the next block's audio has not arrived yet")
        out = self._make(self.done)
        self.done += 1
        return out

    def complete_frames(self) -> int:
        """Frames at the start of the next block whose own windows have all arrived (before the end): what a
        preview of the block (`peek`) can already show. 0 where the stream cannot preview."""
        return 0

    def peek(self) -> torch.Tensor:
        """The next block's windows now, the audio that has not arrived read as silence; nothing is consumed."""
        raise NotImplementedError(f"{type(self).__name__} cannot preview a block")

    def _add(self, wav: np.ndarray) -> None:
        raise NotImplementedError

    def _needs(self, k: int) -> int:
        """Samples that must have arrived before block k can be made (before the stream ends)."""
        raise NotImplementedError

    def _make(self, k: int) -> torch.Tensor:
        raise NotImplementedError


class MelFeatureStream(FeatureStream):
    """`MelEncoder`'s windows, block by block (see the module docstring); ``log_mel`` computes the spectrogram
    (`features.log_mel`, or a stand-in with its signature, e.g. an ONNX Runtime session)."""

    can_preview = True

    def __init__(self, block: int, *, window: int = 16, n_mels: int = 80, fps: float = 25.0,
                 sample_rate: int = 16000, log_mel: Callable[..., np.ndarray] = log_mel):
        super().__init__(block, sample_rate, fps)
        self.window, self.n_mels, self.log_mel = int(window), int(n_mels), log_mel
        self.stft = mel_params(self.sample_rate)
        self.hop, self.n_fft = self.stft["hop_length"], self.stft["n_fft"]
        self.mel_rate = self.sample_rate / self.hop
        self.offset = 0                    # absolute index of the first sample held
        self.pieces: list[np.ndarray] = []  # held samples, in order (joined only when a block is made)
        self.held = 0

    @property
    def buffered(self) -> int:
        return self.held

    def lookahead(self) -> int:
        """Samples past a frame's end its window reads (1056 at 16 kHz, 25 fps, K = 16)."""
        t = 1000  # any frame away from the start
        return self._needs_frames(t, 1) - round((t + 1) * self.sample_rate / self.fps)

    def _span(self, k: int) -> tuple[np.ndarray, int, int]:
        """Mel indices [block, K] of block k's windows, and the sample span [s0, s1) its mel frames read."""
        starts = window_starts(self.block, self.fps, self.mel_rate, self.window, first=k * self.block)
        idx = starts[:, None] + np.arange(self.window)[None, :]  # [B, K] absolute mel frame indices
        m_lo, m_hi = int(idx.min()), int(idx.max()) + 1
        half = self.n_fft // 2
        return idx, m_lo * self.hop - half, (m_hi - 1) * self.hop - half + self.n_fft

    def _needs_frames(self, first: int, n: int) -> int:
        starts = window_starts(n, self.fps, self.mel_rate, self.window, first=first)
        return (int(starts.max()) + self.window - 1) * self.hop - self.n_fft // 2 + self.n_fft

    def _needs(self, k: int) -> int:
        return self._span(k)[2]

    def _add(self, wav: np.ndarray) -> None:
        self.pieces.append(wav)
        self.held += wav.size

    def complete_frames(self) -> int:
        if self.finished:
            return 0
        first, n = self.done * self.block, 0
        while n < self.block and self.received >= max(self._needs_frames(first + n, 1),
                                                      round((first + n + 1) * self.sample_rate / self.fps)):
            n += 1
        return n

    def peek(self) -> torch.Tensor:
        idx, _, mel = self._mel(self.done)
        return torch.from_numpy(np.ascontiguousarray(mel[idx - idx.min()]))

    def _mel(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(window indices, the held samples joined, log-mel frames) of block k; zeros where no signal has arrived."""
        idx, s0, s1 = self._span(k)
        held = np.concatenate(self.pieces) if len(self.pieces) > 1 else (
            self.pieces[0] if self.pieces else np.zeros(0, np.float32))
        seg = np.zeros(s1 - s0, np.float32)  # zeros where the signal has none: before 0, after its end
        a, b = max(s0, self.offset), min(s1, self.received)
        if b > a:
            seg[a - s0:b - s0] = held[a - self.offset:b - self.offset]
        mel = self.log_mel(seg, self.sample_rate, self.n_mels, center=False, **self.stft)  # mel frames m_lo .. m_hi-1
        m = np.arange(idx.min(), idx.min() + len(mel))
        silent = m < 0
        if self.total is not None:
            silent |= m > self.total // self.hop  # `log_mel` of the whole signal has no such frames
        mel[silent] = np.float32(np.log(LOG_FLOOR))
        return idx, held, mel

    def _make(self, k: int) -> torch.Tensor:
        idx, held, mel = self._mel(k)
        # keep only what the next block reads
        keep = max(self._span(k + 1)[1], self.offset)
        drop = min(keep, self.received) - self.offset
        self.pieces = [held[drop:]] if drop < held.size else []
        self.offset += drop
        self.held = held.size - drop
        return torch.from_numpy(np.ascontiguousarray(mel[idx - idx.min()]))  # [B, K, n_mels]


class VisemeFeatureStream(FeatureStream):
    """`VisemeAudioEncoder`'s one-hot windows, block by block (see the module docstring).

    ``labels_of(windows)`` maps the mel windows of frames [a - context, b + context) to the labels of frames
    [a, b) (`lipstep.audio.visemes.frame_labels` with the encoder's net and smoothing); `net_cfg` gives the
    mel window size and bands. Mel windows come from a `MelFeatureStream` of one frame per block, so a block
    waits for exactly the audio it reads, and only the windows the next block reads are kept.
    """

    def __init__(self, block: int, labels_of: Callable[[torch.Tensor], torch.Tensor], net_cfg: VisemeNetConfig, *,
                 context: int, window: int = 5, fps: float = 25.0, sample_rate: int = 16000):
        super().__init__(block, sample_rate, fps)
        self.mel = MelFeatureStream(1, window=net_cfg.mel_window, n_mels=net_cfg.n_mels, fps=fps,
                                    sample_rate=sample_rate)
        self.labels_of, self.net_cfg = labels_of, net_cfg
        self.context, self.window, self.n_visemes = int(context), int(window), net_cfg.n_visemes
        self.first = -self.context                              # frame of self.windows[0]
        self.windows = list(silence_windows(self.context, net_cfg))  # [K, n_mels] each, frames first, first + 1, ..

    @property
    def buffered(self) -> int:
        return self.mel.buffered

    def lookahead(self) -> int:
        """Samples past a frame's end its tokens read: the mel look-ahead and K//2 + context frames more."""
        t = 1000  # any frame away from the start
        return self._needs_frame(t) - round((t + 1) * self.sample_rate / self.fps)

    def finish(self) -> None:
        super().finish()
        self.mel.finish()

    def _reach(self, k: int) -> int:
        """One past the last frame whose mel window block k reads."""
        return (k + 1) * self.block + self.window // 2 + self.context

    def _needs_frame(self, t: int) -> int:
        return self.mel._needs(t + self.window // 2 + self.context)

    def _needs(self, k: int) -> int:
        return self.mel._needs(self._reach(k) - 1)

    def _add(self, wav: np.ndarray) -> None:
        self.mel.push(wav)

    def _make(self, k: int) -> torch.Tensor:
        a, half = k * self.block, self.window // 2
        lo = max(0, a - half)  # the first label the block's one-hot windows read (before frame 0: frame 0's)
        while self.first + len(self.windows) < self._reach(k):
            self.windows.append(self.mel._make(self.first + len(self.windows))[0])  # frames in order
        x = torch.stack(self.windows[lo - self.context - self.first:self._reach(k) - self.first])
        labels = self.labels_of(x)                              # frames lo .. (k + 1) * block + half - 1
        out = viseme_windows(labels[None], self.window, self.n_visemes)[0, a - lo:a - lo + self.block]
        keep = max(0, a + self.block - half) - self.context     # the first window the next block reads
        del self.windows[:max(0, keep - self.first)]
        self.first = max(self.first, keep)
        return out                                              # [block, K, n_visemes]


class WholeAudioFeatureStream(FeatureStream):
    """Any encoder ``encode(wav, n_frames) -> [n_frames, K, D]``: all audio is kept, blocks come at the end."""

    def __init__(self, encode: Callable[[np.ndarray, int], torch.Tensor], block: int, *, sample_rate: int = 16000,
                 fps: float = 25.0):
        super().__init__(block, sample_rate, fps)
        self.encode = encode
        self.pieces: list[np.ndarray] = []
        self.features: torch.Tensor | None = None

    @property
    def buffered(self) -> int:
        return self.received if self.features is None else 0

    def _add(self, wav: np.ndarray) -> None:
        self.pieces.append(wav)

    def _needs(self, k: int) -> int:
        return math.inf  # the whole audio

    def _make(self, k: int) -> torch.Tensor:
        if self.features is None:
            self.features = self.encode(np.concatenate(self.pieces), self.n_blocks * self.block)
            self.pieces = []
        return self.features[k * self.block:(k + 1) * self.block]


__all__ = ["FeatureStream", "MelFeatureStream", "VisemeFeatureStream", "WholeAudioFeatureStream"]
