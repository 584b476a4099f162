"""The `lipstep` command line: one thin command per verb (parse -> build config -> call the library).

Expected errors (`LipstepError`) print one line on stderr and exit with status 2; no traceback.
Set LIPSTEP_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from lipstep import __version__
from lipstep.errors import LipstepError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

app = typer.Typer(
    name="lipstep",
    help="Fast audio-driven talking avatars: synthesize data, prepare it, train, distill, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

OVERRIDES_HELP = "Config overrides as dotted key=value pairs, e.g. world.size=128."


def _version(value: bool):
    if value:
        typer.echo(f"lipstep {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """lipstep: portrait + speech in, lip-synced talking-head video out, in 1-6 network evaluations."""


# ---------------------------------------------------------------------------------------------
# data verbs


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for the synthetic world."),
    identities: int = typer.Option(8, help="Number of identities (split by identity into train/val/test)."),
    clips_per_identity: int = typer.Option(2, help="Clips rendered per identity."),
    seconds: float = typer.Option(3.0, help="Length of each clip in seconds."),
    size: int = typer.Option(64, help="Frame size in pixels (32-256)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same world."),
    quality: str = typer.Option("clean", help="'clean' or 'moderate' (offsets, jitter, drops, compression, "
                                               "wrong audio, as FADA's broader student data)."),
    workers: int = typer.Option(0, help="Worker processes (0 = one per CPU core)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
):
    """Render the synthetic talking-head world: speech, faces whose mouths follow it, labels."""
    from lipstep.config import apply_overrides, set_key
    from lipstep.data.world import WorldConfig, synthesize_world

    cfg = WorldConfig()
    for key, value in dict(identities=identities, clips_per_identity=clips_per_identity, seconds=seconds,
                           size=size, seed=seed, quality=quality).items():
        set_key(cfg, key, value, parse=False)
    apply_overrides(cfg, overrides or [])
    summary = synthesize_world(cfg, out, workers=workers)
    typer.echo(summary)


@app.command()
def say(
    text: str = typer.Argument(..., help="Text to speak (English)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output audio file (.wav, .flac or .ogg)."),
    voice: str = typer.Option("en-us", help="espeak-ng voice, optionally with a variant, e.g. en-us+f3."),
    rate: int = typer.Option(160, help="Speaking rate in words per minute (80-450)."),
    pitch: int = typer.Option(50, help="Pitch 0-99."),
):
    """Synthesize speech with exact phoneme timing (libespeak-ng); writes audio and a phoneme list."""
    from lipstep.data.media import write_audio
    from lipstep.data.speech import synthesize
    from lipstep.fsutil import write_json_atomic

    speech = synthesize(text, voice=voice, rate=rate, pitch=pitch)
    write_audio(out, speech.wav, speech.sample_rate)
    phon = out.with_suffix(".phonemes.json")
    write_json_atomic(phon, [{"phoneme": p.symbol, "start": round(p.start, 4), "end": round(p.end, 4)}
                             for p in speech.phonemes])
    typer.echo(f"wrote {out} ({speech.seconds:.2f} s, {len(speech.phonemes)} phonemes) and {phon}")


@app.command()
def prepare(
    src: Path = typer.Argument(..., help="A synthetic world directory or a folder of talking-head videos."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for prepared shards."),
    size: int = typer.Option(64, help="Face crop size in pixels."),
    detector: str = typer.Option("auto", help="Face detector: auto, haar, dlib or none (centre crop)."),
    workers: int = typer.Option(0, help="Worker processes (0 = one per CPU core)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
):
    """Prepare clips for training: face crops, 25 fps, 16 kHz mono, log-mel windows, shards."""
    from lipstep.config import apply_overrides, set_key
    from lipstep.data.prepare import PrepareConfig, prepare_dataset

    cfg = PrepareConfig()
    set_key(cfg, "size", size, parse=False)
    set_key(cfg, "detector", detector, parse=False)
    apply_overrides(cfg, overrides or [])
    summary = prepare_dataset(src, out, cfg, workers=workers)
    typer.echo(summary)
    if summary.prepared + summary.reused == 0:
        raise LipstepError(f"no clip could be prepared from {src}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Where to write the demo outputs."),
):
    """Run the main job on the embedded default (currently: render and prepare a small synthetic world)."""
    from lipstep.demo import run_demo

    run_demo(out)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning expected errors into one-line messages."""
    try:
        app(args=argv, prog_name="lipstep", standalone_mode=True)
    except LipstepError as e:
        if os.environ.get("LIPSTEP_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
