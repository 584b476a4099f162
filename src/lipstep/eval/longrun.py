"""`lipstep eval --long SECONDS`: does the avatar stay the portrait's person, in its colours, for a minute?

For each of the first ``long_identities`` identities of the split, the speech of that identity's clips
(in manifest order, each cut to its video length) is chained, repeated as often as needed, to
``long`` seconds rounded up to whole blocks of ``long_block`` seconds. The reference portrait (the first
frame of the identity's first clip, as in the per-clip evaluation) is driven by that speech through the
normal pipeline (`AvatarPipeline.__call__`, exactly what `lipstep generate` runs: chunk after chunk, each
chunk's motion frames taken from the previous chunk). Ground truth exists only clip by clip, so every
block is measured against the reference portrait:

=================  ====================================================================================
key                what
=================  ====================================================================================
long_id_psnr       identity-region PSNR / SSIM against the reference (`portrait.identity_psnr`,
long_id_ssim       `identity_ssim`; the mouth box left out), mean over identities and blocks
long_colour_shift  RGB distance (0..255) of the mean colour to the reference's (`portrait.colour_shift`)
long_id_sim        cosine similarity to the reference (the primary identity encoder, as ``id_sim``)
long_*_delta       last block minus first block, mean over identities (drift over the run)
long_*_gt          the same measure on all of the identity's real frames (its clips, once each)
long_blocks        per block: start/end seconds and each metric, mean over identities
=================  ====================================================================================

OUT gets metrics.json, metrics.md, ``long_blocks.jsonl`` (one row per identity and block),
``contact_sheet.png`` (one row per identity: the reference, then frames spread over the whole run) and
``videos/<identity>_long.mp4`` for the first ``save_videos`` identities (the identity made a plain file name,
`lipstep.data.latents.safe_name`).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from lipstep.config import to_dict
from lipstep.data.latents import clip_id_of, safe_name
from lipstep.data.media import write_video
from lipstep.errors import DataError, LipstepError
from lipstep.eval.identity import identity_similarity
from lipstep.eval.portrait import MOUTH_BOX, colour_shift, identity_psnr, identity_ssim
from lipstep.eval.runner import (
    _clip_data,  # the per-clip reader of the same package
    load_for_eval,
    metrics_markdown,
    split_rows,
    spread_frames,
    write_contact_sheet,
)
from lipstep.fsutil import write_json_atomic, write_jsonl_atomic, write_text_atomic

SHEET_FRAMES = 10   # long run contact sheet: frames per identity after the reference


def chain_audio(waves, n_samples: int) -> np.ndarray:
    """Concatenate the waveforms in order, repeating them, and cut to exactly `n_samples`: float32 [n_samples]."""
    waves = [np.asarray(w, np.float32).reshape(-1) for w in waves]
    total = sum(len(w) for w in waves)
    if total == 0:
        raise DataError("chain_audio: no audio to chain")
    once = np.concatenate(waves)
    return np.tile(once, math.ceil(n_samples / total))[:n_samples]


def block_bounds(n_frames: int, block_frames: int) -> list[tuple[int, int]]:
    """Frame ranges [start, end) of consecutive blocks; a trailing partial block is kept."""
    if block_frames < 1:
        raise LipstepError(f"block_bounds: block_frames must be >= 1, got {block_frames}")
    return [(s, min(s + block_frames, n_frames)) for s in range(0, n_frames, block_frames)]


def portrait_metrics(frames: np.ndarray, reference: np.ndarray, embedder=None) -> dict[str, float]:
    """id_psnr, id_ssim, colour_shift (and id_sim with an identity embedder) of frames against the reference."""
    m = {"id_psnr": identity_psnr(frames, reference), "id_ssim": identity_ssim(frames, reference),
         "colour_shift": colour_shift(frames, reference)}
    if embedder is not None:
        m["id_sim"] = identity_similarity(embedder, reference, frames)
    return m


def identity_clips(rows: list[dict], n: int) -> dict[str, list[dict]]:
    """The clips of the first `n` identities (0 = all), in manifest order: identity -> rows."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row.get("identity", clip_id_of(row))), []).append(row)
    names = list(groups)[:n] if n else list(groups)
    return {k: groups[k] for k in names}


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def evaluate_long(model: str | os.PathLike, prepared: str | os.PathLike, out: str | os.PathLike, cfg,
                  evaluators=None, *, device: str | None = None, progress: bool = True) -> dict:
    """The long run of `cfg` (an `EvalConfig` with ``long`` > 0); writes OUT (see the module docstring).

    Returns the metrics dict (what metrics.json holds).
    """
    from tqdm.auto import tqdm

    cfg.validate()
    if not cfg.long:
        raise LipstepError("evaluate_long needs cfg.long > 0 (seconds per identity)")
    started = time.perf_counter()
    root, out, rows = split_rows(prepared, out, cfg.split)
    people = identity_clips(rows, cfg.long_identities)
    ev, pipe = load_for_eval(model, root, rows, evaluators, device, cfg.runtime)
    embedder = ev.identity[0] if ev.identity else None
    info = pipe.info
    fps, sr = info.fps, info.sample_rate
    block_frames = max(1, round(cfg.long_block * fps))
    n_frames = math.ceil(cfg.long / cfg.long_block - 1e-9) * block_frames     # whole blocks, >= long seconds
    n_samples = round(n_frames * sr / fps)
    bounds = block_bounds(n_frames, block_frames)

    block_rows, gt_rows, sheet, gen_seconds, nfe = [], [], [], 0.0, 0
    if cfg.save_videos:
        (out / "videos").mkdir(parents=True, exist_ok=True)
    for i, (person, clips) in enumerate(tqdm(people.items(), desc=f"long run {cfg.split}", unit="identity",
                                             disable=not progress)):
        data = [_clip_data(root, row, 0.0, fps, sr) for row in clips]
        reference = data[0][0][0]
        audio = chain_audio([wav for _, wav, _ in data], n_samples)
        t0 = time.perf_counter()
        res = pipe(reference, audio, steps=cfg.steps, cfg_audio=cfg.cfg_audio, cfg_ref=cfg.cfg_ref, seed=cfg.seed,
                   progress=progress)
        gen_seconds += time.perf_counter() - t0
        nfe += res.nfe
        gen = res.frames[:n_frames]
        for k, (a, b) in enumerate(bounds):
            block_rows.append({"identity": person, "block": k, "start_s": round(a / fps, 3), "end_s": round(b / fps, 3),
                               "frames": b - a, **portrait_metrics(gen[a:b], reference, embedder)})
        gt_rows.append(portrait_metrics(np.concatenate([frames for frames, _, _ in data]), reference, embedder))
        sheet.append(np.concatenate([reference[None], spread_frames(gen, SHEET_FRAMES)]))
        if i < cfg.save_videos:
            write_video(out / "videos" / f"{safe_name(person, 'identity')}_long.mp4", gen, fps, audio=audio,
                        sample_rate=sr)

    keys = [k for k in ("id_psnr", "id_ssim", "colour_shift", "id_sim") if k in block_rows[0]]
    metrics: dict = {}
    for key in keys:
        metrics[f"long_{key}"] = round(_mean(r[key] for r in block_rows), 5)
        metrics[f"long_{key}_gt"] = round(_mean(r[key] for r in gt_rows), 5)
        first = {r["identity"]: r[key] for r in block_rows if r["block"] == 0}
        last = {r["identity"]: r[key] for r in block_rows if r["block"] == len(bounds) - 1}
        metrics[f"long_{key}_delta"] = round(_mean(last[p] - first[p] for p in first), 5)
    blocks = [{"block": k, "start_s": round(a / fps, 3), "end_s": round(b / fps, 3),
               **{key: round(_mean(r[key] for r in block_rows if r["block"] == k), 5) for key in keys}}
              for k, (a, b) in enumerate(bounds)]
    skipped = dict(ev.skipped)
    if embedder is None:
        skipped["long_id_sim"] = skipped.get("id_sim", "no identity encoder")
    frames_total = n_frames * len(people)
    metrics.update({
        "identities": len(people), "long_seconds": round(n_frames / fps, 3), "long_block": round(block_frames / fps, 3),
        "frames": frames_total, "nfe": int(info.nfe_per_chunk(cfg.steps, cfg.cfg_audio, cfg.cfg_ref)),
        "nfe_identity": round(nfe / len(people), 1), "gen_seconds": round(gen_seconds, 2),
        "gen_fps": round(frames_total / max(gen_seconds, 1e-9), 3)})
    extractors = {"long_id_sim": embedder.name} if embedder is not None else {}
    result = {**metrics, "long_blocks": blocks, "identity_names": list(people), "extractors": extractors,
              "skipped": skipped, "model": str(model), "model_kind": info.kind, "prepared": str(root.resolve()),
              "mouth_box": list(MOUTH_BOX), "eval": to_dict(cfg), "sources": ev.sources,
              "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "long_blocks.jsonl", [{k: (round(v, 5) if isinstance(v, float) else v)
                                                     for k, v in r.items()} for r in block_rows])
    write_contact_sheet(out / "contact_sheet.png", sheet, SHEET_FRAMES + 1)
    write_json_atomic(out / "metrics.json", result)
    write_text_atomic(out / "metrics.md", metrics_markdown(result))
    return result


__all__ = ["block_bounds", "chain_audio", "evaluate_long", "identity_clips", "portrait_metrics"]
