"""The synthetic talking-head world: lipstep's embedded default data set (design.md §5).

Every clip has real synthesized speech (libespeak-ng, exact phoneme timing) and a procedurally
rendered face whose mouth follows that speech through visemes and a smoothed mouth state. Labels
(phonemes, per-frame visemes, mouth state, head pose, blinks, identity parameters, text) come from
the same synthesis, so lip sync can be measured against ground truth. Splits are by identity.

On-disk layout (other tools read it; keep it stable)::

    DIR/manifest.jsonl            one JSON object per clip (see `_manifest_row`)
    DIR/config.json               the resolved WorldConfig
    DIR/identities.json           identity parameters by identity id
    DIR/identities/<id>.png       a neutral frontal portrait of each identity
    DIR/clips/<clip>/clip.mp4     H.264 video at 25 fps + AAC speech at 16 kHz
    DIR/clips/<clip>/labels.npz   visemes int64 [T], mouth float32 [T,3] (openness, width,
                                  roundness in [0,1]), head_pose float32 [T,3] (yaw, pitch, roll),
                                  blink float32 [T], phoneme_symbols str [P], phoneme_start /
                                  phoneme_end float32 [P] (seconds), identity float32 [I],
                                  text str, fps, sample_rate

The "moderate" quality tier degrades some clips the way web data is degraded (audio-video offset,
frame jitter, dropped frames, heavy compression, wrong audio), recording each degradation in the
manifest; labels always describe what the *video* shows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from lipstep.config import check, from_dict, load_config, save_config, to_dict, validate
from lipstep.data.blinks import blink_track
from lipstep.data.media import read_video, write_image, write_video
from lipstep.data.render import (
    Identity,
    Pose,
    background_for,
    measure_openness,
    render_frame,
    sample_identity,
)
from lipstep.data.speech import Phoneme, make_sentence, synthesize, voices
from lipstep.data.visemes import mouth_track, viseme_track
from lipstep.errors import ConfigError
from lipstep.fsutil import atomic_path, write_json_atomic, write_jsonl_atomic

FPS = 25.0
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = int(SAMPLE_RATE / FPS)  # 640


@dataclass
class ModerateConfig:
    """Probabilities and strengths of the "moderate quality" degradations (per clip)."""

    offset_prob: float = 0.3        # shift the audio against the video ...
    max_offset_frames: int = 5      # ... by 1..this many frames, either direction
    jitter_prob: float = 0.3        # per-frame random translation of the whole face ...
    jitter_px: float = 1.5          # ... with this standard deviation, in output pixels
    drop_prob: float = 0.3          # replace some frames by their predecessor (dropped frames) ...
    drop_fraction: float = 0.08     # ... this fraction of them
    compress_prob: float = 0.3      # encode with a high H.264 CRF ...
    compress_crf: int = 38
    wrong_audio_prob: float = 0.1   # pair the video with the speech of another sentence

    def validate(self):
        for name in ("offset_prob", "jitter_prob", "drop_prob", "compress_prob", "wrong_audio_prob",
                     "drop_fraction"):
            check(0.0 <= getattr(self, name) <= 1.0, f"world.moderate.{name} must be in [0, 1]")
        check(1 <= self.max_offset_frames <= 25, "world.moderate.max_offset_frames must be in 1..25")
        check(0 <= self.compress_crf <= 51, "world.moderate.compress_crf must be in 0..51")


@dataclass
class WorldConfig:
    """What `lipstep synth` renders."""

    identities: int = 8                 # number of people; splits are by identity
    clips_per_identity: int = 2
    seconds: float = 3.0                # clip length
    size: int = 64                      # frame side in pixels (32-256)
    seed: int = 0
    quality: Literal["clean", "moderate"] = "clean"
    val_fraction: float = 0.125         # share of identities held out for validation ...
    test_fraction: float = 0.125        # ... and for test (at least one each when identities >= 3)
    rate_range: tuple[int, int] = (135, 185)   # speaking rate, words per minute
    lead_silence: tuple[float, float] = (0.25, 0.6)  # silence before speech starts, seconds
    pause_prob: float = 0.35            # chance of a comma (a pause) inside a sentence
    noise_floor: float = 0.002          # std of the recording noise added to the audio
    head_motion: float = 1.0            # scale of head movement (0 = still)
    blinks_per_second: float = 0.3
    crf: int = 18                       # H.264 quality of clean clips
    moderate: ModerateConfig = field(default_factory=ModerateConfig)

    def validate(self):
        check(self.identities >= 1, "world.identities must be at least 1")
        check(self.clips_per_identity >= 1, "world.clips_per_identity must be at least 1")
        check(1.0 <= self.seconds <= 600.0, "world.seconds must be between 1 and 600")
        check(32 <= self.size <= 256, "world.size must be between 32 and 256")
        check(self.size % 2 == 0, "world.size must be even (H.264 needs even frame sizes)")
        check(0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
              and self.val_fraction + self.test_fraction < 1, "world.val_fraction + test_fraction must be < 1")
        check(80 <= self.rate_range[0] <= self.rate_range[1] <= 450, "world.rate_range must lie in 80..450 wpm")
        check(0 <= self.lead_silence[0] <= self.lead_silence[1] <= self.seconds - 0.4,
              "world.lead_silence must be increasing and leave at least 0.4 s of the clip for speech")
        check(0 <= self.pause_prob <= 1, "world.pause_prob must be in [0, 1]")
        check(self.noise_floor >= 0 and self.head_motion >= 0 and self.blinks_per_second >= 0,
              "world.noise_floor, head_motion and blinks_per_second must be non-negative")


# ---------------------------------------------------------------------------------------------
# identities and splits


def identity_id(index: int) -> str:
    return f"id{index:04d}"


def assign_splits(n: int, cfg: WorldConfig) -> list[str]:
    """Split identities into train/val/test deterministically from the seed."""
    n_test = max(1, round(n * cfg.test_fraction)) if n >= 3 and cfg.test_fraction > 0 else 0
    n_val = max(1, round(n * cfg.val_fraction)) if n >= 3 and cfg.val_fraction > 0 else 0
    order = np.random.default_rng([cfg.seed, 7919]).permutation(n)
    splits = ["train"] * n
    for k, idx in enumerate(order[: n_test + n_val]):
        splits[idx] = "test" if k < n_test else "val"
    return splits


def make_identity(cfg: WorldConfig, index: int):
    """The identity (appearance) and voice of person `index`."""
    rng = np.random.default_rng([cfg.seed, index, 1])
    idn = sample_identity(rng)
    pool = voices()
    voice = {"voice": pool[int(rng.integers(len(pool)))], "pitch": int(rng.integers(30, 71))}
    return idn, voice


# ---------------------------------------------------------------------------------------------
# one clip


def speech_for(rng, cfg: WorldConfig, voice: dict, available: float):
    """Synthesize a sentence that fits in `available` seconds (fewer words until it does)."""
    rate = int(rng.integers(cfg.rate_range[0], cfg.rate_range[1] + 1))
    n_words = max(1, int(available * rate / 60.0 * 0.8))
    while True:
        text = _sentences(rng, n_words, cfg.pause_prob)
        speech = synthesize(text, voice=voice["voice"], rate=rate, pitch=voice["pitch"], sample_rate=SAMPLE_RATE)
        if speech.seconds <= available or n_words == 1:
            return speech, rate
        n_words = max(1, min(n_words - 1, int(n_words * available / speech.seconds)))


def _sentences(rng, n_words: int, pause_prob: float) -> str:
    parts, left = [], n_words
    while left > 0:
        k = min(left, int(rng.integers(3, 9)))
        parts.append(make_sentence(rng, k))
        left -= k
    text = " ".join(parts)
    if rng.random() < pause_prob and n_words >= 4 and "," not in text:
        words = text.split(" ")
        cut = int(rng.integers(1, len(words) - 1))
        words[cut] = words[cut].rstrip(".") + ","
        text = " ".join(words)
    return text


def place_speech(speech, n_samples: int, lead: float, noise: float, rng):
    """Put the speech waveform `lead` seconds into a clip of `n_samples`; returns (wav, phonemes)."""
    wav = np.zeros(n_samples, np.float32)
    start = int(round(lead * SAMPLE_RATE))
    seg = speech.wav[: max(0, n_samples - start)]
    wav[start:start + len(seg)] = seg
    if noise > 0:
        wav += rng.normal(0, noise, n_samples).astype(np.float32)
    end_t = n_samples / SAMPLE_RATE
    phonemes = [Phoneme(p.symbol, p.start + lead, min(p.end + lead, end_t))
                for p in speech.phonemes if p.start + lead < end_t]
    return np.clip(wav, -1, 1), phonemes


def speech_energy(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """Per-frame speech energy in [0, 1] (RMS over each 40 ms frame, smoothed, max-normalised)."""
    frames = wav[: n_frames * SAMPLES_PER_FRAME].reshape(n_frames, SAMPLES_PER_FRAME)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(1))
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.5) ** 2)
    smooth = np.convolve(rms, kernel / kernel.sum(), mode="same")
    return (smooth / max(smooth.max(), 1e-8)).astype(np.float32)


def head_motion(rng, energy: np.ndarray, scale: float) -> np.ndarray:
    """Head pose [T, 3] (yaw, pitch, roll): slow drift plus nods that follow speech energy."""
    t = np.arange(len(energy)) / FPS
    pose = np.zeros((len(energy), 3), np.float32)
    amps = np.array([0.10, 0.045, 0.04])
    for axis in range(3):
        for _ in range(3):
            f, ph = rng.uniform(0.08, 0.5), rng.uniform(0, 2 * np.pi)
            pose[:, axis] += amps[axis] / 3 * np.sin(2 * np.pi * f * t + ph)
    wobble = np.sin(2 * np.pi * rng.uniform(1.5, 3.0) * t + rng.uniform(0, 6.28))
    pose[:, 1] += 0.06 * energy + 0.015 * energy * wobble  # nod down while speaking
    pose[:, 0] += 0.03 * energy * np.sin(2 * np.pi * 0.7 * t)
    return pose * scale


def frame_pose(head_pose, jitter=(0.0, 0.0)):
    """The renderer's `Pose` for one labelled head pose (yaw, pitch, roll); jitter in image units."""
    yaw, pitch, roll = (float(v) for v in head_pose)
    return Pose(yaw=yaw, pitch=pitch, roll=roll, dx=yaw * 0.08 + jitter[0], dy=pitch * 0.05 + jitter[1])


