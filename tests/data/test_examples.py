"""Example inputs of `lipstep demo` / `lipstep bench`: made once, only those asked for, no world left behind."""

from lipstep.data.examples import example_inputs
from lipstep.data.media import read_audio


def test_example_inputs_makes_only_what_is_missing(tmp_path):
    portrait, speech = example_inputs(tmp_path, portrait=False)
    assert not portrait.exists() and len(read_audio(speech, 16000)) > 16000  # over a second of speech
    assert (tmp_path / "speech.phonemes.json").is_file() and not (tmp_path / "world").exists()
    stamp = speech.stat().st_mtime_ns
    assert example_inputs(tmp_path, portrait=False) == (portrait, speech) and speech.stat().st_mtime_ns == stamp
