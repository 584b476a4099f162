"""Visemes: IPA mapping coverage, frame labels against audio energy, the mouth-state track."""

import numpy as np
import pytest

from lipstep.data.speech import Phoneme, make_sentence, synthesize
from lipstep.data.visemes import (
    MOUTH_TARGETS,
    VISEMES,
    is_mapped,
    mouth_track,
    phoneme_to_viseme,
    viseme_track,
)
from lipstep.errors import LipstepError

FPS = 25.0
V = {name: i for i, name in enumerate(VISEMES)}
COMMA_SENTENCES = [
    "Bob is here, papa.",
    "Hello world, this is a test.",
    "My mother, who lives by the sea, makes good soup.",
    "Stop the car, open the window, and wait for me.",
]


def frames_for(speech, extra: int = 0) -> int:
    return int(np.ceil(speech.seconds * FPS)) + extra


def frame_rms(speech, n_frames: int) -> np.ndarray:
    hop = int(speech.sample_rate / FPS)
    wav = np.pad(speech.wav, (0, max(0, n_frames * hop - len(speech.wav))))[: n_frames * hop]
    return np.sqrt((wav.reshape(n_frames, hop).astype(np.float64) ** 2).mean(axis=1))


def with_silence(phonemes, lead: float, tail: float) -> list[Phoneme]:
    shifted = [Phoneme(p.symbol, p.start + lead, p.end + lead) for p in phonemes]
    return [Phoneme("", 0.0, lead), *shifted, Phoneme("", shifted[-1].end, shifted[-1].end + tail)]


def seq(*items: tuple[str, float]) -> list[Phoneme]:
    out, t = [], 0.0
    for symbol, seconds in items:
        out.append(Phoneme(symbol, t, t + seconds))
        t += seconds
    return out


def test_viseme_classes():
    assert len(VISEMES) == 15 and VISEMES[0] == "sil" and set(MOUTH_TARGETS) == set(VISEMES)
    for name, (openness, width, roundness) in MOUTH_TARGETS.items():
        assert all(0.0 <= x <= 1.0 for x in (openness, width, roundness)), name
    assert MOUTH_TARGETS["sil"][0] == MOUTH_TARGETS["MBP"][0] == 0.0
    assert max(MOUTH_TARGETS.values())[0] == MOUTH_TARGETS["AA"][0]
    assert MOUTH_TARGETS["FV"][0] <= 0.15
    rounded = sorted(MOUTH_TARGETS, key=lambda v: -MOUTH_TARGETS[v][2])[:2]
    assert set(rounded) == {"OO", "WQ"}
    assert min(MOUTH_TARGETS["IH"][1], MOUTH_TARGETS["SZ"][1], MOUTH_TARGETS["EH"][1]) > MOUTH_TARGETS["OO"][1]


@pytest.mark.parametrize(
    ("symbol", "viseme"),
    [("", "sil"), ("p", "MBP"), ("m", "MBP"), ("ˈɑː", "AA"), ("aɪə", "AA"), ("ɑːɹ", "AA"), ("æ", "AE"),
     ("eɪ", "EH"), ("iː", "IH"), ("j", "IH"), ("əʊ", "OH"), ("ɔɪ", "OH"), ("uː", "OO"), ("f", "FV"),
     ("w", "WQ"), ("əl", "L"), ("tʃ", "CH"), ("ʒ", "CH"), ("θ", "TH"), ("z", "SZ"), ("ɚ", "R"),
     ("ɜː", "R"), ("a:", "AA"), ("n̩", None), ("t̪", None), ("ŋ", None), ("ɡ", None)],
)
def test_ipa_mapping(symbol, viseme):
    assert phoneme_to_viseme(symbol) == (None if viseme is None else V[viseme])
    assert is_mapped(symbol)


def test_unknown_symbols_fall_back_without_crashing():
    for symbol in ("☃", "?", "123", "Q"):
        assert phoneme_to_viseme(symbol) is None and not is_mapped(symbol)


def test_every_symbol_espeak_emits_is_mapped():
    rng = np.random.default_rng(11)
    accents = ("en-us", "en", "en-gb-scotland", "en-029")
    symbols = set()
    for k in range(30):
        speech = synthesize(make_sentence(rng, int(rng.integers(5, 12))), voice=accents[k % 4])
        symbols |= {p.symbol for p in speech.phonemes}
    assert len(symbols) > 30
    assert sorted(s for s in symbols if not is_mapped(s)) == []
    classes = {phoneme_to_viseme(s) for s in symbols}
    assert {V[v] for v in VISEMES} - classes == set()  # the word list exercises every class


