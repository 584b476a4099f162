"""The `lipstep` command line: one thin command per verb (parse -> build config -> call the library).

Bad input of any kind (an expected `LipstepError`; a usage error: a bad option value, a missing or
unknown option; a file-system error the user's paths or disk cause: a missing file, a name too long, a
full disk, a folder that cannot be written) prints one line, ``error: ...``, on
stderr and exits with status 2: no traceback, no usage box. Warnings print as one ``warning: ...``
line. Each command checks its output path (and device, guidance scales) before any work; an output
folder that a run created is removed again when the run fails on bad input, except a training run's
(its checkpoints are kept for ``--resume``). Set LIPSTEP_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from lipstep import __version__
from lipstep.checks import MAX_THREADS, check_device, check_output, check_steps, check_threads, missing_root
from lipstep.config import SEED_MAX, apply_overrides, load_config, set_key, validate
from lipstep.errors import LipstepError
from lipstep.fsutil import remove_made, write_json_atomic

# Each command imports the library it drives inside its function: importing them all here would load
# torch, scipy and every layer (about 8 s of CPU) before `lipstep --help` could answer
# (tests/test_layers.py allows lazy imports in this module only).

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

_created: list[Path] = []   # outputs this run made; `main` removes them if the run fails with bad input

# File-system errors that are bad input, not bugs, so one line too: the disk's state (full, over quota,
# read-only, no permission), and, when the error names its path, a path that cannot be what the user
# asked (missing, under a file, a folder, too long, a symlink loop, in the way). Any other OSError, or a
# path error naming no path, is a bug and keeps its traceback.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_PATH_ERRORS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST,
                errno.ENOTEMPTY}

# The base class of click's usage errors (a bad option value, a missing or unknown option): typer >= 0.2x
# raises those of its own copy of click, older typer click's own; both have BadParameter under it.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _output_dir(path: Path, *, keep: bool = False) -> None:
    """Check the ``--out`` folder before any work (`check_output`); if this run creates it, a failure with bad
    input removes it again, unless `keep` (a training run: its checkpoints are worth resuming). Output files
    need no such care: they are written atomically."""
    check_output(path)
    if not keep and (made := missing_root(path)) is not None:
        _created.append(made)


def _check_scales(cfg_audio: float | None, cfg_ref: float | None) -> None:
    from lipstep.diffusion.guidance import check_scale

    for option, scale in (("--cfg-audio", cfg_audio), ("--cfg-ref", cfg_ref)):
        if scale is not None:
            check_scale(scale, option)


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
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Random seed; the same seed gives the same world."),
    quality: str = typer.Option("clean", help="'clean' or 'moderate' (offsets, jitter, drops, compression, "
                                               "wrong audio, as FADA's broader student data)."),
    workers: int = typer.Option(0, min=0, max=MAX_THREADS, help="Worker processes (0 = one per CPU core)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
):
    """Render the synthetic talking-head world: speech, faces whose mouths follow it, labels."""
    _output_dir(out)
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
    check_output(out, file=True)
    from lipstep.data.media import write_audio
    from lipstep.data.speech import synthesize

    speech = synthesize(text, voice=voice, rate=rate, pitch=pitch)
    existed = out.exists()
    write_audio(out, speech.wav, speech.sample_rate)
    phon = out.with_suffix(".phonemes.json")
    try:   # the audio and its phoneme list land together or not at all
        write_json_atomic(phon, [{"phoneme": p.symbol, "start": round(p.start, 4), "end": round(p.end, 4)}
                                 for p in speech.phonemes])
    except BaseException:
        if not existed:
            out.unlink(missing_ok=True)
        raise
    typer.echo(f"wrote {out} ({speech.seconds:.2f} s, {len(speech.phonemes)} phonemes) and {phon}")


@app.command()
def prepare(
    src: Path = typer.Argument(..., help="A synthetic world directory or a folder of talking-head videos."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for prepared shards."),
    size: int = typer.Option(64, help="Face crop size in pixels."),
    detector: str = typer.Option("auto", help="Face detector: auto, haar, dlib or none (centre crop)."),
    workers: int = typer.Option(0, min=0, max=MAX_THREADS, help="Worker processes (0 = one per CPU core)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
):
    """Prepare clips for training: face crops, 25 fps, 16 kHz mono, log-mel windows, shards."""
    _output_dir(out)
    from lipstep.data.prepare import PrepareConfig, prepare_dataset

    cfg = PrepareConfig()
    set_key(cfg, "size", size, parse=False)
    set_key(cfg, "detector", detector, parse=False)
    apply_overrides(cfg, overrides or [])
    typer.echo(prepare_dataset(src, out, cfg, workers=workers))


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Where to write the demo outputs."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory or bundled name "
                                        "(default: the fastest bundled model)."),
    bench_seconds: float = typer.Option(2.0, help="Seconds of speech in the teacher-vs-student benchmark "
                                        "(0 = no benchmark)."),
):
    """The main job on the embedded default: example portrait + example speech -> talking video, then the
    bundled teacher against the bundled student(s) in one `lipstep bench` run."""
    if not (math.isfinite(bench_seconds) and bench_seconds >= 0):
        raise LipstepError(f"--bench-seconds must be a finite number >= 0, got {bench_seconds:g}")
    from lipstep.modeldir import read_info, resolve_model

    if model is not None:
        read_info(resolve_model(model))   # a missing or damaged model, before the example inputs are made
    _output_dir(out)
    from lipstep.demo import run_demo

    run_demo(out, model, bench_seconds=bench_seconds)


# ---------------------------------------------------------------------------------------------
# training verbs

train_app = typer.Typer(help="Train a component: the latent codec, the diffusion teacher, an evaluator, or the "
                        "audio -> viseme classifier.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("codec")
def train_codec_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory (output of lipstep prepare)."),
    out: Path = typer.Option(..., "--out", "-o", help="Codec directory to write (config.json, + model.safetensors for a trained codec)."),
    steps: int = typer.Option(2000, help="Optimizer steps."),
    batch: int = typer.Option(32, help="Frames per step."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of CodecTrainConfig, "
                                                    "e.g. codec.block_out_channels=[16,32,64].", show_default=False),
):
    """Train lipstep's own small AutoencoderKL on the train frames of a prepared directory, or with
    codec.kind=pixel write the lossless pixel codec (space-to-depth, no weights) without training."""
    _output_dir(out, keep=True)
    from lipstep.codecs.vae import CodecTrainConfig, train_codec

    cfg = CodecTrainConfig()
    set_key(cfg, "steps", steps, parse=False)
    set_key(cfg, "batch", batch, parse=False)
    apply_overrides(cfg, overrides or [])
    cfg.validate()
    r = train_codec(data, out, cfg)
    typer.echo(f"wrote codec {r.out} ({r.parameters / 1e6:.2f} M parameters) in {r.seconds:.0f} s: "
               f"reconstruction PSNR {r.psnr:.2f} dB on {r.eval_split}, scaling factor {r.scaling_factor:.4f}")


@train_app.command("teacher")
def train_teacher_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory (output of lipstep prepare)."),
    codec: Path = typer.Option(..., "--codec", "-c", help="Codec directory (lipstep train codec, or a diffusers VAE)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints/, logs/, val/ and the final model/."),
    preset: str = typer.Option("small", help="AvatarDiT size: tiny, small, base or large."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: train.steps of the config)."),
    batch_size: Optional[int] = typer.Option(None, help="Windows per step and process (default: train.batch_size)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of TeacherConfig, e.g. "
                                                    "train.lr=1e-4 loss.motion_weight=0 sampler.cfg_audio=2.5.",
                                                    show_default=False),
):
    """Train the multi-step diffusion teacher (AvatarDiT) on cached codec latents."""
    _output_dir(out, keep=True)
    from lipstep.train.teacher import TeacherConfig, train_teacher

    cfg = _run_config(TeacherConfig, out, resume, steps, batch_size, overrides, preset=preset)
    train_teacher(data, codec, out, cfg, resume=resume)


def _run_config(cls, out: Path, resume: bool, steps: int | None, batch_size: int | None,
                overrides: list[str] | None, **fresh):
    """The config of a training run: the run's own `config.json` on --resume (else `cls(**fresh)`), then
    --steps / --batch-size and the overrides, validated."""
    if resume and (out / "config.json").is_file():
        cfg = load_config(cls, out / "config.json")  # the run's own settings
    else:
        cfg = cls()
        for key, value in fresh.items():
            set_key(cfg, key, value, parse=False)
    if steps is not None:
        set_key(cfg, "train.steps", steps, parse=False)
    if batch_size is not None:
        set_key(cfg, "train.batch_size", batch_size, parse=False)
    apply_overrides(cfg, overrides or [])
    validate(cfg)
    return cfg


def _train_config(cls, steps: int | None, overrides: list[str] | None):

    cfg = cls()
    if steps is not None:
        set_key(cfg, "steps", steps, parse=False)
    apply_overrides(cfg, overrides or [])
    cfg.validate()
    return cfg


@train_app.command("mouth-reader")
def train_mouth_reader_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared synthetic-world directory (with mouth labels)."),
    out: Path = typer.Option(..., "--out", "-o", help="Mouth reader directory to write."),
    codec: Optional[Path] = typer.Option(None, "--codec", "-c", help="Codec directory: train on its reconstructions "
                                         "too (recommended: generated frames are codec decodes)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: 1500)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of MouthTrainConfig.",
                                                    show_default=False),
):
    """Train the CNN mouth reader behind MouthErr; reports its held-out error."""
    _output_dir(out, keep=True)
    from lipstep.eval.train_mouthreader import MouthTrainConfig, train_mouth_reader

    r = train_mouth_reader(data, out, _train_config(MouthTrainConfig, steps, overrides), codec_dir=codec)
    typer.echo(f"wrote mouth reader {r.out} ({r.parameters / 1e3:.0f} k parameters) in {r.seconds:.0f} s; held-out "
               + "; ".join(f"{k}: openness MAE {v['mae']:.4f}, corr {v['corr']:.3f}"
                           + (f" (codec recon: {v['mae_codec']:.4f}, {v['corr_codec']:.3f})" if "mae_codec" in v else "")
                           for k, v in r.heldout.items()))


@train_app.command("syncnet")
def train_syncnet_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory (frames + audio)."),
    out: Path = typer.Option(..., "--out", "-o", help="SyncNet directory to write."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: 3000)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of SyncTrainConfig.",
                                                    show_default=False),
):
    """Train lipstep's own SyncNet-style evaluator (never use it as a training loss)."""
    _output_dir(out, keep=True)
    from lipstep.eval.train_syncnet import SyncTrainConfig, train_syncnet

    r = train_syncnet(data, out, _train_config(SyncTrainConfig, steps, overrides))
    typer.echo(f"wrote SyncNet {r.out} ({r.parameters / 1e6:.2f} M parameters) in {r.seconds:.0f} s; held-out "
               f"({r.eval_split}) pair accuracy {r.accuracy:.3f}, rank accuracy {r.rank_accuracy:.3f}; "
               f"protocol {r.protocol}")