def render_frames(idn, mouth, pose, blink, size: int, jitter=None) -> np.ndarray:
    """Render all frames of a clip (uint8 [T, S, S, 3]); `jitter` [T, 2] in pixels."""
    background = background_for(idn, size)
    frames = np.empty((len(mouth), size, size, 3), np.uint8)
    for i in range(len(mouth)):
        shift = (jitter[i] / size) if jitter is not None else (0.0, 0.0)
        frames[i] = render_frame(idn, mouth[i], frame_pose(pose[i], shift), float(blink[i]), size,
                                 background=background)
    return frames


def _degradations(rng, cfg: WorldConfig) -> dict:
    m = cfg.moderate
    deg = {}
    if rng.random() < m.offset_prob:
        deg["av_offset_frames"] = int(rng.integers(1, m.max_offset_frames + 1) * rng.choice([-1, 1]))
    if rng.random() < m.jitter_prob:
        deg["jitter_px"] = m.jitter_px
    if rng.random() < m.drop_prob:
        deg["drop_fraction"] = m.drop_fraction
    if rng.random() < m.compress_prob:
        deg["crf"] = m.compress_crf
    if rng.random() < m.wrong_audio_prob:
        deg["wrong_audio"] = True
    return deg


def _shift_audio(wav: np.ndarray, frames: int) -> np.ndarray:
    """Delay (positive) or advance (negative) audio by whole video frames, keeping the length."""
    shift = frames * SAMPLES_PER_FRAME
    out = np.zeros_like(wav)
    if shift >= 0:
        out[shift:] = wav[: len(wav) - shift]
    else:
        out[:shift] = wav[-shift:]
    return out