def test_viseme_track_follows_frame_centres_and_fallbacks():
    ph = seq(("", 0.1), ("k", 0.08), ("ɑː", 0.2), ("t", 0.08), ("", 0.2), ("n", 0.08), ("", 0.1))
    track = viseme_track(ph, 30)
    assert track.dtype == np.int64 and track.shape == (30,)
    names = [VISEMES[i] for i in track]
    assert names[:2] == ["sil", "sil"]  # frame centres 0.02, 0.06 lie in the pause
    assert names[2:4] == ["AA", "AA"]  # /k/ copies the vowel of its stretch of speech
    assert names[-5:] == ["sil"] * 5  # past the end
    assert names[int(0.5 * FPS)] == "sil"
    assert names[int(0.7 * FPS)] == "EH"  # /n/ alone between pauses: no vowel to copy
    assert viseme_track([], 4).tolist() == [0, 0, 0, 0]


def test_silent_frames_are_quiet_in_the_audio():
    ratios = []
    for text in COMMA_SENTENCES:
        speech = synthesize(text)
        n = frames_for(speech)
        labels, energy = viseme_track(speech.phonemes, n), frame_rms(speech, n)
        assert (labels == 0).any() and (labels != 0).any()
        ratios.append(energy[labels == 0].mean() / energy[labels != 0].mean())
    assert max(ratios) < 0.2, ratios


def test_mouth_track_shape_range_and_silence():
    speech = synthesize("My mother, who lives by the sea, makes good soup.")
    ph = with_silence(speech.phonemes, lead=0.4, tail=0.0)
    n = frames_for(speech, extra=20)
    mouth = mouth_track(ph, n)
    assert mouth.dtype == np.float32 and mouth.shape == (n, 3)
    assert mouth.min() >= 0.0 and mouth.max() <= 1.0
    labels = viseme_track(ph, n)
    centres = (np.arange(n) + 0.5) / FPS
    speaking = [(p.start, p.end) for p in ph if p.symbol]
    far = [min(max(s - t, t - e, 0.0) for s, e in speaking) > 1.5 / FPS for t in centres]
    closed = (labels == 0) & np.array(far)
    assert closed[:5].all() and closed[-10:].all() and closed[5:-10].any()  # lead, tail, comma
    assert mouth[closed, 0].max() < 0.05
    assert mouth[labels != 0, 0].max() > 0.4


def test_mouth_opens_for_open_vowels_and_moves_smoothly():
    speech = synthesize("Father hot pot.")
    mouth = mouth_track(speech.phonemes, frames_for(speech))
    assert mouth[:, 0].max() > 0.4
    for text in [*COMMA_SENTENCES, "Happy baby, pump a bubble map.", "Hot dogs are far apart."]:
        speech = synthesize(text)
        mouth = mouth_track(speech.phonemes, frames_for(speech, extra=5))
        assert np.abs(np.diff(mouth, axis=0)).max() <= 0.5, text


def test_lip_closures_and_reduced_fallback_consonants():
    ph = seq(("", 0.2), ("ɑː", 0.2), ("m", 0.12), ("ɑː", 0.2), ("t", 0.12), ("ɑː", 0.2), ("", 0.3))
    mouth = mouth_track(ph, 40)

    def at(t: float) -> float:
        return float(mouth[int(t * FPS), 0])

    assert at(0.3) > 0.6 and at(0.46) < 0.15  # mid-/m/ the lips close
    assert 0.2 < at(0.78) < at(0.7)  # /t/ is a half-open copy of the vowel
    raw = mouth_track(ph, 40, smoothing=0.0)
    aa = MOUTH_TARGETS["AA"][0]
    assert raw[int(0.79 * FPS), 0] == pytest.approx(0.5 * aa, abs=1e-6)
    assert viseme_track(ph, 40)[int(0.79 * FPS)] == V["AA"]


def test_mouth_track_edge_cases_and_errors():
    assert mouth_track([], 3).shape == (3, 3) and not mouth_track([], 3)[:, 0].any()
    assert mouth_track(seq(("ɑː", 0.2)), 0).shape == (0, 3)
    for bad in ({"n_frames": -1}, {"fps": 0.0}, {"smoothing": -1.0}):
        kwargs = {"n_frames": 5, **bad}
        with pytest.raises(LipstepError):
            mouth_track(seq(("ɑː", 0.2)), **kwargs)
    with pytest.raises(LipstepError):
        viseme_track(seq(("ɑː", 0.2)), -2)
