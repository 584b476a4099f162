"""One runner for every recipe: data → method → loop → model directory.

`lipstep train teacher` and every `lipstep distill <recipe>` go through `run_recipe`. A recipe (a
small object next to its method: `lipstep.train.teacher.TeacherRecipe`,
`lipstep.distill.perflow.PerflowRecipe`, ...) only says what is particular to it by building a
`lipstep.distill.method.Built`: the method, the training data, the `ModelInfo` and components of the model it exports, the
role whose (EMA) weights become the exported denoiser, and provenance. The runner owns what every
recipe shares:

1. refusing, before anything is written, to overwrite a run without ``--resume`` or to resume where
   there is no checkpoint; removing the output folder it created when the run fails before that
   folder holds weights (checkpoints, a pair bank);
2. training on the shared loop (`lipstep.train.loop.train`: checkpoints, exact resume, EMA, logs);
3. validation videos of held-out clips (ground truth | generated, with their audio) through the
   same chunked sampler as generation (`lipstep.samplers.sample_chunks`), logged as ``val/l1_pixels``;
4. exporting ``OUT/model`` (`lipstep.modeldir.save_model`) with the run's provenance in
   ``lipstep.json``'s ``trained`` (and, if the recipe asks, in a JSON file of its own).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from lipstep.data.dataset import open_shard, read_manifest
from lipstep.data.latents import clip_id_of, load_latents
from lipstep.data.media import write_video
from lipstep.diffusion.denoiser import Denoiser
from lipstep.distill.method import Recipe, Validation
from lipstep.errors import LipstepError
from lipstep.fsutil import write_json_atomic
from lipstep.modeldir import ModelInfo, save_model
from lipstep.samplers.chunks import decode_frames, sample_chunks
from lipstep.train.loop import latest_checkpoint, train

STALE_EXPORT = re.compile(r"\.model\.(tmp|old)-[0-9a-f]{8}")  # atomic_dir's names for OUT/model


def run_recipe(recipe: Recipe, prepared: str | Path, out: str | Path, *, resume: bool = False,
               progress: bool = True) -> Path:
    """Train ``recipe`` on the prepared directory ``prepared``; returns ``out/model``.

    Everything is checked before anything is written; a run that fails removes the folder it created
    unless that folder already holds something of value (weights: checkpoints, a pair bank)."""
    prepared, out = Path(prepared), Path(out)
    if not (prepared / "manifest.jsonl").is_file():
        raise LipstepError(f"{prepared} is not a prepared directory (no manifest.jsonl); run lipstep prepare first")
    if out.exists() and not out.is_dir():
        raise LipstepError(f"--out {out} is a file, not a directory")
    latest = latest_checkpoint(out)
    if resume and latest is None:
        raise LipstepError(f"--resume: {out} holds no checkpoint to resume; run without --resume to start it")
    if not resume and latest is not None:
        raise LipstepError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    created = _first_missing(out)
    try:
        return _run(recipe, prepared, out, resume, progress)
    except BaseException:
        if created is not None and created.is_dir() and not any(created.rglob("*.safetensors")):
            shutil.rmtree(created, ignore_errors=True)
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what a run creates), or None."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            break
        missing = p
    return missing


def _clean_stale_export(out: Path) -> None:
    """Remove the temporaries of a model export (`lipstep.fsutil.atomic_dir`) that a kill interrupted."""
    for path in out.iterdir() if out.is_dir() else ():
        kind = STALE_EXPORT.fullmatch(path.name)
        if kind and path.is_dir() and not path.is_symlink() and (kind[1] == "tmp" or (out / "model").is_dir()):
            shutil.rmtree(path, ignore_errors=True)


def _run(recipe: Recipe, prepared: Path, out: Path, resume: bool, progress: bool) -> Path:
    _clean_stale_export(out)
    started = time.perf_counter()
    built = recipe.build(prepared, out, resume=resume, progress=progress)
    validate = None
    if built.validation.clips and built.latents is not None:
        render = validation_videos(prepared, built.latents, built.codec, built.audio, built.info, built.validation, out)
        validate = lambda step, models: render(step, models[built.export_role])
    state = train(built.method, built.dataset, built.train, out, resume=resume, run_config=built.run_config,
                  validate=validate, progress=progress)
    role = built.export_role
    ema = state.emas.get(role)
    final = ema.shadow if ema is not None else state.modules[role]
    final = getattr(final, "module", final)  # unwrap DDP
    built.info.trained = {**built.provenance, "steps": state.step,
                          "seconds_this_run": round(time.perf_counter() - started, 1),
                          "weights": "ema" if ema is not None else "model"}
    if built.eyes is None and not getattr(getattr(final, "cfg", None), "blink", False):
        built.info.blinks_per_second = 0.0  # nothing in the exported model could draw its source's blinks
    model_dir = save_model(out / "model", built.info, built.codec, built.audio, final.eval(), eyes=built.eyes)
    if built.record:
        write_json_atomic(out / built.record, built.info.trained)
    nfe = built.info.nfe_per_chunk()
    print(f"wrote the {recipe.name} model to {model_dir} ({nfe} NFE per chunk)", flush=True)
    return model_dir


def validation_videos(prepared: Path, latents: Path, codec, audio, info: ModelInfo, spec: Validation, out: Path):
    """A callable ``(step, net) -> {"l1_pixels": ...}`` rendering held-out clips with ``net`` as the
    denoiser: ground truth | generated side by side with the clip's audio, in ``OUT/val/``."""
    rows = read_manifest(prepared)
    split = next((s for s in ("val", "test", "train") if any(r["split"] == s for r in rows)), None)
    clips = [r for r in rows if r["split"] == split][: spec.clips]
    schedule = info.make_schedule()

    def run(step: int, net) -> dict:
        was_training = net.training
        net.eval()
        denoiser = Denoiser(net, schedule)
        device = next(net.parameters()).device
        errs = []
        for row in clips:
            data = open_shard(prepared / row["shard"], ("frames", "audio", "mel"))
            z = torch.from_numpy(load_latents(latents, clip_id_of(row)).astype(np.float32))
            n = min(len(z), int(spec.seconds * info.fps))
            chunks = -(-n // info.frames)
            feats = audio.encode(data["audio"], chunks * info.frames)
            lat, _ = sample_chunks(denoiser, z[:1], feats, sampler=info.sampler, layout=info.layout(),
                                   steps=spec.steps, n_frames=n, seed=0)
            frames = decode_frames(codec, lat, device)
            real = np.asarray(data["frames"][:n])
            errs.append(float(np.abs(frames.astype(np.float32) - real.astype(np.float32)).mean() / 255))
            wav = np.asarray(data["audio"])[: int(n / info.fps * info.sample_rate)]
            side = np.concatenate([real, frames], axis=2)  # ground truth | generated
            write_video(out / "val" / f"step_{step:06d}_{clip_id_of(row)}.mp4", side, info.fps, audio=wav,
                        sample_rate=info.sample_rate)
        net.train(was_training)
        return {"l1_pixels": float(np.mean(errs))} if errs else {}

    return run


__all__ = ["run_recipe", "validation_videos"]