def render_clip(cfg: WorldConfig, out: Path, index: int, clip: int, split: str) -> dict:
    """Synthesize, render and write one clip; returns its manifest row."""
    idn, voice = make_identity(cfg, index)
    rng = np.random.default_rng([cfg.seed, index, clip, 2])
    n_frames = int(round(cfg.seconds * FPS))
    n_samples = n_frames * SAMPLES_PER_FRAME
    lead = float(rng.uniform(*cfg.lead_silence))
    speech, rate = speech_for(rng, cfg, voice, cfg.seconds - lead - 0.25)
    wav, phonemes = place_speech(speech, n_samples, lead, cfg.noise_floor, rng)
    visemes = viseme_track(phonemes, n_frames, FPS)
    mouth = mouth_track(phonemes, n_frames, FPS)
    pose = head_motion(rng, speech_energy(wav, n_frames), cfg.head_motion)
    blink = blink_track(rng, n_frames, cfg.blinks_per_second, FPS)
    deg = _degradations(rng, cfg) if cfg.quality == "moderate" else {}
    jitter = rng.normal(0, deg["jitter_px"], (n_frames, 2)) if "jitter_px" in deg else None
    frames = render_frames(idn, mouth, pose, blink, cfg.size, jitter)
    audio = wav
    if "drop_fraction" in deg:
        drops = np.flatnonzero(rng.random(n_frames) < deg["drop_fraction"])
        for i in drops[drops > 0]:
            frames[i] = frames[i - 1]
        deg["dropped_frames"] = int((drops > 0).sum())
    if deg.get("wrong_audio"):
        other, _ = speech_for(rng, cfg, voice, cfg.seconds - lead - 0.25)
        audio, _ = place_speech(other, n_samples, lead, cfg.noise_floor, rng)
        deg["audio_text"] = other.text
    if "av_offset_frames" in deg:
        audio = _shift_audio(audio, deg["av_offset_frames"])
    clip_id = f"{identity_id(index)}_c{clip:02d}"
    clip_dir = out / "clips" / clip_id
    clip_dir.mkdir(parents=True, exist_ok=True)
    write_video(clip_dir / "clip.mp4", frames, FPS, audio, SAMPLE_RATE, crf=deg.get("crf", cfg.crf))
    with atomic_path(clip_dir / "labels.npz") as tmp:
        np.savez(tmp, visemes=visemes.astype(np.int64), mouth=mouth.astype(np.float32),
                 head_pose=pose.astype(np.float32), blink=blink,
                 phoneme_symbols=np.array([p.symbol for p in phonemes], dtype=str),
                 phoneme_start=np.array([p.start for p in phonemes], np.float32),
                 phoneme_end=np.array([p.end for p in phonemes], np.float32),
                 identity=idn.to_vector(), text=np.array(speech.text), fps=np.float32(FPS),
                 sample_rate=np.int64(SAMPLE_RATE))
    return _manifest_row(clip_id, index, split, cfg, speech.text, voice, rate, deg)


