"""Speech synthesis: audio, exact phoneme timing against the waveform, determinism, errors."""

import itertools
import re

import numpy as np
import pytest

from lipstep.data import speech
from lipstep.data.speech import Phoneme, make_sentence, synthesize, voices
from lipstep.errors import LipstepError

FRAME = 1 / 25


def rms(wav: np.ndarray, start: float, seconds: float, sr: int) -> float:
    a = max(round(start * sr), 0)
    seg = wav[a : a + round(seconds * sr)]
    return float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if seg.size else 0.0


def first_sound(wav: np.ndarray, sr: int, threshold: float = 1e-3) -> float:
    return float(np.flatnonzero(np.abs(wav) > threshold)[0]) / sr


def test_synthesis_returns_audio_and_contiguous_phonemes():
    sp = synthesize("Hello world, this is a test.")
    assert sp.wav.dtype == np.float32 and sp.wav.ndim == 1 and sp.sample_rate == 16000
    assert 0.05 < np.abs(sp.wav).max() <= 1.0
    assert sp.seconds == pytest.approx(len(sp.wav) / 16000)
    ph = sp.phonemes
    assert ph[0].start == 0.0 and all(isinstance(p, Phoneme) for p in ph)
    for a, b in itertools.pairwise(ph):
        assert a.end == b.start and a.start < a.end
    assert ph[-1].end <= sp.seconds + FRAME
    assert [w for w, _ in sp.words] == ["Hello", "world", "this", "is", "a", "test"]
    starts = [t for _, t in sp.words]
    assert starts == sorted(starts) and sp.text == "Hello world, this is a test." and sp.voice == "en-us"


def test_same_request_gives_identical_audio_even_after_other_calls():
    for voice in ("en-us", "en-us+f3"):  # f3 adds breath noise (libc rand) and an echo
        first = synthesize("Bob is here, papa.", voice=voice)
        synthesize("Something completely different in between.", voice="en+m3", rate=300)
        second = synthesize("Bob is here, papa.", voice=voice)
        np.testing.assert_array_equal(first.wav, second.wav)
        assert first.phonemes == second.phonemes


def test_phoneme_starts_match_sound_onsets_exactly():
    sp = synthesize("Bob is here, papa.")
    sr, wav = sp.sample_rate, sp.wav
    first = next(p for p in sp.phonemes if p.symbol)
    assert first.start > 0.005  # espeak leads with a short pause
    assert abs(first_sound(wav, sr) - first.start) < 0.001
    assert rms(wav, first.start - 0.01, 0.01, sr) < 1e-3
    assert max(rms(wav, first.start + k * 0.01, 0.01, sr) for k in range(3)) > 0.01
    pauses = [p for p in sp.phonemes[1:-1] if p.symbol == ""]
    assert pauses, "the comma should give a pause"
    for pause in pauses:  # silent all through, and sound starts right after it
        assert rms(wav, pause.start + 0.003, pause.end - pause.start - 0.006, sr) < 1e-3
        assert max(rms(wav, pause.end + k * 0.01, 0.01, sr) for k in range(3)) > 0.01


def test_stop_closure_belongs_to_the_stop_and_is_quieter_than_the_vowel():
    for voice in ("en-us", "en-us+f4"):  # f4 has an echo: closures are not digital zero there
        sp = synthesize("happy mama papa", voice=voice)
        ph, wav, sr = sp.phonemes, sp.wav, sp.sample_rate
        stops = [i for i, p in enumerate(ph) if p.symbol in ("p", "b") and 0 < i < len(ph) - 1]
        assert len(stops) >= 3
        for i in stops:
            stop, vowel = ph[i], ph[i + 1]
            closure = rms(wav, stop.start, min(0.03, stop.end - stop.start), sr)
            assert closure < 0.3 * rms(wav, vowel.start, vowel.end - vowel.start, sr)
    # word-internal /p/ of "happy": the vowel sounds up to the boundary, the closure is silent
    sp = synthesize("happy")
    i = next(i for i, p in enumerate(sp.phonemes) if p.symbol == "p")
    before, stop = sp.phonemes[i - 1], sp.phonemes[i]
    assert rms(sp.wav, before.end - 0.01, 0.01, 16000) > 0.01
    assert rms(sp.wav, stop.start + 0.001, 0.02, 16000) < 1e-3


def test_times_restart_at_each_call_and_rate_450_stays_exact():
    synthesize(" ".join(["a long first sentence"] * 6))
    sp = synthesize("Bob.")
    assert sp.phonemes[-1].end <= sp.seconds + FRAME and sp.seconds < 1.0
    assert next(p for p in sp.phonemes if p.symbol).start < 0.05
    fast = synthesize("Bob is here, papa.", rate=450)  # espeak's time-stretching starts at 450
    assert abs(first_sound(fast.wav, 16000) - next(p for p in fast.phonemes if p.symbol).start) < 0.001
    assert fast.phonemes[-1].end <= fast.seconds + FRAME


def test_other_sample_rates_keep_times_in_seconds():
    base = synthesize("Bob is here.")
    hi = synthesize("Bob is here.", sample_rate=22050)
    assert hi.phonemes == base.phonemes and hi.sample_rate == 22050
    assert hi.seconds == pytest.approx(base.seconds, abs=1e-3)


def test_every_listed_voice_speaks():
    listed = voices()
    assert "en-us" in listed and "en-us+f3" in listed and len(set(listed)) == len(listed)
    for voice in listed:
        sp = synthesize("Maybe.", voice=voice)
        assert np.abs(sp.wav).max() > 0.05, voice
        assert any(p.symbol for p in sp.phonemes), voice


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "empty"),
        ({"text": "   \n"}, "empty"),
        ({"voice": "xx-nowhere"}, "xx-nowhere"),
        ({"voice": "en-us+nonexistent"}, "en-us+nonexistent"),
        ({"rate": 79}, "rate 79"),
        ({"rate": 451}, "rate 451"),
        ({"pitch": 100}, "pitch 100"),
        ({"sample_rate": 0}, "sample rate"),
        ({"text": "..."}, "nothing to speak"),
    ],
)
def test_bad_requests_raise_clear_errors(kwargs, message):
    text = kwargs.pop("text", "hello")
    with pytest.raises(LipstepError, match=re.escape(message)) as info:
        synthesize(text, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_library_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(speech, "_LIBRARY_NAMES", ("libno-such-espeak.so.9",))
    monkeypatch.setattr(speech.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(LipstepError, match="libespeak-ng not found: install the espeak-ng package"):
        speech._system_library()


def test_word_list_and_sentences():
    assert 250 <= len(speech.WORDS) <= 400 and len(set(speech.WORDS)) == len(speech.WORDS)
    assert all(w.isalpha() and w.islower() for w in speech.WORDS)
    a = [make_sentence(np.random.default_rng(7), n) for n in (1, 5, 9)]
    b = [make_sentence(np.random.default_rng(7), n) for n in (1, 5, 9)]
    assert a == b
    for sentence, n in zip(a, (1, 5, 9)):
        assert sentence[0].isupper() and sentence.endswith(".") and len(sentence.split()) == n
    rng = np.random.default_rng(0)
    assert any("," in make_sentence(rng, 8) for _ in range(20))
    with pytest.raises(LipstepError):
        make_sentence(rng, 0)
