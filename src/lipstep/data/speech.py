"""Speech synthesis with exact phoneme timing: a *timed phoneme sequence* from espeak-ng.

The synthetic-speech half of lipstep's data pipeline. `synthesize` drives libespeak-ng through
ctypes (there are no Python bindings to depend on) and returns the waveform together with the
phonemes espeak spoke, each with start and end times that are exact in the returned waveform.

What espeak's event fields mean (measured with libespeak-ng 1.51, 22050 Hz):

* ``sample`` of an event is the absolute sample index, from the start of the current
  ``espeak_Synth`` call, in the concatenated output of all callback chunks. It does not restart
  per chunk, clause or sentence, and it does not carry over between calls. It is sample-exact
  (the first non-zero sample is at the first phoneme's ``sample``); ``audio_position`` is the
  same instant rounded to milliseconds and is not used.
* From 450 words per minute espeak time-compresses the audio with libsonic and the events no
  longer match it, so 450 is synthesised as 449 (the two sound the same).
* The PHONEME event of a stop, affricate or fricative comes *after* the silent closure espeak
  inserts before it (the closure of /p/ in "happy" is at the end of the /æ/ interval). Such
  closure silence is moved to the consonant it belongs to (see `_claim_closures`). Pause events
  ("") can sit on sound (between "key" and "eye" it is the next vowel's onset), so pauses are
  shrunk to the synthetic silence they contain (see `_trim_pauses`). Silence is recognised
  exactly: espeak writes zeros, or for echo voices exactly ``(x[n - delay] * amp) >> 8``.
* espeak keeps synthesis state (pitch flutter phase, echo buffer) in C statics that survive
  between calls, and breathy voices draw on libc ``rand()``. To make the same request give the
  same waveform, each utterance runs on a freshly loaded private instance of the library with
  ``srand`` reseeded. Instances are loaded from a copy of the library file (unlinked once
  loaded), so unloading one really resets the statics even when something else in the process
  has the system library open.

The library has global state, so every call holds a module-level lock; use processes, not
threads, to synthesise in parallel.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import ctypes.util
import os
import tempfile
import threading
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from lipstep.errors import LipstepError

__all__ = ["WORDS", "Phoneme", "Speech", "make_sentence", "synthesize", "voices"]

_MISSING = "libespeak-ng not found: install the espeak-ng package (apt-get install espeak-ng)"
_LIBRARY_NAMES = ("libespeak-ng.so.1", "libespeak-ng.so", "libespeak-ng.dylib")

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS_IPA = 0x1 | 0x2  # espeakINITIALIZE_PHONEME_EVENTS | espeakINITIALIZE_PHONEME_IPA
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EV_LIST_TERMINATED, _EV_WORD, _EV_END, _EV_MSG_TERMINATED, _EV_PHONEME = 0, 1, 5, 6, 7

_NATIVE_RATE = 22050
_SONIC_RATE = 450  # from this rate on espeak time-stretches and its events drift
_RATE_RANGE, _PITCH_RANGE = (80, 450), (0, 99)
_MIN_CLOSURE = 44  # samples (2 ms): shorter runs of synthetic silence are chance zeros
_RAND_SEED = 20240229
_ALIASES = {"en-gb": "en"}  # espeak-ng names British English "en"


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


@dataclass(frozen=True)
class Phoneme:
    """One phoneme (IPA as espeak writes it, "" for a pause) and its interval in seconds."""

    symbol: str
    start: float
    end: float


@dataclass
class Speech:
    """A synthesised utterance: waveform plus contiguous phoneme timing and word onsets."""

    wav: np.ndarray
    sample_rate: int
    phonemes: list[Phoneme]
    words: list[tuple[str, float]]
    text: str
    voice: str

    @property
    def seconds(self) -> float:
        return len(self.wav) / self.sample_rate


@dataclass
class _Raw:
    """What one espeak_Synth call produced, in native samples."""

    audio: np.ndarray  # int16
    phonemes: list[tuple[int, str]]  # (sample, symbol)
    words: list[tuple[int, int, int]]  # (sample, text_position, length)
    end: int  # sample of the last END event


# --------------------------------------------------------------------------- library loading


def _system_library() -> tuple[ctypes.CDLL, str | None]:
    """The installed libespeak-ng and, where the loader can tell, its file path."""
    found = ctypes.util.find_library("espeak-ng")
    for name in (*_LIBRARY_NAMES, *([found] if found else [])):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        return lib, _library_path(lib)
    raise LipstepError(_MISSING)


def _library_path(lib: ctypes.CDLL) -> str | None:
    info = _DlInfo()
    try:
        dladdr = ctypes.CDLL(None).dladdr
        address = ctypes.cast(lib.espeak_Initialize, ctypes.c_void_p)
        ok = dladdr(address, ctypes.byref(info))
    except (OSError, AttributeError):
        return None
    return os.fsdecode(info.dli_fname) if ok and info.dli_fname else None


def _library_image() -> bytes:
    """The installed library file's bytes, or b"" where its path cannot be found or read."""
    lib, path = _system_library()
    try:
        image = Path(path).read_bytes() if path else b""
    except OSError:
        image = b""
    if image:
        _dlclose(lib)  # only the bytes are needed; private copies are loaded from them
    return image