def _manifest_row(clip_id, index, split, cfg, text, voice, rate, deg) -> dict:
    return {
        "id": clip_id, "identity": identity_id(index), "split": split,
        "video": f"clips/{clip_id}/clip.mp4", "labels": f"clips/{clip_id}/labels.npz",
        "seconds": float(round(cfg.seconds * FPS) / FPS), "text": text, "fps": FPS, "size": cfg.size,
        "sample_rate": SAMPLE_RATE, "voice": voice["voice"], "pitch": voice["pitch"], "rate": rate,
        "quality": cfg.quality, "degradations": deg,
    }


def _clip_done(out: Path, row_path: Path) -> dict | None:
    """The saved manifest row of a finished clip, or None when it must be (re)rendered."""
    if not row_path.is_file():
        return None
    try:
        row = json.loads(row_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ok = (out / row["video"]).is_file() and (out / row["labels"]).is_file()
    return row if ok else None


def _clip_job(cfg_dict: dict, out: str, index: int, clip: int, split: str) -> dict:
    """Worker entry point: render a clip unless a previous run finished it (resume)."""
    cfg, out_p = from_dict(WorldConfig, cfg_dict), Path(out)
    row_path = out_p / "clips" / f"{identity_id(index)}_c{clip:02d}" / "row.json"
    row = _clip_done(out_p, row_path)
    if row is None:
        row = render_clip(cfg, out_p, index, clip, split)
        write_json_atomic(row_path, row)
    return row


# ---------------------------------------------------------------------------------------------
# the whole world


@dataclass
class WorldSummary:
    out: Path
    clips: int
    identities: int
    splits: dict
    seconds: float

    def __str__(self):
        splits = ", ".join(f"{k} {v}" for k, v in sorted(self.splits.items()))
        return (f"wrote {self.clips} clips of {self.identities} identities ({splits}) to {self.out} "
                f"in {self.seconds:.1f} s; manifest: {self.out / 'manifest.jsonl'}")


def _check_existing(out: Path, cfg: WorldConfig) -> None:
    saved = out / "config.json"
    if saved.is_file():
        old = load_config(WorldConfig, saved)
        if to_dict(old) != to_dict(cfg):
            diff = [k for k, v in to_dict(cfg).items() if to_dict(old).get(k) != v]
            raise ConfigError(f"{out} already holds a world made with different settings ({', '.join(diff)}); "
                              "use a new --out or the same settings to resume")


def write_identities(cfg: WorldConfig, out: Path, splits: list[str]) -> None:
    """identities.json and one neutral portrait PNG per identity."""
    table = {}
    for i in range(cfg.identities):
        idn, voice = make_identity(cfg, i)
        table[identity_id(i)] = {"split": splits[i], **voice, "params": dataclasses.asdict(idn)}
        write_image(out / "identities" / f"{identity_id(i)}.png",
                    render_frame(idn, (0.0, 0.5, 0.2), Pose(), 0.0, cfg.size))
    write_json_atomic(out / "identities.json", table)


def synthesize_world(cfg: WorldConfig, out, *, workers: int = 0, progress: bool = True) -> WorldSummary:
    """Render the whole world into `out` (parallel over processes; resumes an interrupted run)."""
    validate(cfg)
    out = Path(out)
    _check_existing(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    start = time.perf_counter()
    splits = assign_splits(cfg.identities, cfg)
    jobs = [(i, c) for i in range(cfg.identities) for c in range(cfg.clips_per_identity)]
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    cfg_dict = to_dict(cfg)
    rows = []
    bar = tqdm(total=len(jobs), desc="synth", unit="clip", disable=not progress)
    if workers <= 1:
        for i, c in jobs:
            rows.append(_clip_job(cfg_dict, str(out), i, c, splits[i]))
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_clip_job, cfg_dict, str(out), i, c, splits[i]) for i, c in jobs]
            for fut in as_completed(futures):
                rows.append(fut.result())
                bar.update()
    bar.close()
    write_identities(cfg, out, splits)
    rows.sort(key=lambda r: r["id"])
    write_jsonl_atomic(out / "manifest.jsonl", rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    return WorldSummary(out, len(rows), cfg.identities, {k: v for k, v in counts.items() if v},
                        time.perf_counter() - start)


def check_world(root) -> dict:
    """Measure a rendered world against its labels, from the files alone.

    - `silence_rms_ratio`: mean audio RMS over frames labelled silence / over frames labelled speech;
    - `openness_corr`: correlation between the mouth opening measured from the decoded pixels
      (`render.measure_openness`) and the labelled openness, over all frames of all clean clips.
    """
    root = Path(root)
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    silent, speech, measured, labelled = [], [], [], []
    for row in rows:
        video, labels = read_video(root / row["video"]), np.load(root / row["labels"])
        vis = labels["visemes"]
        rms = np.sqrt((video.audio[: len(vis) * SAMPLES_PER_FRAME].reshape(len(vis), -1) ** 2).mean(1))
        silent.append(rms[vis == 0])
        speech.append(rms[vis != 0])
        if row.get("degradations"):
            continue  # jitter / drops move pixels away from the labels on purpose
        idn = Identity.from_vector(labels["identity"])
        for frame, pose, mouth in zip(video.frames, labels["head_pose"], labels["mouth"]):
            measured.append(measure_openness(frame, idn, frame_pose(pose)))
            labelled.append(float(mouth[0]))
    return {
        "clips": len(rows),
        "silence_rms_ratio": float(np.concatenate(silent).mean() / np.concatenate(speech).mean()),
        "openness_corr": float(np.corrcoef(measured, labelled)[0, 1]) if len(measured) > 2 else float("nan"),
        "frames_measured": len(measured),
    }
