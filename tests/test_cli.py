"""The command line: help for every verb, one-line errors with exit status 2, prepare acceptance."""

import json
import os
import subprocess
import sys

import pytest

from lipstep.cli import app, main
from tests.mediafixtures import make_real_folder

VERBS = [c.name or c.callback.__name__ for c in app.registered_commands]


def run_cli(*args):
    """Run the real console entry point in a subprocess (as a user would)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "lipstep", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for verb in VERBS:
        assert verb in text


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    assert "Usage" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["synth", "--out", "{tmp}/w", "sise=32"], "unknown config key 'sise'.*did you mean 'size'"),
    (["synth", "--out", "{tmp}/w", "--size", "20"], "world.size must be between 32 and 256"),
    (["synth", "--out", "{tmp}/w", "moderate.offset_prob=2"], "offset_prob must be in"),
    (["prepare", "{tmp}/missing", "--out", "{tmp}/p"], "missing"),
    (["prepare", "{tmp}", "--out", "{tmp}/p", "--detector", "magic"], "detector"),
    (["say", "", "--out", "{tmp}/a.wav"], "text"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    import re

    assert re.search(message, err), err


@pytest.mark.slow
def test_prepare_cli_acceptance(tmp_path):
    """3 real-format videos (different fps/sizes) + 1 corrupt file: exit 0, 3 prepared, 1 reported."""
    src = make_real_folder(tmp_path / "src")
    result = run_cli("prepare", src, "--out", tmp_path / "out", "--detector", "haar", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "broken.mp4" in result.stdout
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 3


def test_say_writes_audio_and_phonemes(tmp_path):
    result = run_cli("say", "Hello world, this is lipstep.", "--out", tmp_path / "hello.wav")
    assert result.returncode == 0, result.stderr
    phonemes = json.loads((tmp_path / "hello.phonemes.json").read_text())
    assert len(phonemes) > 10 and phonemes[-1]["end"] > 1.0
    from lipstep.data.media import read_audio

    assert len(read_audio(tmp_path / "hello.wav")) > 16000


def test_synth_cli_saves_resolved_config(tmp_path):
    result = run_cli("synth", "--out", tmp_path / "w", "--identities", "1", "--clips-per-identity", "1",
                     "--seconds", "1", "--size", "32", "--workers", "1", "head_motion=0.5")
    assert result.returncode == 0, result.stderr
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["head_motion"] == 0.5 and cfg["size"] == 32


def test_list_options_take_several_values():
    """`bench --threads 1 2` and friends: each value gets its flag (click options take one value each)."""
    from lipstep.cli import expand_list_options

    argv = ["bench", "-m", "a", "b@2", "--threads", "1", "2", "-o", "out", "--runtime=torch", "onnx", "--seconds", "2"]
    assert expand_list_options(argv) == ["bench", "-m", "a", "-m", "b@2", "--threads", "1", "--threads", "2", "-o",
                                         "out", "--runtime=torch", "--runtime", "onnx", "--seconds", "2"]
    other = ["generate", "-i", "x.png", "extra", "values"]
    assert expand_list_options(other) == other  # only the verbs that declare list options
