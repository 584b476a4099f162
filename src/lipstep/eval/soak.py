"""`lipstep soak`: one avatar stream driven for minutes, measured the way a live user meets it.

A held-out identity's portrait (the first frame of its first clip in the split) is driven through
`AvatarPipeline.open_stream` -- the path `lipstep serve` and `lipstep generate` run -- by the speech of its
clips, chained and repeated, with a pause of ``pause`` seconds of digital silence after every ``speech``
seconds. The audio goes in pieces of ``piece`` seconds (a microphone's 40 ms by default) at ``pace`` times
real time: 1 waits for each piece's moment as a live microphone would, 0 pushes as fast as the stream takes it.

Measured (OUT/soak.json, soak.md, blocks.jsonl, pauses.jsonl, contact_sheet.png):

==================  ============================================================================================
first_frame_s       wall time from the first piece's arrival to the first frame: the audio the first frame needs
                    must arrive first (``first_frame_audio_s``: the whole first chunk plus the encoder's
                    look-ahead, or with ``preview_every`` one frame plus the look-ahead), so with small pieces at
                    pace 1 this is mostly waiting; ``first_chunk_compute_s`` is the compute part alone (the push
                    that returned the first frames), what a client sending a longer first piece waits
latency_p50/p95     per frame: the moment it is returned minus the moment its own audio had been spoken
                    (``(index + 1) / fps`` after the start, at pace 1 only)
rtf                 seconds inside push/finish over seconds of audio (one stream)
blocks              per block of ``block`` seconds (a minute by default): process RSS at the block's end,
                    identity similarity (the primary identity encoder), identity-region PSNR and colour shift
                    against the reference portrait (`lipstep.eval.portrait`), compute seconds and RTF
rss_growth          RSS at the last block's end over the first's, minus 1
id_sim_delta        last block minus first
pauses              per pause: when the mouth reader reads the mouth closed (openness <= ``closed``) from then to
                    the pause's end (``closed_after_ms``, None if never), and the largest openness after 200 ms
idle_motion_pauses  mean change from frame to frame outside the mouth box (0..255) in the pauses: blinks and head
                    motion while nobody speaks (0 = a frozen face); ``motion_speech`` the same while speaking,
                    ``gt.motion`` on the identity's real frames
blink_frames_*      share of frames whose eye band dips below the video's median by half the identity's real blink
                    depth (`eye_brightness`), in pauses and in speech; ``gt.blink_frames`` the share the world's
                    labels give, ``gt.blink_frames_read`` what the same reading finds on the real frames
gt_closed_openness  the mouth reader on the identity's real frames labelled closed: its floor
==================  ============================================================================================

While the stream runs, its frames are appended to a raw file in OUT (removed at the end) and nothing else is
kept or computed, so the RSS recorded at each block's end is the stream's own (a first version scored each
block in a worker thread beside the stream; its allocations grew the process by 170 MB over the first three
minutes, while the stream alone stays flat); the blocks are scored from the file afterwards.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipstep.checks import MAX_STEPS
from lipstep.config import check, to_dict
from lipstep.data.blinks import BlinkSchedule, eye_brightness
from lipstep.data.dataset import open_shard
from lipstep.data.media import write_image
from lipstep.errors import DataError
from lipstep.eval.identity import identity_similarity
from lipstep.eval.longrun import chain_audio, identity_clips
from lipstep.eval.portrait import colour_shift, identity_mask, identity_psnr
from lipstep.eval.runner import _clip_data, contact_sheet, load_evaluators, load_for_eval, split_rows
from lipstep.fsutil import write_json_atomic, write_jsonl_atomic, write_text_atomic
from lipstep.runtime import RUNTIMES


@dataclass
class SoakConfig:
    seconds: float = 600.0          # audio streamed (speech and pauses)
    split: str = "test"             # split of the prepared directory the identity comes from
    identity: int = 0               # which identity of the split (in manifest order)
    speech: float = 30.0            # seconds of speech between pauses
    pause: float = 4.0              # seconds of silence per pause (0 = no pauses)
    piece: float = 0.04             # seconds of audio per push (a microphone's 40 ms)
    pace: float = 1.0               # 1 = real time (a live microphone), 0 = as fast as possible
    block: float = 60.0             # seconds per reported block
    closed: float = 0.1             # mouth-reader openness at or below which the mouth counts as closed
    steps: int | None = None        # sampler steps (None = the model's)
    seed: int = 0
    runtime: str = "torch"          # torch, onnx or onnx-int8
    preview_every: int = 0          # 0: frames a chunk at a time; k: k at a time from previews (`open_stream`)

    def validate(self) -> None:
        for name in ("seconds", "speech", "pause", "piece", "pace", "block", "closed"):
            value = getattr(self, name)
            check(math.isfinite(value) and value >= 0, f"{name} must be a finite number >= 0, got {value}")
        check(self.seconds > 0 and self.speech > 0 and self.piece > 0 and self.block > 0,
              "seconds, speech, piece and block must be > 0")
        check(self.split in ("train", "val", "test"), f"split must be train, val or test, got {self.split!r}")
        check(self.identity >= 0, f"identity must be >= 0, got {self.identity}")
        check(self.steps is None or 1 <= self.steps <= MAX_STEPS, f"steps must be in 1..{MAX_STEPS}, got {self.steps}")
        check(self.runtime in RUNTIMES, f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        check(self.preview_every >= 0, f"preview_every must be >= 0, got {self.preview_every}")


def rss_mb() -> float:
    """The process's resident memory now, MB (Linux /proc; psutil elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil  # not Linux: the portable reader (a dependency of lipstep bench)

    return psutil.Process().memory_info().rss / 2**20