def _load_private(image: bytes) -> ctypes.CDLL | None:
    """Load `image` as a new, private instance of the library; None if that is impossible.

    The bytes go to a fresh temporary file that is unlinked as soon as it is loaded: a new file
    (new inode, unique name) makes the loader map a separate instance with fresh C statics, and
    nothing is left on disk even if the process is killed later.
    """
    try:
        fd, path = tempfile.mkstemp(prefix="lipstep-espeak-", suffix=".so")
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(image)
        return ctypes.CDLL(path)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _dlclose_function():
    return getattr(_ctypes, "dlclose", None)


def _dlclose(lib: ctypes.CDLL) -> None:
    close = _dlclose_function()
    if close is not None:
        close(lib._handle)


def _declare(lib: ctypes.CDLL) -> None:
    c = ctypes
    lib.espeak_Initialize.argtypes = [c.c_int, c.c_int, c.c_char_p, c.c_int]
    lib.espeak_Initialize.restype = c.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [c.c_char_p]
    lib.espeak_SetParameter.argtypes = [c.c_int, c.c_int, c.c_int]
    lib.espeak_Synth.argtypes = [c.c_void_p, c.c_size_t, c.c_uint, c.c_int, c.c_uint, c.c_uint,
                                 c.c_void_p, c.c_void_p]
    lib.espeak_Info.argtypes = [c.POINTER(c.c_char_p)]
    lib.espeak_Info.restype = c.c_char_p


# --------------------------------------------------------------------------- the engine