@train_app.command("features")
def train_features_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Feature-net directory to write."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: 2000)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of FeatureTrainConfig.",
                                                    show_default=False),
):
    """Train lipstep's own frame feature net (internal FD/KID/FVD when no Inception/I3D weights are given)."""
    _output_dir(out, keep=True)
    from lipstep.eval.train_features import FeatureTrainConfig, train_feature_net

    r = train_feature_net(data, out, _train_config(FeatureTrainConfig, steps, overrides), progress=True)
    typer.echo(f"wrote feature net {r.out} in {r.seconds:.0f} s; held-out ({r.eval_split}) reconstruction L1 "
               f"{r.eval_l1:.4f}")


@train_app.command("identity")
def train_identity_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory (several identities)."),
    out: Path = typer.Option(..., "--out", "-o", help="Identity-encoder directory to write."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: the config's)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of IdentityTrainConfig.",
                                                    show_default=False),
):
    """Train lipstep's own identity encoder (id_sim on the synthetic world)."""
    _output_dir(out, keep=True)
    from lipstep.eval.train_identity import IdentityTrainConfig, train_identity

    r = train_identity(data, out, _train_config(IdentityTrainConfig, steps, overrides))
    e = r.eval
    typer.echo(f"wrote identity encoder {r.out} in {r.seconds:.0f} s; " + (
        f"held-out ({e['split']}, {e['identities']} unseen identities) verification AUC {e['auc']:.4f}, "
        f"EER {e['eer']:.4f}" if e else "no held-out identities to verify on"))


