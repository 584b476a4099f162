"""Visemes: the visible mouth classes that phonemes fall into, and the mouth state they drive.

A *viseme* groups phonemes that look alike on the face (/m b p/ all close the lips). This module
maps espeak-ng's IPA phonemes (see `lipstep.data.speech`) onto 15 viseme classes, turns a timed
phoneme sequence into a per-video-frame viseme label track, and into a continuous *mouth state*
track (openness, width, roundness) with coarticulation smoothing.

Alveolar and velar consonants (/t d n k g ŋ/) barely show on the lips: their viseme label copies
the nearest vowel of the same stretch of speech, and in the mouth track they are a half-open
version of that vowel.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import gaussian_filter1d

from lipstep.errors import LipstepError

if TYPE_CHECKING:
    from lipstep.data.speech import Phoneme

__all__ = ["MOUTH_TARGETS", "VISEMES", "is_mapped", "mouth_track", "phoneme_to_viseme", "viseme_track"]

VISEMES: tuple[str, ...] = ("sil", "AA", "AE", "EH", "IH", "OH", "OO", "FV", "MBP", "WQ", "L", "CH",
                            "TH", "SZ", "R")
_ID = {name: i for i, name in enumerate(VISEMES)}
_VOWELS = frozenset(_ID[v] for v in ("AA", "AE", "EH", "IH", "OH", "OO"))
_FALLBACK = None  # marker in the table: copy the neighbouring vowel

# espeak IPA (after `_normalise`) -> viseme name, or None for the consonants that copy a vowel.
_IPA: dict[str, str | None] = {
    **dict.fromkeys(["ɑ", "a", "aɪ", "aʊ", "ʌ", "ə", "ɐ", "h", "ɑɪ", "ɒɪ", "ʌʊ", "ɑə", "aə"], "AA"),
    **dict.fromkeys(["æ", "æɪ"], "AE"),
    **dict.fromkeys(["ɛ", "e", "eɪ", "eə", "ɛə", "ɘ"], "EH"),
    **dict.fromkeys(["ɪ", "i", "j", "ᵻ", "iə", "ɪə", "ɨ", "y", "ʏ", "ʲ", "ç"], "IH"),
    **dict.fromkeys(["ɔ", "o", "oʊ", "əʊ", "ɔɪ", "ɒ", "oə", "ɔə", "ɵ", "ø", "œ"], "OH"),
    **dict.fromkeys(["u", "ʊ", "ʊə", "ʉ", "ɯ", "uə"], "OO"),
    **dict.fromkeys(["f", "v", "ɱ", "ʋ"], "FV"),
    **dict.fromkeys(["m", "b", "p", "ɸ", "β"], "MBP"),
    **dict.fromkeys(["w", "ʍ", "ʷ", "ɥ"], "WQ"),
    **dict.fromkeys(["l", "ɫ", "əl", "ɬ", "ɮ", "ʎ", "ɭ"], "L"),
    **dict.fromkeys(["tʃ", "dʒ", "ʃ", "ʒ", "tɕ", "dʑ", "ɕ", "ʑ"], "CH"),
    **dict.fromkeys(["θ", "ð"], "TH"),
    **dict.fromkeys(["s", "z", "ts", "dz"], "SZ"),
    **dict.fromkeys(["ɹ", "r", "ɜ", "ɚ", "ɝ", "əɹ", "ɻ", "ʁ", "ʀ"], "R"),
    **dict.fromkeys(["t", "d", "n", "k", "ɡ", "g", "ŋ", "ʔ", "ɾ", "x", "ɲ", "c", "ɟ", "q", "ɣ", "χ",
                     "ɳ", "ʈ", "ɖ", "ɴ", "ɢ"], _FALLBACK),
}
_LONGEST = max(len(k) for k in _IPA)
_STRIP = frozenset("ˈˌːˑ:")  # stress and length marks (espeak's Scottish voice writes "a:")

# (openness, width, roundness) in [0, 1]; width 0 = puckered, 1 = spread.
MOUTH_TARGETS: dict[str, tuple[float, float, float]] = {
    "sil": (0.0, 0.5, 0.1),
    "AA": (0.9, 0.6, 0.1),
    "AE": (0.7, 0.75, 0.0),
    "EH": (0.5, 0.8, 0.0),
    "IH": (0.3, 0.9, 0.0),
    "OH": (0.6, 0.35, 0.7),
    "OO": (0.3, 0.1, 1.0),
    "FV": (0.1, 0.6, 0.0),
    "MBP": (0.0, 0.5, 0.2),
    "WQ": (0.2, 0.05, 1.0),
    "L": (0.4, 0.6, 0.1),
    "CH": (0.3, 0.4, 0.6),
    "TH": (0.25, 0.65, 0.0),
    "SZ": (0.15, 0.85, 0.0),
    "R": (0.3, 0.4, 0.5),
}
_TARGETS = np.array([MOUTH_TARGETS[v] for v in VISEMES], dtype=np.float64)
# Dominance in coarticulation: lip closures and lip-teeth contacts win over their neighbours.
_DOMINANCE = np.array([{"MBP": 4.0, "FV": 3.0, "WQ": 2.0, "OO": 1.5}.get(v, 1.0) for v in VISEMES])
_FALLBACK_OPENNESS = 0.5  # /t d n k g/ open the mouth half as far as the vowel they lean on
_FALLBACK_DOMINANCE = 1.0
_INTERNAL_RATE = 200.0  # Hz, rate of the mouth signal before it is averaged into frames...
_SAMPLES_PER_FRAME = 8  # ...raised for high frame rates so every frame averages this many
_SIGMA_SECONDS = 0.033  # coarticulation blur at smoothing=1 (±40 ms is ±1.2 sigma)
_CLOSE_MARGIN = 0.04  # seconds (at least one frame): silence further from speech is closed


# --------------------------------------------------------------------------- phoneme -> viseme


def _normalise(symbol: str) -> str:
    """Strip stress, length, tie bars, syllabic and other combining marks from espeak IPA."""
    decomposed = unicodedata.normalize("NFD", symbol)
    kept = "".join(ch for ch in decomposed if not unicodedata.combining(ch) and ch not in _STRIP)
    return unicodedata.normalize("NFC", kept)


def _lookup(symbol: str) -> tuple[bool, str | None]:
    """(found, viseme name or None for a fallback consonant): exact, then longest prefix."""
    norm = _normalise(symbol)
    for size in range(min(len(norm), _LONGEST), 0, -1):
        if norm[:size] in _IPA:
            return True, _IPA[norm[:size]]
    return False, _FALLBACK


def phoneme_to_viseme(symbol: str) -> int | None:
    """Viseme id of an espeak IPA phoneme; None for consonants that copy a vowel; "" is silence."""
    if symbol == "":
        return _ID["sil"]
    name = _lookup(symbol)[1]
    return None if name is None else _ID[name]


def is_mapped(symbol: str) -> bool:
    """True if the table knows `symbol` (as a viseme or an intentional fallback consonant)."""
    return symbol == "" or _lookup(symbol)[0]


# --------------------------------------------------------------------------- label tracks


def _resolve(phonemes: Sequence[Phoneme]) -> tuple[np.ndarray, np.ndarray]:
    """Per phoneme: viseme id with fallbacks replaced by their nearest vowel, and a fallback mask."""
    raw = [phoneme_to_viseme(p.symbol) for p in phonemes]
    runs = np.cumsum([p.symbol == "" for p in phonemes])  # a pause starts a new run of speech
    centres = np.array([(p.start + p.end) / 2 for p in phonemes])
    vowels: dict[int, list[int]] = {}
    for j, v in enumerate(raw):
        if v in _VOWELS:
            vowels.setdefault(int(runs[j]), []).append(j)
    fallback = np.array([v is None for v in raw], dtype=bool)
    visemes = np.array([_ID["sil"] if v is None else v for v in raw], dtype=np.int64)
    for i in np.flatnonzero(fallback):
        visemes[i] = _nearest_vowel(i, vowels.get(int(runs[i]), []), raw, centres)
    return visemes, fallback


def _nearest_vowel(i: int, candidates: list[int], raw: list, centres: np.ndarray) -> int:
    """The viseme of the candidate vowel closest in time to phoneme i (ties: the later), else EH."""
    if not candidates:
        return _ID["EH"]
    best = min(candidates, key=lambda j: (abs(centres[j] - centres[i]), -j))
    return raw[best]


def _phoneme_at(phonemes: Sequence[Phoneme], times: np.ndarray) -> np.ndarray:
    """Index of the phoneme covering each time, -1 where none does."""
    if len(phonemes) == 0:
        return np.full(len(times), -1, dtype=np.int64)
    starts = np.array([p.start for p in phonemes])
    ends = np.array([p.end for p in phonemes])
    index = np.searchsorted(starts, times, side="right") - 1
    inside = (index >= 0) & (times < ends[np.clip(index, 0, None)])
    return np.where(inside, index, -1)


def _check(n_frames: int, fps: float) -> None:
    if n_frames < 0:
        raise LipstepError(f"number of frames must be >= 0, got {n_frames}")
    if not fps > 0:
        raise LipstepError(f"fps must be positive, got {fps}")


def viseme_track(phonemes: Sequence[Phoneme], n_frames: int, fps: float = 25.0) -> np.ndarray:
    """Viseme id per video frame: the phoneme covering the frame centre; silence elsewhere."""
    _check(n_frames, fps)
    visemes, _ = _resolve(phonemes)
    index = _phoneme_at(phonemes, (np.arange(n_frames) + 0.5) / fps)
    labels = np.zeros(n_frames, dtype=np.int64)
    labels[index >= 0] = visemes[index[index >= 0]]
    return labels


# --------------------------------------------------------------------------- mouth state


def _phoneme_targets(visemes: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mouth target [N, 3] and dominance [N] per phoneme; fallbacks are a half-open vowel."""
    targets = _TARGETS[visemes].copy()
    targets[fallback, 0] *= _FALLBACK_OPENNESS
    dominance = np.where(fallback, _FALLBACK_DOMINANCE, _DOMINANCE[visemes])
    return targets, dominance