class _Collector:
    """Receives espeak's callback: int16 chunks and the events that come with them."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple] = []
        self.callback = _SynthCallback(self._receive)

    def _receive(self, wav, n_samples, events) -> int:
        if n_samples > 0 and wav:  # copy via bytes: ctypes caches a new array type per shape
            self.chunks.append(np.frombuffer(ctypes.string_at(wav, 2 * n_samples), dtype=np.int16))
        i = 0
        while events and events[i].type != _EV_LIST_TERMINATED:
            self.events.append(_event_tuple(events[i]))
            i += 1
        return 0


def _event_tuple(event: _Event) -> tuple:
    if event.type == _EV_PHONEME:
        detail = bytes(event.id.string).split(b"\0")[0].decode("utf-8", "ignore")
    else:
        detail = event.id.number
    return event.type, event.sample, event.text_position, event.length, detail


class _Engine:
    """One loaded, initialised libespeak-ng; `fresh` until it has synthesised something.

    A private instance is `reloadable`: once used it is terminated and unloaded, and the next
    utterance gets a new instance. The shared system library (the fallback) is reused instead.
    """

    def __init__(self, lib: ctypes.CDLL, private: bool):
        self.lib, self.fresh = lib, True
        self.reloadable = private and _dlclose_function() is not None
        _declare(lib)
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, None, _INIT_PHONEME_EVENTS_IPA)
        if self.sample_rate <= 0:
            raise LipstepError("espeak-ng is installed but cannot initialise: is espeak-ng-data missing?")
        self.collector = _Collector()
        lib.espeak_SetSynthCallback(self.collector.callback)

    def data_path(self) -> Path | None:
        path = ctypes.c_char_p()
        self.lib.espeak_Info(ctypes.byref(path))
        return Path(os.fsdecode(path.value)) if path.value else None

    def close(self) -> None:
        """Free espeak's memory and unload (reloadable engines only: never use one afterwards)."""
        self.lib.espeak_Terminate()
        _dlclose(self.lib)

    def set_voice(self, voice: str) -> None:
        name = _ALIASES.get(voice.split("+")[0], voice.split("+")[0])
        variant = voice.partition("+")[2]
        full = f"{name}+{variant}" if variant else name
        if self.lib.espeak_SetVoiceByName(full.encode()) != 0 or not self._variant_exists(variant):
            raise LipstepError(f"unknown espeak voice {voice!r} (see lipstep.data.speech.voices())")

    def _variant_exists(self, variant: str) -> bool:
        data = self.data_path()
        return not variant or data is None or (data / "voices" / "!v" / variant).is_file()

    def synth(self, text: str, rate: int, pitch: int) -> _Raw:
        self.fresh = False
        self.lib.espeak_SetParameter(_PARAM_RATE, min(rate, _SONIC_RATE - 1), 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self.collector.chunks.clear()
        self.collector.events.clear()
        ctypes.CDLL(None).srand(_RAND_SEED)
        data = text.encode("utf-8")
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if status != 0:
            raise LipstepError(f"espeak-ng failed to synthesise the text (status {status})")
        raw = _raw_result(self.collector)
        self.collector.chunks.clear()
        self.collector.events.clear()
        return raw


def _raw_result(collector: _Collector) -> _Raw:
    chunks = collector.chunks
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    events = sorted(collector.events, key=lambda e: e[1])  # stable: keeps espeak's order at ties
    phonemes = [(e[1], e[4]) for e in events if e[0] == _EV_PHONEME]
    words = [(e[1], e[2], e[3]) for e in events if e[0] == _EV_WORD]
    ends = [e[1] for e in events if e[0] in (_EV_END, _EV_MSG_TERMINATED)]
    end = max(ends) if ends else len(audio)
    return _Raw(audio, phonemes, words, min(end, len(audio)) if len(audio) else end)


_LOCK = threading.Lock()
_STATE: dict = {"engine": None, "image": None}


def _engine() -> _Engine:
    """An engine that has not synthesised yet; reload a used one so every utterance starts alike."""
    engine: _Engine | None = _STATE["engine"]
    if engine is not None and (engine.fresh or not engine.reloadable):
        return engine  # a non-reloadable one is reused: timing stays exact, audio may vary by call order
    if engine is not None:
        _STATE["engine"] = None
        engine.close()
    _STATE["engine"] = _Engine(*_load_library())
    return _STATE["engine"]


def _load_library() -> tuple[ctypes.CDLL, bool]:
    """(library, private): a private fresh instance when possible, else the shared system one."""
    if _STATE["image"] is None:
        _STATE["image"] = _library_image()
    lib = _load_private(_STATE["image"]) if _STATE["image"] else None
    return (lib, True) if lib is not None else (_system_library()[0], False)


def _reset_after_fork() -> None:
    """In a forked child: a new lock, and abandon the inherited library copy.

    espeak runs helper threads that a fork does not copy, so `espeak_Terminate` would wait for
    them forever. The inherited instance is left loaded and untouched; the child loads its own.
    """
    global _LOCK
    _LOCK = threading.Lock()
    _STATE["engine"] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# --------------------------------------------------------------------------- timing


def _echo_of(data: Path | None, voice: str) -> tuple[int, int]:
    """(delay in native samples, amplitude in 1/256) of the voice variant's echo, (0, 0) if none."""
    variant = voice.partition("+")[2]
    if not variant or data is None:
        return 0, 0
    delay = amp = 0
    try:
        lines = (data / "voices" / "!v" / variant).read_text(errors="ignore").splitlines()
    except OSError:
        return 0, 0
    for line in lines:
        words = line.split("//")[0].split()
        if len(words) >= 3 and words[0] == "echo":
            delay, amp = int(words[1]), min(int(words[2]), 100)
    return (delay * _NATIVE_RATE // 1000, amp) if delay > 0 else (0, 0)


def _synthetic_silence(audio: np.ndarray, echo: tuple[int, int]) -> np.ndarray:
    """Mask of samples espeak wrote as silence: exactly zero, or exactly the echo of the past."""
    delay, amp = echo
    x = audio.astype(np.int32)
    expected = np.zeros_like(x)
    if amp and delay < len(x):
        expected[delay:] = (x[:-delay] * amp) >> 8
    return x == expected


def _long_runs(mask: np.ndarray, min_length: int) -> np.ndarray:
    """`mask` with its runs of True shorter than `min_length` cleared."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = ends - starts >= min_length
    delta = np.zeros(len(mask) + 1, dtype=np.int64)
    np.add.at(delta, starts[keep], 1)
    np.add.at(delta, ends[keep], -1)
    return np.cumsum(delta[:-1]) > 0


def _trim_pauses(marks: list[tuple[int, str]], silent: np.ndarray, end: int) -> list[tuple[int, str]]:
    """Shrink each pause to its silent part; a pause with no silence at all is dropped.

    espeak emits pause events between some words (e.g. "key eye") while the audio there is the
    next vowel's onset. Sound before a pause's silence belongs to the previous phoneme, sound
    after it to the next one.
    """
    out: list[tuple[int, str]] = []
    bounds = [s for s, _ in marks[1:]] + [end]
    carry = None
    for i, ((start, symbol), stop) in enumerate(zip(marks, bounds)):
        start, carry = (start if carry is None else carry), None
        quiet = np.flatnonzero(silent[start:stop]) if symbol == "" else None
        last = i == len(marks) - 1
        if quiet is None or (last and quiet.size == 0):
            out.append((start, symbol))
        elif quiet.size == 0:
            carry = start  # no silence: the interval goes to the next phoneme
        else:
            out.append((start if not out else start + int(quiet[0]), symbol))
            carry = None if last else start + int(quiet[-1]) + 1
    return out


def _silent_run(silent: np.ndarray, end: int, floor: int) -> int:
    """Start of the run of silent samples that ends at `end`, not earlier than `floor`."""
    window = silent[floor:end][::-1]
    if window.size == 0 or not window[0]:
        return end
    loud = np.flatnonzero(~window)
    return end - (int(loud[0]) if loud.size else window.size)


def _claim_closures(marks: list[tuple[int, str]], silent: np.ndarray) -> list[tuple[int, str]]:
    """Move each phoneme's start back over the synthetic silence just before it.

    espeak emits the event of /p t k/ (and shorter gaps before fricatives) after the closure it
    inserts, so the closure would belong to the previous phoneme. Pauses are never shortened,
    and a phoneme that is silent all through keeps its interval (there is nothing to split).
    """
    out = list(marks)
    for i in range(1, len(out)):
        (prev_start, prev_symbol), (start, symbol) = out[i - 1], out[i]
        if prev_symbol == "":
            continue
        begin = _silent_run(silent, start, prev_start)
        if begin > prev_start and start - begin >= _MIN_CLOSURE:
            out[i] = (begin, symbol)
    return out


def _phoneme_marks(raw: _Raw) -> list[tuple[int, str]]:
    """(start sample, symbol) for every phoneme, a leading pause added, empty ones dropped."""
    marks = [(min(max(s, 0), raw.end), sym) for s, sym in raw.phonemes]
    if not marks or marks[0][0] > 0:
        marks.insert(0, (0, ""))
    kept: list[tuple[int, str]] = []
    for start, symbol in marks:
        if kept and kept[-1][0] == start:
            kept[-1] = (start, symbol)  # a zero-length phoneme: the later event wins
        elif not (kept and kept[-1][1] == "" and symbol == ""):
            kept.append((start, symbol))  # consecutive pauses merge into the first
    return kept


def _timed_phonemes(marks: list[tuple[int, str]], end: int, rate: int) -> list[Phoneme]:
    bounds = [s for s, _ in marks[1:]] + [end]
    return [Phoneme(sym, s / rate, e / rate) for (s, sym), e in zip(marks, bounds) if e > s]


def _word_onsets(raw: _Raw, text: str, phonemes: list[Phoneme], rate: int) -> list[tuple[str, float]]:
    """Each WORD event's text with the start of its first sounding phoneme."""
    words = []
    for sample, position, length in raw.words:
        word = text[position - 1: position - 1 + length].strip() if position > 0 else ""
        starts = [p.start for p in phonemes if p.symbol and p.start * rate >= sample - 1]
        if word and any(ch.isalnum() for ch in word) and starts:
            words.append((word, starts[0]))
    return words


def _resample(audio: np.ndarray, source: int, target: int) -> np.ndarray:
    wav = audio.astype(np.float32) / 32768.0
    if source != target:
        g = gcd(source, target)
        wav = resample_poly(wav, target // g, source // g).astype(np.float32)
    return np.clip(wav, -1.0, 1.0)


# --------------------------------------------------------------------------- public API


def _validate(text: str, voice: str, rate: int, pitch: int, sample_rate: int) -> None:
    if not isinstance(text, str) or not text.strip():
        raise LipstepError("cannot synthesise empty text")
    if not isinstance(voice, str) or not voice.strip() or "\0" in voice:
        raise LipstepError(f"unknown espeak voice {voice!r} (see lipstep.data.speech.voices())")
    if not _RATE_RANGE[0] <= rate <= _RATE_RANGE[1]:
        raise LipstepError(f"speech rate {rate} is outside {_RATE_RANGE[0]}..{_RATE_RANGE[1]} words per minute")
    if not _PITCH_RANGE[0] <= pitch <= _PITCH_RANGE[1]:
        raise LipstepError(f"speech pitch {pitch} is outside {_PITCH_RANGE[0]}..{_PITCH_RANGE[1]}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise LipstepError(f"sample rate must be a positive whole number of Hz, got {sample_rate}")


def synthesize(text: str, *, voice: str = "en-us", rate: int = 160, pitch: int = 50,
               sample_rate: int = 16000) -> Speech:
    """Speak `text` with espeak-ng; phoneme times are exact in the returned waveform."""
    _validate(text, voice, rate, pitch, sample_rate)
    clean = text.replace("\0", " ")
    with _LOCK:
        engine = _engine()
        engine.set_voice(voice)
        raw = engine.synth(clean, int(rate), int(pitch))
        native, echo = engine.sample_rate, _echo_of(engine.data_path(), voice)
    silent = _long_runs(_synthetic_silence(raw.audio, echo), _MIN_CLOSURE)
    marks = _claim_closures(_trim_pauses(_phoneme_marks(raw), silent, raw.end), silent)
    phonemes = _timed_phonemes(marks, raw.end, native)
    if not any(p.symbol for p in phonemes):
        raise LipstepError(f"espeak-ng found nothing to speak in {text!r}")
    words = _word_onsets(raw, clean, phonemes, native)
    wav = _resample(raw.audio, native, int(sample_rate))
    return Speech(wav, int(sample_rate), phonemes, words, text, voice)


_BASES = ("en-us", "en", "en-gb-scotland", "en-029")
_VARIANTS = ("", "+f1", "+f2", "+f3", "+f4", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7",
             "+klatt", "+klatt2", "+klatt3")


def voices() -> list[str]:
    """English voices (accent + variant) verified to speak with exact timing, for speaker variety."""
    return [base + variant for base in _BASES for variant in _VARIANTS]


WORDS: tuple[str, ...] = (
    # lips closed: m b p
    "map", "mom", "baby", "bubble", "paper", "people", "moon", "maybe", "problem", "number",
    "bump", "impossible", "remember", "simple", "mobile", "table", "happy", "apple", "boom", "pump",
    "member", "temper", "bamboo", "pepper", "model", "moment", "point", "bring", "bottle", "plumber",
    # lip to teeth: f v
    "five", "fever", "coffee", "laugh", "very", "voice", "favour", "forever", "fifty", "vivid",
    "office", "phone", "fun", "van", "leaf", "never", "often", "river", "gift", "fluffy",
    # tongue between teeth: th
    "think", "three", "thumb", "bath", "both", "mother", "father", "brother", "weather", "smooth",
    "thank", "these", "those", "clothing", "month", "south", "with", "north", "truth", "other",
    # s z
    "sister", "seven", "sunset", "zoo", "zero", "lazy", "music", "roses", "size", "busy",
    "city", "nice", "science", "sixty", "easy", "season", "houses", "amazing", "dozen", "pizza",
    # sh ch j zh
    "ship", "shoe", "fish", "chair", "cheese", "church", "judge", "jump", "juice", "garage",
    "measure", "vision", "nation", "ocean", "teacher", "chicken", "jacket", "bridge", "wish", "fresh",
    # l
    "little", "lemon", "yellow", "hello", "light", "lovely", "lily", "fall", "ball", "lesson",
    "silly", "hill", "feel", "school", "world", "lonely", "pillow", "gentle", "tell", "always",
    # r
    "red", "rabbit", "around", "carrot", "bird", "worker", "learn", "turn", "hurry", "orange",
    "right", "forty", "mirror", "her", "word", "early", "curtain", "purple", "story", "garden",
    # w and rounded vowels
    "water", "window", "wonder", "quick", "queen", "twelve", "away", "wood", "woman", "wheel",
    "food", "blue", "room", "true", "soup", "youth", "two", "new", "good", "book",
    "look", "cook", "pull", "put", "would", "should", "foot", "sugar", "cool", "noon",
    "go", "show", "boat", "home", "no", "slow", "open", "over", "road", "snow",
    "talk", "walk", "saw", "caught", "law", "boy", "toy", "join", "noise", "coin",
    # open vowels
    "hot", "pot", "top", "stop", "box", "clock", "dog", "car", "far", "start",
    "park", "heart", "large", "calm", "palm", "art", "bar", "star", "hard", "ask",
    "up", "cup", "sun", "bus", "love", "much", "lucky", "under", "money", "young",
    "time", "night", "fine", "mind", "kind", "high", "eye", "ice", "sky", "five",
    "now", "how", "out", "down", "town", "house", "loud", "cloud", "mouth", "power",
    # front vowels
    "cat", "hat", "bad", "black", "hand", "man", "back", "sad", "happy", "family",
    "bed", "red", "head", "bread", "egg", "ten", "yes", "every", "seven", "ready",
    "day", "play", "rain", "game", "name", "great", "wait", "eight", "make", "table",
    "sit", "big", "it", "kid", "pin", "this", "live", "give", "window", "listen",
    "see", "tree", "sea", "key", "green", "sleep", "team", "people", "peace", "believe",
    "year", "here", "near", "ear", "clear", "hair", "where", "care", "there", "pair",
    # mixed and function words
    "and", "the", "a", "of", "to", "in", "is", "you", "that", "was",
    "for", "on", "are", "as", "they", "at", "be", "from", "or", "one",
    "had", "by", "but", "not", "what", "all", "were", "we", "when", "your",
    "can", "said", "each", "which", "she", "do", "their", "if", "will", "about",
    "computer", "yesterday", "tomorrow", "beautiful", "question", "animal", "kitchen", "picture", "minute", "thought",
)
WORDS = tuple(dict.fromkeys(WORDS))  # drop repeats, keep order


def make_sentence(rng: np.random.Generator, n_words: int) -> str:
    """A random sentence of `n_words` from `WORDS`: capitalised, '.'-terminated, sometimes a comma."""
    if n_words < 1:
        raise LipstepError(f"a sentence needs at least one word, got {n_words}")
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=n_words)]
    if n_words >= 4 and rng.random() < 0.4:
        cut = int(rng.integers(1, n_words - 1))
        words[cut] += ","
    sentence = " ".join(words)
    return sentence[0].upper() + sentence[1:] + "."