@train_app.command("evaluators")
def train_evaluators_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared synthetic-world directory."),
    codec: Optional[Path] = typer.Option(None, "--codec", "-c", help="Codec directory (for the mouth reader)."),
    out: Path = typer.Option(..., "--out", "-o", help="Evaluators directory: mouth/, syncnet/, features/, identity/."),
    only: Optional[List[str]] = typer.Option(None, "--only", help="Train only these (repeatable): mouth, syncnet, "
                                             "features, identity."),
):
    """Train every evaluator `lipstep eval` uses without external weights, with default settings."""
    _output_dir(out, keep=True)
    names = only or ["mouth", "syncnet", "features", "identity"]
    bad = [n for n in names if n not in ("mouth", "syncnet", "features", "identity")]
    if bad:
        raise LipstepError(f"--only: unknown evaluator {bad[0]!r}; choose from mouth, syncnet, features, identity")
    for name in names:
        typer.echo(f"--- {name}")
        if name == "mouth":
            train_mouth_reader_cmd(data, out / "mouth", codec, None, None)
        elif name == "syncnet":
            train_syncnet_cmd(data, out / "syncnet", None, None)
        elif name == "features":
            train_features_cmd(data, out / "features", None, None)
        else:
            train_identity_cmd(data, out / "identity", None, None)


@train_app.command("eyes")
def train_eyes_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory with blink labels (the synthetic world)."),
    out: Path = typer.Option(..., "--out", "-o", help="Eye net directory to write."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The model (directory or bundled name) whose codec "
                                        "latents the eye net works in (default: the default model)."),
    codec: Optional[Path] = typer.Option(None, "--codec", "-c", help="A codec directory instead of a model's."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: 2000)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of EyeTrainConfig.",
                                                    show_default=False),
):
    """Train the eyelid renderer that draws blinks on generated frames; attach it with lipstep export --eyes."""
    _output_dir(out, keep=True)
    if model is not None and codec is not None:
        raise typer.BadParameter("give --model or --codec, not both")
    from lipstep.modeldir import components_dir, read_info, resolve_model
    from lipstep.train.eyes import EyeTrainConfig, train_eyes

    if codec is None:
        root = resolve_model(model)
        codec = components_dir(root, read_info(root)) / "codec"
    r = train_eyes(data, codec, out, _train_config(EyeTrainConfig, steps, overrides))
    typer.echo(f"wrote eye net {r.out} ({r.parameters / 1e3:.0f} k parameters, for the codec {codec}) in "
               f"{r.seconds:.0f} s; blinks in the training labels: {r.blinks_per_second:.3f}/s; eye band on shut-eye "
               "frames (input -> output, real): " + "; ".join(
                   f"{k} {v['eyes_input']:.1f} -> {v['eyes_output']:.1f} ({v['eyes_real']:.1f}), PSNR to the real "
                   f"frame {v['psnr_input']:.2f} -> {v['psnr_output']:.2f} dB" for k, v in r.heldout.items()))


@train_app.command("visemes")
def train_visemes_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared synthetic-world directory (speech + viseme labels)."),
    out: Path = typer.Option(..., "--out", "-o", help="Viseme classifier directory to write."),
    world: Optional[Path] = typer.Option(None, "--world", "-w", help="The synthetic world DATA was prepared from "
                                         "(names each clip's voice where DATA's manifest does not)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: 1500)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of VisemeTrainConfig, e.g. "
                                                    "holdout_by=variant synth_clips=400.", show_default=False),
):
    """Train the audio -> viseme classifier (audio kind viseme-audio); reports frame accuracy on held-out voices."""
    _output_dir(out)
    from lipstep.audio.train_visemes import VisemeTrainConfig, train_viseme_classifier

    r = train_viseme_classifier(data, out, _train_config(VisemeTrainConfig, steps, overrides), world=world)
    typer.echo(f"wrote viseme classifier {r.out} ({r.parameters / 1e3:.0f} k parameters) in {r.seconds:.0f} s; "
               f"frame accuracy (majority-class baseline): " + "; ".join(
                   f"{name.replace('_', ' ')} {v['accuracy']:.3f} ({v['majority_baseline']:.3f}, {v['frames']} frames)"
                   for name, v in r.results.items()) + f"; held out: {', '.join(r.holdout)}")


# ---------------------------------------------------------------------------------------------
# distillation

distill_app = typer.Typer(help="Distill a multi-step teacher into a few-step student.", no_args_is_help=True)
app.add_typer(distill_app, name="distill")


@distill_app.command("perflow")
def distill_perflow_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory the student trains on (may differ from "
                              "the teacher's data, e.g. a moderate-quality world)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints/, logs/, val/ and the student model/."),
    teacher: str = typer.Option("teacher", "--teacher", "-t", help="Teacher model directory or bundled name."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: train.steps of the config)."),
    batch_size: Optional[int] = typer.Option(None, help="Windows per step and process (default: train.batch_size)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of PerflowConfig, e.g. "
                                                    "windows=4 solver_steps=8 cfg_mode=tokens mixed.mode=fixed:0.2 "
                                                    "target=velocity student_steps=6.", show_default=False),
):
    """FADA: PeRFlow step distillation with adaptive mixed supervision and multi-CFG token distillation."""
    _output_dir(out, keep=True)
    from lipstep.distill.perflow import PerflowConfig, PerflowRecipe
    from lipstep.train.runner import run_recipe

    cfg = _run_config(PerflowConfig, out, resume, steps, batch_size, overrides)
    run_recipe(PerflowRecipe(teacher, cfg), data, out, resume=resume)