def _smooth(values: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Dominance-weighted Gaussian blur (normalised convolution) along time."""
    if sigma <= 0:
        return values
    num = gaussian_filter1d(values * weights[:, None], sigma, axis=0, mode="nearest")
    den = gaussian_filter1d(weights, sigma, mode="nearest")
    return num / den[:, None]


def _near_speech(speaking: np.ndarray, margin: int) -> np.ndarray:
    """Samples within `margin` samples of a speaking sample."""
    if margin <= 0 or not speaking.any():
        return speaking
    counts = np.convolve(speaking.astype(np.int64), np.ones(2 * margin + 1, dtype=np.int64), "same")
    return counts > 0


def _frame_average(signal: np.ndarray, times: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """Mean of the internal samples whose time falls inside each frame's interval."""
    frame_of = np.clip(np.floor(times * fps).astype(np.int64), 0, n_frames - 1)
    sums = np.zeros((n_frames, signal.shape[1]))
    np.add.at(sums, frame_of, signal)
    counts = np.bincount(frame_of, minlength=n_frames)
    return sums / np.maximum(counts, 1)[:, None]


def _internal_signal(phonemes: Sequence[Phoneme], times: np.ndarray):
    """Piecewise mouth targets [T, 3], dominance [T] and a silence mask [T] at the given times."""
    index = _phoneme_at(phonemes, times)
    signal = np.tile(_TARGETS[0], (len(times), 1))
    weight = np.full(len(times), _DOMINANCE[0])
    if len(phonemes) == 0:
        return signal, weight, np.ones(len(times), dtype=bool)
    visemes, fallback = _resolve(phonemes)
    targets, dominance = _phoneme_targets(visemes, fallback)
    speaking = (index >= 0) & (visemes[np.clip(index, 0, None)] != _ID["sil"])
    signal[speaking] = targets[index[speaking]]
    weight[speaking] = dominance[index[speaking]]
    return signal, weight, ~speaking


def mouth_track(phonemes: Sequence[Phoneme], n_frames: int, fps: float = 25.0,
                smoothing: float = 1.0) -> np.ndarray:
    """Mouth state (openness, width, roundness) per frame, float32 [n_frames, 3] in [0, 1].

    Phoneme targets are laid out at 200 Hz (or 8 samples per frame if more), blurred by a dominance-weighted Gaussian (sigma
    33 ms x `smoothing`; 0 disables it) and averaged per frame. Silence further than 40 ms (and
    one frame) from speech is closed (openness 0).
    """
    _check(n_frames, fps)
    if not smoothing >= 0:
        raise LipstepError(f"smoothing must be >= 0, got {smoothing}")
    if n_frames == 0:
        return np.zeros((0, 3), dtype=np.float32)
    rate = max(_INTERNAL_RATE, _SAMPLES_PER_FRAME * fps)
    times = (np.arange(math.ceil(n_frames / fps * rate)) + 0.5) / rate
    signal, weight, silent = _internal_signal(phonemes, times)
    signal = _smooth(signal, weight, smoothing * _SIGMA_SECONDS * rate)
    near = _near_speech(~silent, round(max(_CLOSE_MARGIN, 1.0 / fps) * rate))
    signal[~near, 0] = 0.0
    return np.clip(_frame_average(signal, times, n_frames, fps), 0.0, 1.0).astype(np.float32)