def with_pauses(speech: np.ndarray, n_samples: int, sr: int, every: float, pause: float) -> tuple[np.ndarray, list]:
    """`speech` cut into stretches of `every` seconds with `pause` seconds of silence after each, cut to
    `n_samples`: (audio float32 [n_samples], [(start_sample, end_sample)] of the pauses that fit whole)."""
    if pause <= 0:
        return chain_audio([speech], n_samples), []
    run, gap = round(every * sr), round(pause * sr)
    pieces, pauses, pos, used = [], [], 0, 0
    once = chain_audio([speech], math.ceil(n_samples / (run + gap)) * run + run)
    while pos < n_samples:
        pieces.append(once[used:used + run])
        used += run
        pos += run
        if pos + gap <= n_samples:
            pauses.append((pos, pos + gap))
        pieces.append(np.zeros(gap, np.float32))
        pos += gap
    return np.concatenate(pieces)[:n_samples], pauses


def idle_motion(frames: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """Per frame, the mean absolute change (0..255) from the frame before over the identity region (the mouth box
    left out): blinks and head motion, not speech. float32 [N]; the first frame against `previous` (0 without)."""
    f = np.asarray(frames, np.int16)
    mask = identity_mask(*f.shape[1:3])
    prev = np.concatenate([np.asarray(previous if previous is not None else frames[0], np.int16)[None], f[:-1]])
    return np.abs(f - prev)[:, mask].mean(axis=(1, 2)).astype(np.float32)


def closed_after(openness: np.ndarray, closed: float) -> int | None:
    """Frames from the start of `openness` after which every value is <= `closed` (None if the last is not)."""
    above = np.flatnonzero(np.asarray(openness) > closed)
    if len(above) == 0:
        return 0
    return None if above[-1] == len(openness) - 1 else int(above[-1]) + 1


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if len(values) else None


def scheduled_blink_agreement(eyes: np.ndarray, blinking: np.ndarray, closure: np.ndarray) -> dict:
    """How well the frames follow the blinks a model was told to draw (eyelid closure ``closure`` [N], the
    `BlinkSchedule` its chunks read): the share of scheduled blink frames (closure ≥ 0.5) read as blinking
    (``blink_recall``), the share of frames read as blinking that fall within a frame of a scheduled blink
    (``blink_precision``), and the eye band's median drop on scheduled blink frames (0..255)."""
    shut = closure >= 0.5
    near = shut | np.r_[shut[1:], False] | np.r_[False, shut[:-1]]
    return {"blink_frames_scheduled": round(float(shut.mean()), 4),
            "blink_recall": round(float(blinking[shut].mean()), 4) if shut.any() else None,
            "blink_precision": round(float(near[blinking].mean()), 4) if blinking.any() else None,
            "blink_eye_drop": round(float(np.median(eyes[~shut]) - np.median(eyes[shut])), 2) if shut.any() else None}


def blink_readings(eyes: np.ndarray, in_pause: np.ndarray, real: np.ndarray, labels: list,
                   told: np.ndarray | None) -> tuple[dict, dict]:
    """(the generated frames' blink readings, the real frames') from their eye-band brightness ``eyes`` [N], the
    identity's real frames and their blink labels, clip by clip (the depth of its real blinks; nothing without
    labels) and, for a blink-conditioned model, the closure its chunks were told (`scheduled_blink_agreement`)."""
    if not labels or any(b is None for b in labels):
        return {}, {}
    blink = np.concatenate(labels)
    real_eyes = eye_brightness(real[:len(blink)])
    shut, open_ = real_eyes[blink > 0.5], real_eyes[blink < 0.05]
    if not len(shut) or not len(open_):
        return {}, {}
    # a dip of half the real lids' depth below the video's own median: robust to eyes drawn dimmer overall
    half = (float(open_.mean()) - float(shut.mean())) / 2
    blinking = eyes < float(np.median(eyes)) - half
    result = {"blink_dip": round(half, 2),
              "blink_frames_pauses": round(float(blinking[in_pause].mean()), 4) if in_pause.any() else None,
              "blink_frames_speech": round(float(blinking[~in_pause].mean()), 4),
              "eye_brightness_p5_p50_p95": [round(float(v), 1) for v in np.percentile(eyes, [5, 50, 95])]}
    if told is not None:  # a blink-conditioned model: were its scheduled blinks drawn?
        result.update(scheduled_blink_agreement(eyes, blinking, told))
    gt = {"blink_frames": float((blink > 0.5).mean()),
          "blink_frames_read": float((real_eyes < float(np.median(real_eyes)) - half).mean()),
          "eye_open": float(open_.mean()), "eye_shut": float(shut.mean())}
    return result, gt


def soak(model, prepared: str | os.PathLike, out: str | os.PathLike, cfg: SoakConfig | None = None,
         evaluators=None, *, threads: int | None = None, progress: bool = True) -> dict:
    """Stream `cfg.seconds` of speech with pauses into one avatar stream and measure it (module docstring)."""
    from tqdm.auto import tqdm

    cfg = cfg or SoakConfig()
    cfg.validate()
    started = time.perf_counter()
    root, out, rows = split_rows(prepared, out, cfg.split)
    people = identity_clips(rows, 0)
    if cfg.identity >= len(people):
        raise DataError(f"{root}: the {cfg.split} split has {len(people)} identities; identity {cfg.identity} "
                        f"does not exist")
    person, clips = list(people.items())[cfg.identity]
    ev, pipe = load_for_eval(model, root, rows, evaluators if evaluators is not None else load_evaluators(),
                             None, cfg.runtime)
    embedder, reader = (ev.identity[0] if ev.identity else None), ev.mouth
    info = pipe.info
    fps, sr = info.fps, info.sample_rate
    data = [_clip_data(root, row, 0.0, fps, sr) for row in clips]
    reference = data[0][0][0]
    n_samples = round(cfg.seconds * sr)
    audio, pauses = with_pauses(np.concatenate([w for _, w, _ in data]), n_samples, sr, cfg.speech, cfg.pause)
    block_frames = max(1, round(cfg.block * fps))
    piece = max(1, round(cfg.piece * sr))

    def block_metrics(k: int, frames: np.ndarray, rss: float, compute: float, previous) -> dict:
        row = {"block": k, "start_s": round(k * block_frames / fps, 3), "frames": len(frames),
               "rss_mb": round(rss, 1), "compute_s": round(compute, 3),
               "rtf": round(compute / (len(frames) / fps), 4), "id_psnr": round(identity_psnr(frames, reference), 4),
               "colour_shift": round(colour_shift(frames, reference), 4)}
        if embedder is not None:
            row["id_sim"] = round(identity_similarity(embedder, reference, frames), 5)
        if reader is not None:
            row["openness"] = reader.openness(frames).astype(np.float32)
        row["motion"] = idle_motion(frames, previous)
        row["eyes"] = eye_brightness(frames)
        return row

    # While streaming, the frames go to a raw file and nothing else is kept or computed, so the RSS recorded at
    # each block's end is the stream's own; the blocks are scored from the file afterwards.
    spool = out / ".soak_frames.u8"
    out.mkdir(parents=True, exist_ok=True)
    frame_bytes = info.image_size * info.image_size * 3
    lat, rss, compute_blocks, first_chunk = [], [], [], None
    compute = compute_block = 0.0
    warmup = pipe.warmup()  # as the server does before it listens
    stream = pipe.open_stream(reference, steps=cfg.steps, seed=cfg.seed, source=f"{person}'s reference frame",
                              preview_every=cfg.preview_every)
    n_pieces = math.ceil(n_samples / piece)
    bar = tqdm(total=round(n_samples / sr), desc=f"soak {person}", unit="s audio", disable=not progress)
    first_frame = None
    done_frames = 0
    with open(spool, "wb") as fh:
        t0 = time.perf_counter()

        def take(frames, now: float) -> None:
            nonlocal done_frames, compute_block, first_frame
            for f in frames:
                if first_frame is None:
                    first_frame = now - t0
                if cfg.pace > 0:
                    lat.append(now - (t0 + (f.index + 1) / fps / cfg.pace))
                fh.write(np.ascontiguousarray(f.image, np.uint8).tobytes())
                done_frames += 1
                if done_frames % block_frames == 0:
                    rss.append(rss_mb())
                    compute_blocks.append(compute_block)
                    compute_block = 0.0

        for i in range(n_pieces):
            if cfg.pace > 0:
                wait = t0 + (i + 1) * piece / sr / cfg.pace - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            a = time.perf_counter()
            frames = stream.push(audio[i * piece:(i + 1) * piece])
            b = time.perf_counter()
            compute += b - a
            compute_block += b - a
            if frames and first_chunk is None:
                first_chunk = b - a
            take(frames, b)
            if (i + 1) * piece // sr > ((i * piece) // sr):
                bar.update(1)
        a = time.perf_counter()
        frames = stream.finish()
        b = time.perf_counter()
        compute += b - a
        compute_block += b - a
        take(frames, b)
        wall = time.perf_counter() - t0
    bar.close()
    if done_frames % block_frames:
        rss.append(rss_mb())
        compute_blocks.append(compute_block)

    def read_frames(a: int, b: int) -> np.ndarray:
        a, b = max(0, a), min(done_frames, b)
        return np.fromfile(spool, np.uint8, count=(b - a) * frame_bytes, offset=a * frame_bytes).reshape(
            b - a, info.image_size, info.image_size, 3)

    try:
        blocks, sheet, previous = [], [], None
        for k in range(len(rss)):
            frames = read_frames(k * block_frames, (k + 1) * block_frames)
            blocks.append(block_metrics(k, frames, rss[k], compute_blocks[k], previous))
            sheet.append(frames[len(frames) // 2].copy())
            previous = frames[-1].copy()
        around = None
        if pauses:  # the frames around the first pause, for the contact sheet's second row
            a_f = math.ceil(pauses[0][0] * fps / sr)
            around = read_frames(a_f - 4, a_f + 12)
    finally:
        spool.unlink(missing_ok=True)

    openness = np.concatenate([r.pop("openness") for r in blocks]) if reader is not None else None
    motion = np.concatenate([r.pop("motion") for r in blocks])
    eyes = np.concatenate([r.pop("eyes") for r in blocks])
    in_pause = np.zeros(len(motion), bool)
    pause_rows = []
    for a_s, b_s in pauses:
        a_f, b_f = math.ceil(a_s * fps / sr), min(len(motion), int(b_s * fps // sr))
        in_pause[a_f:b_f] = True
        row = {"start_s": round(a_s / sr, 3), "seconds": round((b_s - a_s) / sr, 3),
               "idle_motion": round(float(motion[a_f + 1:b_f].mean()), 4) if b_f > a_f + 1 else None}
        if openness is not None:
            track = openness[a_f:b_f]
            k = closed_after(track, cfg.closed)
            late = track[max(1, round(0.2 * fps)):]
            row.update({"closed_after_ms": None if k is None else round(k / fps * 1000, 1),
                        "max_openness_after_200ms": round(float(late.max()), 4) if len(late) else None,
                        "mean_openness": round(float(track.mean()), 4)})
        pause_rows.append(row)
    for k, r in enumerate(blocks):
        r["motion"] = round(float(motion[k * block_frames:(k + 1) * block_frames].mean()), 4)
    real = np.concatenate([f for f, _, _ in data])
    labels = [open_shard(root / row["shard"], ("blink",)).get("blink") for row in clips]
    labels = [None if b is None else np.asarray(b)[:len(f)] for b, (f, _, _) in zip(labels, data, strict=True)]
    told = BlinkSchedule(info.blinks_per_second, fps, cfg.seed).frames(0, len(eyes)) if info.blinks_per_second > 0 \
        else None
    blink_result, gt_blink = blink_readings(eyes, in_pause, real, labels, told)
    gt = {"id_psnr": identity_psnr(real, reference), "colour_shift": colour_shift(real, reference)}
    if embedder is not None:
        gt["id_sim"] = identity_similarity(embedder, reference, real)
    gt["motion"] = float(np.mean(np.concatenate([idle_motion(f)[1:] for f, _, _ in data])))
    gt.update(gt_blink)
    if reader is not None:
        closed_frames = [f[m <= 0.02] for f, _, m in data if m is not None]
        closed_frames = np.concatenate(closed_frames) if closed_frames else np.zeros((0,))
        if len(closed_frames):
            o = reader.openness(closed_frames)
            gt["closed_openness_mean"], gt["closed_openness_p95"] = float(o.mean()), float(np.percentile(o, 95))

    full = [r for r in blocks if r["frames"] == block_frames] or blocks
    delays = [p["closed_after_ms"] for p in pause_rows]
    result = {
        "model": str(model), "model_kind": info.kind, "identity": person, "runtime": cfg.runtime,
        "preview_every": stream.preview_every, "nfe": stream.stats().nfe,
        "threads": threads, "audio_seconds": round(n_samples / sr, 3), "frames": done_frames,
        "wall_seconds": round(wall, 2), "warmup_s": round(warmup, 4),
        "first_frame_s": None if first_frame is None else round(first_frame, 4),
        "first_chunk_compute_s": None if first_chunk is None else round(first_chunk, 4),
        "first_frame_audio_s": round(((1 if stream.preview_every else info.frames) / fps)
                                     + (stream.lookahead_seconds or 0.0), 4),
        "rtf": round(compute / (n_samples / sr), 4),
        "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
        "latency_max_s": round(max(lat), 4) if lat else None,
        "rss_first_mb": full[0]["rss_mb"], "rss_last_mb": full[-1]["rss_mb"],
        "rss_growth": round(full[-1]["rss_mb"] / full[0]["rss_mb"] - 1, 4),
        "colour_shift_max": max(r["colour_shift"] for r in blocks),
        "pauses": len(pause_rows),
        "pauses_closed_within_200ms": sum(1 for d in delays if d is not None and d <= 200),
        "closed_after_ms_max": None if not delays or None in delays else max(delays),
        "idle_motion_pauses": round(float(motion[in_pause].mean()), 4) if in_pause.any() else None,
        "motion_speech": round(float(motion[~in_pause][1:].mean()), 4), **blink_result,
        "gt": {k: round(v, 5) for k, v in gt.items()},
        "blocks": blocks, "soak": to_dict(cfg), "sources": ev.sources,
        "seconds": round(time.perf_counter() - started, 1)}
    if embedder is not None:
        result.update({"id_sim_first": full[0]["id_sim"], "id_sim_last": full[-1]["id_sim"],
                       "id_sim_delta": round(full[-1]["id_sim"] - full[0]["id_sim"], 5)})
    write_jsonl_atomic(out / "blocks.jsonl", blocks)
    write_jsonl_atomic(out / "pauses.jsonl", pause_rows)
    rows_img = [np.concatenate([reference[None], np.stack(sheet)])]
    if around is not None and len(around):
        rows_img.append(around)
    write_image(out / "contact_sheet.png", contact_sheet(rows_img, max(len(r) for r in rows_img)))
    write_json_atomic(out / "soak.json", result)
    write_text_atomic(out / "soak.md", soak_markdown(result))
    return result


def soak_markdown(r: dict) -> str:
    """soak.json as a short report: the headline figures, then one row per block."""
    title = (f"# soak: {r['model']} ({r['runtime']}, preview_every {r['preview_every']}), identity {r['identity']}, "
             f"{r['audio_seconds']:g} s of audio")
    lines = [title, "", "| measure | value |", "|---|---|"]
    for key in ("first_frame_s", "first_chunk_compute_s", "first_frame_audio_s", "rtf", "nfe", "latency_p50_s",
                "latency_p95_s", "latency_max_s", "rss_first_mb", "rss_last_mb", "rss_growth", "id_sim_first",
                "id_sim_last", "id_sim_delta", "colour_shift_max", "pauses", "pauses_closed_within_200ms",
                "closed_after_ms_max", "idle_motion_pauses", "motion_speech", "blink_frames_pauses",
                "blink_frames_speech", "eye_brightness_p5_p50_p95"):
        if key in r:
            lines.append(f"| {key} | {r[key]} |")
    lines += ["", "Ground truth (the identity's real frames): "
              + ", ".join(f"{k} {v:g}" for k, v in r["gt"].items()), "",
              "| block | start s | frames | RSS MB | RTF | id_sim | id_psnr | colour shift | motion |",
              "|---|---|---|---|---|---|---|---|---|"]
    for b in r["blocks"]:
        lines.append(f"| {b['block']} | {b['start_s']:g} | {b['frames']} | {b['rss_mb']:g} | {b['rtf']:g} | "
                     f"{b.get('id_sim', '')} | {b['id_psnr']:g} | {b['colour_shift']:g} | {b['motion']:g} |")
    return "\n".join(lines) + "\n"