@distill_app.command("dmd")
def distill_dmd_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory the student trains on."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints/, logs/, val/ and the student model/."),
    teacher: str = typer.Option("teacher", "--teacher", "-t", help="Teacher model directory or bundled name."),
    steps: Optional[int] = typer.Option(None, help="Training steps, fake-score and generator steps together "
                                        "(default: train.steps of the config)."),
    batch_size: Optional[int] = typer.Option(None, help="Windows per step and process (default: train.batch_size)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of DMDConfig, e.g. "
                                                    "student_steps=4 fake_updates=5 fake_lr=4e-5 cfg_mode=tokens "
                                                    "backward_simulation=false reg_weight=0.25 pairs=256.",
                                                    show_default=False),
):
    """TurboTalk stage 1: distribution matching distillation (DMD2) to a few-step, one-pass-per-step student."""
    _output_dir(out, keep=True)
    from lipstep.distill.dmd import DMDConfig, DMDRecipe
    from lipstep.train.runner import run_recipe

    cfg = _run_config(DMDConfig, out, resume, steps, batch_size, overrides)
    run_recipe(DMDRecipe(teacher, cfg), data, out, resume=resume)


@distill_app.command("adversarial")
def distill_adversarial_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory the student trains on."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints/, logs/, val/ and the student model/."),
    student: str = typer.Option(..., "--student", "-s", help="The few-step student this round starts from (a "
                                "`lipstep distill dmd` model, or an earlier round's)."),
    teacher: str = typer.Option("teacher", "--teacher", "-t", help="The teacher the student came from (model "
                                "directory or bundled name): the discriminator's frozen features."),
    steps: Optional[int] = typer.Option(None, help="Training steps, discriminator and student steps together "
                                        "(default: train.steps of the config)."),
    batch_size: Optional[int] = typer.Option(None, help="Windows per step and process (default: train.batch_size)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of AdversarialConfig, e.g. "
                                                    "target_steps=1 reference=self_more_steps curriculum=d_noise "
                                                    "loss=nonsaturating discriminator.conditional=false chain=3 "
                                                    "distill_weight=0.1.", show_default=False),
):
    """TurboTalk stage 2: one round of progressive adversarial distillation (half the steps, self-compare)."""
    _output_dir(out, keep=True)
    from lipstep.distill.adversarial import AdversarialConfig, AdversarialRecipe
    from lipstep.train.runner import run_recipe

    cfg = _run_config(AdversarialConfig, out, resume, steps, batch_size, overrides)
    run_recipe(AdversarialRecipe(student, teacher, cfg), data, out, resume=resume)


@distill_app.command("lite")
def distill_lite_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory the student trains on."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints/, logs/, val/ and the student model/."),
    source: str = typer.Option("teacher", "--source", "-s", help="The model the lite student learns from: a few-step "
                               "student (step distillation on its grid) or a teacher (output matching)."),
    teacher: str = typer.Option("teacher", "--teacher", "-t", help="The teacher whose layout and data encoding the "
                                "source shares (model directory or bundled name)."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default: train.steps of the config)."),
    batch_size: Optional[int] = typer.Option(None, help="Windows per step and process (default: train.batch_size)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP + " Keys of LiteConfig, e.g. "
                                                    "width_factor=0.5 depth_factor=0.5 identity_net=DIR id_weight=0.1 "
                                                    "temp_weight=0.1 target=data.", show_default=False),
):
    """TempoSyncDiff: a lightweight few-step student (a fifth of the FLOPs per evaluation) with identity anchoring and
    temporal regularisation."""
    _output_dir(out, keep=True)
    from lipstep.distill.lite import LiteConfig, LiteRecipe
    from lipstep.train.runner import run_recipe

    cfg = _run_config(LiteConfig, out, resume, steps, batch_size, overrides)
    run_recipe(LiteRecipe(source, teacher, cfg), data, out, resume=resume)


# ---------------------------------------------------------------------------------------------
# generation


@app.command()
def generate(
    image: Path = typer.Option(..., "--image", "-i", help="Portrait image (any format PIL reads)."),
    audio: Path = typer.Option(..., "--audio", "-a", help="Speech (wav, flac, mp3, ogg, m4a, or a video's audio)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output video (.mp4, .mkv or .mov), written atomically."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory or bundled name "
                                        "(see lipstep models); default: the fastest bundled model."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps per chunk (default: the model's)."),
    cfg_audio: Optional[float] = typer.Option(None, help="Audio guidance scale (default: the model's)."),
    cfg_ref: Optional[float] = typer.Option(None, help="Reference guidance scale (default: the model's)."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Seed of the initial noise."),
    detector: str = typer.Option("auto", help="Face detector for the portrait crop: auto, haar, dlib or none."),
    max_seconds: Optional[float] = typer.Option(None, help="Refuse audio longer than this many seconds (default: "
                                                "no limit; the video is written frame by frame, so memory grows "
                                                "only with the audio, 64 KB a second)."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    runtime: str = typer.Option("torch", help="What runs the networks: torch, onnx or onnx-int8 (ONNX Runtime on "
                                "the CPU; needs the model's export from lipstep export MODEL OUT --onnx [--int8])."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch and ONNX Runtime (default: torch's)."),
    emit: str = typer.Option("frames", help="frames: write the video; latents: write the latents and the audio to "
                             "a .safetensors file instead, nothing decoded (hybrid mode; render it later with "
                             "lipstep decode)."),
    blink_rate: Optional[float] = typer.Option(None, "--blink-rate", help="Blinks per second (default: the model's, "
                                               "see lipstep models; 0 = none)."),
):
    """Portrait + speech -> lip-synced talking-head video with the original audio (or, with --emit latents, the
    latents to render it from elsewhere)."""
    check_output(out, file=True)
    check_device(device)
    _check_scales(cfg_audio, cfg_ref)
    check_steps(steps)
    from lipstep.data.faces import resolve_detector

    resolve_detector(detector)   # an unknown name, or dlib without the package, before the model loads
    if max_seconds is not None and not max_seconds > 0:
        raise LipstepError(f"--max-seconds must be positive, got {max_seconds:g}")
    if emit not in ("frames", "latents"):
        raise LipstepError(f"--emit must be frames or latents, got {emit!r}")
    _set_threads(threads)
    from lipstep.hybrid import generate_latents_file
    from lipstep.pipeline import generate_file
    from lipstep.runtime import check_runtime

    check_runtime(runtime)
    options = {"steps": steps, "cfg_audio": cfg_audio, "cfg_ref": cfg_ref, "seed": seed, "detector": detector,
               "max_seconds": max_seconds, "device": device, "runtime": runtime, "threads": threads,
               "blinks_per_second": blink_rate}
    if emit == "latents":
        path, res, seconds, meta = generate_latents_file(model, image, audio, out, **options)
        shape = "x".join(map(str, meta.latent_shape))
        typer.echo(f"wrote {path}: {res.frames} latents [{shape}] float32 ({res.seconds:.2f} s of video at "
                   f"{res.fps:g} fps), {meta.bytes_per_second / 1024:.1f} KB per second of video (+ the audio); "
                   f"{res.chunks} chunks x {res.steps} steps, NFE {res.nfe}; {seconds:.2f} s total "
                   f"(denoise {res.timings['denoise']:.2f} s); render it with lipstep decode {path} OUT.mp4")
        return
    path, res, seconds = generate_file(model, image, audio, out, **options)
    n = res.frames
    typer.echo(f"wrote {path}: {n} frames ({res.seconds:.2f} s) at {res.fps:g} fps; {res.chunks} chunks x "
               f"{res.steps} steps, NFE {res.nfe}; {seconds:.2f} s total, {n / seconds:.1f} frames/s "
               f"(denoise {res.timings['denoise']:.2f} s, decode {res.timings['decode']:.2f} s; {runtime})")


@app.command()
def decode(
    latents: Path = typer.Argument(..., help="Latents file from lipstep generate --emit latents."),
    out: Path = typer.Argument(..., help="Output video (.mp4, .mkv or .mov), written atomically."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory or bundled name whose codec "
                                        "renders the latents (default: the model recorded in the file); a codec "
                                        "other than the one that made them is refused."),
):
    """Render latents (hybrid mode) to the video lipstep generate writes: the same frames, bit for bit."""
    check_output(out, option="OUT", file=True)
    from lipstep.hybrid import decode_file

    path, meta, seconds = decode_file(latents, out, model=model)
    typer.echo(f"wrote {path}: {meta.frames} frames ({meta.frames / meta.fps:.2f} s) at {meta.fps:g} fps, "
               f"decoded in {seconds:.2f} s")


def _set_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads (ONNX Runtime sessions take the same count)."""
    check_threads(threads)
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory or bundled name, loaded once "
                                        "at start-up (default: the fastest bundled model)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on. The default answers this machine only; the "
                             "server has no authentication, so open it (0.0.0.0) only on a network you trust."),
    port: int = typer.Option(8000, help="TCP port."),
    device: str = typer.Option("cpu", help="Torch device of the model, e.g. cpu or cuda."),
    overrides: Optional[List[str]] = typer.Argument(
        None, show_default=False, help="Limits and settings as key=value (keys of lipstep.server.ServeConfig): "
        "max_sessions=4 (generations at once, more get 429), max_upload_mb=20 (request body and WebSocket "
        "message), max_audio_seconds=600 (/v1/generate), max_stream_seconds=3600 (one stream), idle_timeout_s=30 "
        "(a stream that sends nothing for so long is closed), workers=2 (generation threads), threads=0 (torch CPU threads; 0 = "
        "torch's default), max_portraits=64, jpeg_quality=90."),
):
    """Serve a talking avatar: POST /v1/generate (portrait + speech file -> mp4) and WebSocket /v1/stream (PCM
    chunks in, frames out as they are made), with GET /health and OpenAPI docs at /docs. Logs are JSON lines on
    stderr; Ctrl-C stops the server. The protocol is in the README (Serving)."""
    check_device(device)
    from lipstep.server import ServeConfig
    from lipstep.server import serve as run_server

    options = dict(model=model, host=host, port=port, device=device)
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        if key in options:
            raise LipstepError(f"{item}: set {key} with --{key}, not as a key=value setting")
    cfg = ServeConfig()
    for key, value in options.items():
        set_key(cfg, key, value, parse=False)
    apply_overrides(cfg, overrides or [])
    run_server(cfg)


@app.command()
def models():
    """List the bundled models with their kind, default steps and network evaluations per chunk."""
    from lipstep.pipeline import default_model, describe_models

    rows = describe_models()
    if not rows:
        typer.echo("no bundled models are installed")
        return
    head = (f"{'name':<10} {'kind':<8} {'recipe':<11} {'steps':>5} {'cfg a/r':>8} {'NFE/chunk':>9} {'params':>8} "
            f"{'size':>8}  {'blinks':<18} quality bar")
    typer.echo(head)
    for r in rows:
        shared = f"  ({r['weights_of']}'s weights)" if r.get("weights_of") else ""
        typer.echo(f"{r['name']:<10} {r['kind']:<8} {r['recipe']:<11} {r['steps']:>5} {r['cfg']:>8} "
                   f"{r['nfe_per_chunk']:>9} {r['params_m']:>7.2f}M {r['size_mb']:>6.1f}MB  {r['blinks']:<18} "
                   f"{r['quality_bar']}{shared}")
    typer.echo(f"default (the fastest not judged below the bar): {default_model()}")


@app.command()
def export(
    model_arg: Optional[str] = typer.Argument(None, metavar="[MODEL]", help="Model directory or bundled name "
                                              "(or --model)."),
    out_arg: Optional[Path] = typer.Argument(None, metavar="[OUT]", help="Where to write the copy (or --out)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory or bundled name."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the copy (a model directory)."),
    onnx: bool = typer.Option(False, "--onnx", help="Also export the denoiser, the codec decoder and the audio front "
                              "end to OUT/onnx/ (ONNX, with the parity to PyTorch measured and recorded in "
                              "OUT/onnx/export.json), for lipstep generate --runtime onnx."),
    int8: bool = typer.Option(False, "--int8", help="With --onnx: also an int8 denoiser (onnxruntime dynamic "
                              "quantisation) for --runtime onnx-int8."),
    half: bool = typer.Option(False, "--half", help="Store weights in float16 (half the size on disk)."),
    quality_bar: Optional[str] = typer.Option(None, "--quality-bar", help="met | not-met: record whether the model "
                                              "meets the project's quality bar (a bundled model judged not-met is "
                                              "never the default, only used by name)."),
    evidence: str = typer.Option("", "--evidence", help="Where the judgement comes from (e.g. "
                                 "experiments/turbotalk/README.md); needs --quality-bar."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Record this default number of sampler steps (e.g. a "
                                        "DMD generator measured at 1 step exported as a 1-step model)."),
    eyes: Optional[Path] = typer.Option(None, "--eyes", help="Attach this eye net (lipstep train eyes, trained for "
                                        "the model's codec): the copy blinks at --blink-rate."),
    blink_rate: Optional[float] = typer.Option(None, "--blink-rate", help="Blinks per second the copy draws (default: "
                                               "the rate of the eye net's training labels, else the model's; 0 = off)."),
):
    """Copy a model directory, optionally with float16 weights (how bundled models are stored) and its ONNX export."""
    model, out = _one_of(model_arg, model, "MODEL", "--model"), _one_of(out_arg, out, "OUT", "--out")
    if int8 and not onnx:
        raise typer.BadParameter("--int8 needs --onnx")
    if quality_bar not in (None, "met", "not-met"):
        raise typer.BadParameter(f"--quality-bar must be met or not-met, got {quality_bar!r}")
    if evidence and quality_bar is None:
        raise typer.BadParameter("--evidence needs --quality-bar")
    _output_dir(out)
    from lipstep.modeldir import MAX_BLINKS_PER_SECOND
    from lipstep.pipeline import AvatarPipeline

    check_steps(steps)
    if blink_rate is not None and not 0 <= blink_rate <= MAX_BLINKS_PER_SECOND:
        raise typer.BadParameter(f"--blink-rate must be in 0..{MAX_BLINKS_PER_SECOND:g} blinks per second, got "
                                 f"{blink_rate}")
    pipe = AvatarPipeline.from_pretrained(model)
    if steps is not None:
        pipe.info.sampler.steps = steps
    if eyes is not None:
        pipe.attach_eyes(eyes, blink_rate)
    elif blink_rate is not None:
        if blink_rate > 0 and pipe.eyes is None and not pipe.denoiser.cfg.blink:
            raise typer.BadParameter(f"--blink-rate: {model} has nothing to draw blinks with (no eye net, and its "
                                     "denoiser does not read blinks); attach one with --eyes EYES")
        pipe.info.blinks_per_second = blink_rate
    pipe.info.validate()
    if quality_bar is not None:
        pipe.info.trained["quality_bar"] = {"met": quality_bar == "met", "evidence": evidence}
    path = pipe.save_pretrained(out, half=half)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    typer.echo(f"wrote {path} ({size / 2**20:.1f} MB{', float16' if half else ''})")
    if onnx:
        from lipstep.runtime import export_onnx

        typer.echo(_describe_export(path, export_onnx(path, int8=int8)))


def _one_of(argument, option, name: str, flag: str):
    """The value of a positional argument or of its option (not both, not neither)."""
    if argument is not None and option is not None:
        raise typer.BadParameter(f"give {name} or {flag}, not both")
    if argument is None and option is None:
        raise typer.BadParameter(f"missing {name} (or {flag})")
    return argument if argument is not None else option


def _describe_export(path: Path, manifest: dict) -> str:
    """The lines `lipstep export --onnx` prints: each file with its size and parity, then the frames' parity."""
    lines = [f"wrote {path / 'onnx'} (opset {manifest['opset']}, {manifest['seconds']:.1f} s):"]
    for name, f in manifest["files"].items():
        lines.append(f"  {name:<20} {f['bytes'] / 2**20:7.2f} MB  max |ONNX - PyTorch| {f['parity']['max_abs_diff']:.2e}"
                     f"  ({f['precision']})")
    frames = manifest["parity_frames"]["max_abs_diff"]
    lines.append("  one chunk end to end, frames in [-1, 1]: max |ONNX - PyTorch| "
                 + ", ".join(f"{runtime} {d:.2e}" for runtime, d in frames.items()))
    return "\n".join(lines)


@app.command("eval")
def eval_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory with the split to generate."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: metrics.json, metrics.md, per_clip.jsonl, "
                             "contact_sheet.png, videos/ (with --long: long_blocks.jsonl instead of per_clip.jsonl)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory or bundled name (default: the "
                                        "fastest bundled model)."),
    split: str = typer.Option("test", help="Split to evaluate: train, val or test."),
    max_clips: int = typer.Option(0, help="Evaluate the first N clips of the split (0 = all)."),
    seconds: float = typer.Option(0.0, help="Evaluate the first S seconds of each clip (0 = whole clips)."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps (default: the model's)."),
    cfg_audio: Optional[float] = typer.Option(None, help="Audio guidance scale (default: the model's)."),
    cfg_ref: Optional[float] = typer.Option(None, help="Reference guidance scale (default: the model's)."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Noise seed (the same for every clip)."),
    audio_shift: float = typer.Option(0.0, help="Control: drive with the clip's audio rotated by this many seconds; "
                                      "metrics still use the clip's own audio and labels."),
    other_audio: bool = typer.Option(False, "--other-audio", help="Control: drive each clip with the next clip's "
                                     "audio; metrics still use the clip's own audio and labels."),
    evaluators: Optional[Path] = typer.Option(None, "--evaluators", help="lipstep's own evaluators (lipstep train "
                                              "evaluators); default: the bundled ones."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Directory with external weights under "
                                               "their usual names (syncnet_v2.model, pt_inception-2015-12-05-*.pth, "
                                               "w600k_r50.onnx; never the I3D: see --i3d)."),
    syncnet: Optional[Path] = typer.Option(None, "--syncnet", help="Official syncnet_v2.model."),
    inception: Optional[Path] = typer.Option(None, "--inception", help="pytorch-fid Inception weights (FID)."),
    i3d: Optional[Path] = typer.Option(None, "--i3d", help="StyleGAN-V i3d_torchscript.pt (FVD). "
                                       "TorchScript: loading it runs code stored in the file, so give only "
                                       "a file you trust; taken from this option only, never from "
                                       "--weights-dir."),
    arcface: Optional[Path] = typer.Option(None, "--arcface", help="ArcFace ONNX recognition model (CSIM)."),
    dlib: bool = typer.Option(False, "--dlib", help="Also score identity with the dlib face descriptor (faces extra)."),
    save_videos: int = typer.Option(2, help="Write GT | generated mp4s of the first N clips (with --long: the "
                                    "long videos of the first N identities)."),
    long: float = typer.Option(0.0, "--long", metavar="SECONDS", help="Long-run mode: drive each of --identities "
                               "identities of the split for SECONDS (rounded up to whole blocks) with its clips' "
                               "speech chained, and report identity-region PSNR/SSIM, colour shift and id_sim per "
                               "block against the reference portrait (0 = the per-clip evaluation)."),
    identities: int = typer.Option(3, "--identities", help="Long-run mode: the first N identities of the split "
                                   "(0 = all)."),
    long_block: float = typer.Option(10.0, "--long-block", metavar="SECONDS", help="Long-run mode: seconds per "
                                     "reported block (rounded to whole frames)."),
    runtime: str = typer.Option("torch", help="What runs the model's networks: torch, onnx or onnx-int8 (its "
                                "ONNX export, lipstep export --onnx [--int8]; CPU), to measure a runtime's quality "
                                "cost; the evaluators always run in torch."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
):
    """Generate a split with a model and compute every metric whose weights are available."""
    _output_dir(out)
    check_device(device)
    _check_scales(cfg_audio, cfg_ref)
    from lipstep.eval.longrun import evaluate_long
    from lipstep.eval.runner import EvalConfig, evaluate_model, load_evaluators, split_rows

    cfg = EvalConfig()
    for key, value in (("split", split), ("max_clips", max_clips), ("seconds", seconds), ("steps", steps),
                       ("cfg_audio", cfg_audio), ("cfg_ref", cfg_ref), ("seed", seed), ("audio_shift", audio_shift),
                       ("other_audio", other_audio), ("save_videos", save_videos), ("long", long),
                       ("long_identities", identities), ("long_block", long_block), ("runtime", runtime)):
        set_key(cfg, key, value, parse=False)
    cfg.validate()
    split_rows(data, out, cfg.split)  # bad data fails before any network loads
    ev = load_evaluators(evaluators, weights_dir=weights_dir, syncnet=syncnet, inception=inception, i3d=i3d,
                         arcface=arcface, dlib=dlib, device=device)
    result = (evaluate_long if cfg.long else evaluate_model)(model, data, out, cfg, ev, device=device)
    typer.echo((out / "metrics.md").read_text(encoding="utf-8"))
    what = (f"{result['identities']} identities x {result['long_seconds']:g} s" if cfg.long
            else f"{result['clips']} clips")
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'contact_sheet.png'} ({what}, {result['seconds']:.0f} s)")


@app.command()
def soak(
    data: Path = typer.Option(..., "--data", "-d", help="Prepared directory; the identity and its speech come from "
                              "its --split."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: soak.json, soak.md, blocks.jsonl, "
                             "pauses.jsonl, contact_sheet.png."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory or bundled name (default: the "
                                        "fastest bundled model)."),
    seconds: float = typer.Option(600.0, help="Seconds of audio streamed (speech and pauses)."),
    pace: float = typer.Option(1.0, help="1 = real time, as a live microphone sends; 0 = as fast as the stream "
                               "takes it."),
    piece: float = typer.Option(0.04, help="Seconds of audio per push (a microphone's 40 ms; a TTS sends more)."),
    speech: float = typer.Option(30.0, help="Seconds of speech between pauses."),
    pause: float = typer.Option(4.0, help="Seconds of silence per pause (0 = none)."),
    block: float = typer.Option(60.0, help="Seconds per reported block (memory, identity, colour)."),
    split: str = typer.Option("test", help="Split the identity comes from: train, val or test."),
    identity: int = typer.Option(0, help="Which identity of the split (0 = the first in manifest order)."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps (default: the model's)."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Noise seed."),
    runtime: str = typer.Option("torch", help="What runs the model's networks: torch, onnx or onnx-int8."),
    preview_every: int = typer.Option(0, help="0: frames leave a chunk at a time; k: also k at a time from previews "
                                      "of the chunk still arriving (lower latency, ceil(chunk / k) samplings a chunk)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch and ONNX Runtime (default: torch's)."),
    evaluators: Optional[Path] = typer.Option(None, "--evaluators", help="lipstep's own evaluators (default: the "
                                              "bundled ones)."),
):
    """Stream minutes of speech with pauses into one avatar stream, as a live client would, and measure it:
    first-frame latency, RTF, per-frame latency, memory, identity and colour per block, mouth closure in pauses."""
    _output_dir(out)
    _set_threads(threads)
    from lipstep.eval.runner import load_evaluators, split_rows
    from lipstep.eval.soak import SoakConfig
    from lipstep.eval.soak import soak as run_soak

    cfg = SoakConfig()
    for key, value in (("seconds", seconds), ("pace", pace), ("piece", piece), ("speech", speech), ("pause", pause),
                       ("block", block), ("split", split), ("identity", identity), ("steps", steps), ("seed", seed),
                       ("runtime", runtime), ("preview_every", preview_every)):
        set_key(cfg, key, value, parse=False)
    cfg.validate()
    split_rows(data, out, cfg.split)  # bad data fails before any network loads
    result = run_soak(model, data, out, cfg, load_evaluators(evaluators), threads=threads)
    typer.echo((out / "soak.md").read_text(encoding="utf-8"))
    typer.echo(f"wrote {out / 'soak.json'} and {out / 'contact_sheet.png'} ({result['seconds']:.0f} s)")


@app.command()
def bench(
    models: List[str] = typer.Option(..., "--models", "-m", help="Models to compare, each a directory or bundled "
                                     "name, optionally NAME@STEPS (e.g. --models teacher teacher@8); one --models "
                                     "may take several values. The text is the model's label."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: bench.json, bench.md, bench.png, inputs/."),
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="Portrait (default: the demo's example "
                                         "portrait, made once in OUT/inputs)."),
    audio: Optional[Path] = typer.Option(None, "--audio", "-a", help="Speech (default: the demo's example speech)."),
    seconds: float = typer.Option(4.0, help="Cut the audio to at most this many seconds."),
    warmup: int = typer.Option(1, help="Untimed warm-up runs per model."),
    repeats: int = typer.Option(3, help="Timed runs per model; median and p90 over them (papers: >= 10)."),
    threads: Optional[List[int]] = typer.Option(None, help="CPU threads, one or several (--threads 1 2 4: a row per "
                                                "model and thread count; torch and ONNX Runtime alike; default: "
                                                "physical cores, else 2)."),
    runtime: Optional[List[str]] = typer.Option(None, help="What runs the networks, one or several: torch, onnx, "
                                                "onnx-int8 (a row per model and runtime; the onnx ones need the "
                                                "model's export, lipstep export --onnx [--int8]); default torch."),
    emit: Optional[List[str]] = typer.Option(None, help="frames (the whole path, default) and/or latents (hybrid "
                                             "mode: denoise only, no decode, no mux)."),
    device_gflops: Optional[List[str]] = typer.Option(None, "--device-gflops", help="NAME=GFLOPS: a slower device's "
                                                      "assumed sustained fp32 GFLOP/s for the printed feasibility "
                                                      "estimate (repeatable; default: rpi5=60, an assumption for a "
                                                      "Raspberry Pi 5, see lipstep.eval.edge)."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Seed of the initial noise (the same for every model)."),
    cfg_audio: Optional[float] = typer.Option(None, help="Audio guidance scale for all models (default: each model's)."),
    cfg_ref: Optional[float] = typer.Option(None, help="Reference guidance scale for all models (default: each model's)."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    evals: Optional[List[str]] = typer.Option(None, "--eval", help="LABEL=PATH/metrics.json from lipstep eval "
                                              "(several may follow one --eval); draws OUT/bench.png."),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="Quality metric to plot (repeatable; "
                                               "default: every numeric key the eval files share)."),
    more: Optional[List[str]] = typer.Argument(None, hidden=True, show_default=False, metavar="VALUES"),
):
    """Time models side by side: per-component seconds, NFE, ms/frame, fps, RTF, first frame, peak memory, FLOPs per
    NFE; optionally per runtime (torch / ONNX / int8), thread count and emit mode, with an edge-device estimate."""
    _output_dir(out)
    from lipstep.eval.bench import run_bench

    # Click options take one value each: `main` repeats a list option's flag before each of its values
    # (`--threads 1 2` -> `--threads 1 --threads 2`); stray values (API callers of `app`) arrive here.
    extra = more or []
    report = run_bench(models + [x for x in extra if "=" not in x], out, image=image, audio=audio, seconds=seconds,
                       warmup=warmup, repeats=repeats, threads=threads or None, seed=seed, cfg_audio=cfg_audio,
                       cfg_ref=cfg_ref, device=device, evals=(evals or []) + [x for x in extra if "=" in x],
                       metrics=metric or None, runtimes=runtime or None, emits=emit or None,
                       device_gflops=device_gflops or None)
    typer.echo((out / "bench.md").read_text(encoding="utf-8"))
    wrote = ["bench.json", "bench.md"] + (["bench.png"] if (evals or any("=" in x for x in extra)) else [])
    typer.echo(f"wrote {', '.join(str(out / w) for w in wrote)} ({len(report['models'])} models)")


# ---------------------------------------------------------------------------------------------


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _message(e: Exception) -> str:
    """What went wrong: a usage error names its command, a file-system error its path."""
    if isinstance(e, OSError):
        paths = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
        return f"{paths}: {e.strerror}" if paths else str(e)
    ctx = getattr(e, "ctx", None)
    if isinstance(e, _ClickException) and ctx is not None:
        return f"{ctx.command_path}: {e.format_message()} (see {ctx.command_path} --help)"
    return e.format_message() if isinstance(e, _ClickException) else str(e)


def _is_bad_input(e: OSError) -> bool:
    """Whether `e` is the disk's or a user's path's fault (`_DISK_ERRORS`, `_PATH_ERRORS`), not a bug."""
    return e.errno in _DISK_ERRORS or (e.errno in _PATH_ERRORS and e.filename is not None)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings in one line (the default adds the file, line and source of the warning call)."""
    print(f"warning: {_one_line(message)}", file=file or sys.stderr)


# Options of a verb that take several values after one flag (`lipstep bench --threads 1 2 4`).
LIST_OPTIONS = {"bench": {"--models", "-m", "--eval", "--metric", "--threads", "--runtime", "--emit",
                          "--device-gflops"}}


def expand_list_options(argv: list[str]) -> list[str]:
    """``--opt a b c`` -> ``--opt a --opt b --opt c`` for the verb's `LIST_OPTIONS` (click options take one value
    each); every other argument is left as it is."""
    verb = next((a for a in argv if not a.startswith("-")), None)
    flags = LIST_OPTIONS.get(verb, set())
    out, flag, values = [], None, 0
    for arg in argv:
        if arg.startswith("-") and len(arg) > 1:
            name, inline, _ = arg.partition("=")  # `--threads=1 2`: the value is in the flag's argument
            flag, values = (name if name in flags else None), int(bool(inline))
        elif flag is not None:
            if values:
                out.append(flag)
            values += 1
        out.append(arg)
    return out


def _end_progress_bars() -> None:
    """Close every live tqdm bar, so that the error line printed next starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def _internal_error(e: BaseException) -> None:
    """A bug, not the user's input: remove what this run made, say so in one line, exit status 1
    (``LIPSTEP_DEBUG=1`` shows the traceback instead)."""
    remove_made(_created)
    _end_progress_bars()
    print(f"error: internal error ({type(e).__name__}: {_one_line(str(e))[:200]}); this is a lipstep bug: please "
          "report it with the output of the same command run with LIPSTEP_DEBUG=1", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app; bad input ends in one ``error: ...`` line and exit status 2, a bug in
    one ``error: internal error ...`` line and exit status 1 (its traceback with ``LIPSTEP_DEBUG=1``)."""
    warnings.showwarning = _show_warning
    _created.clear()
    argv = expand_list_options(list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args=argv, prog_name="lipstep", standalone_mode=False)
    except (LipstepError, _ClickException, OSError) as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `lipstep` or `lipstep train` alone: the help is printed
            sys.exit(2)
        if os.environ.get("LIPSTEP_DEBUG"):
            raise
        if isinstance(e, OSError) and not _is_bad_input(e):
            _internal_error(e)
        remove_made(_created)
        _end_progress_bars()
        print(f"error: {_one_line(_message(e))}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        code = 130
    except Exception as e:  # noqa: BLE001 - a bug, not bad input: one line (exit 1), the traceback on request
        if os.environ.get("LIPSTEP_DEBUG"):
            raise
        _internal_error(e)
    if code == 130:  # typer turns Ctrl-C into exit status 130
        print("interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
