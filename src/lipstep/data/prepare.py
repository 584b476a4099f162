"""Raw media → prepared clips: one ``.npz`` shard per clip (crop, 25 fps, 16 kHz, mel windows), resumable.

SRC is one of:

- a **synthetic world** (``lipstep synth``): ``SRC/manifest.jsonl`` rows with ``video`` and
  ``labels``. The face fills the frame, so frames are only resized (centre square, no detection);
  the labels (visemes, mouth, head_pose, blink, phonemes), ``identity``, ``split``, ``text`` and
  ``voice`` (the speaker's espeak voice, which `lipstep train visemes` holds out by) are carried over. A manifest without ``labels`` is used the same way, with face detection.
- a **folder of real videos** (``*.mp4 *.mov *.mkv *.avi *.webm``, any case), flat
  (identity = file stem) or nested like LRS3 ``speaker/clip.mp4`` (identity = first folder).
  A ``<stem>.txt`` beside a video gives its ``text`` (LRS3's ``Text:`` line, else the first line).

Output (OUT)::

    config.json      the PrepareConfig used (a re-run must match it; see `SHARD_FIELDS`)
    shards/<id>.npz  one per clip, see `build_shard`
    manifest.jsonl   one row per shard, sorted by id, rebuilt from the shards after every run
    skipped.jsonl    {"file", "reason"} for every clip skipped in the last run

Splits of real data are by identity (`assign_splits`). A clip that cannot be used is skipped with a
one-line reason; one bad file never stops the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from lipstep.checks import missing_root
from lipstep.config import check, from_dict, load_config, save_config, to_dict, validate
from lipstep.data.faces import centre_box, clip_crop_box, crop_frames, resolve_detector
from lipstep.data.features import frame_windows, log_mel
from lipstep.data.latents import safe_name
from lipstep.data.media import read_video
from lipstep.errors import ConfigError, DataError, MediaError
from lipstep.fsutil import atomic_path, remove_made, write_jsonl_atomic

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
FRAME_TRACKS = ("visemes", "mouth", "head_pose", "blink")  # per-video-frame labels, length T
PHONEME_KEYS = ("phoneme_symbols", "phoneme_start", "phoneme_end")
SHARD_KEYS = ("frames", "audio", "mel", "fps", "sample_rate", "crop_box", "meta")
SPLITS = ("train", "val", "test")


@dataclass
class PrepareConfig:
    size: int = 64                  # output frames are size x size pixels
    detector: str = "auto"          # face detector for real videos: auto | haar | dlib | none
    fps: float = 25.0               # output frame rate (frames are resampled to it)
    sample_rate: int = 16000        # output audio rate (mono)
    n_mels: int = 80                # mel bands of the log-mel features
    mel_window: int = 16            # K: mel frames (10 ms each at 16 kHz) per video frame
    min_seconds: float = 1.0        # skip clips shorter than this
    max_seconds: float = 600.0      # skip clips longer than this (they are not cut)
    crop_scale: float = 1.8         # crop side / detected face size
    val_fraction: float = 0.1       # share of identities in the val split (real data)
    test_fraction: float = 0.1      # share of identities in the test split (real data)
    seed: int = 0                   # seeds the identity → split hash

    def validate(self) -> None:
        check(16 <= self.size <= 1024, f"size must be in 16..1024, got {self.size}")
        check(self.detector in ("auto", "haar", "dlib", "none"),
              f"detector must be auto, haar, dlib or none, got '{self.detector}'")
        check(1.0 <= self.fps <= 120.0, f"fps must be in 1..120, got {self.fps}")
        check(8000 <= self.sample_rate <= 48000, f"sample_rate must be in 8000..48000, got {self.sample_rate}")
        check(8 <= self.n_mels <= 256, f"n_mels must be in 8..256, got {self.n_mels}")
        check(1 <= self.mel_window <= 256, f"mel_window must be in 1..256, got {self.mel_window}")
        check(0.0 <= self.min_seconds <= self.max_seconds,
              f"need 0 <= min_seconds <= max_seconds, got {self.min_seconds} and {self.max_seconds}")
        check(1.0 <= self.crop_scale <= 4.0, f"crop_scale must be in 1..4, got {self.crop_scale}")
        check(0.0 <= self.val_fraction < 1.0 and 0.0 <= self.test_fraction < 1.0
              and self.val_fraction + self.test_fraction < 1.0,
              "val_fraction and test_fraction must be >= 0 with a sum below 1, "
              f"got {self.val_fraction} and {self.test_fraction}")


# Settings that change what a shard contains; a re-run into the same OUT must keep them.
# (val_fraction, test_fraction and seed only affect the manifest, which is rebuilt every run.)
SHARD_FIELDS = ("size", "detector", "fps", "sample_rate", "n_mels", "mel_window", "min_seconds",
                "max_seconds", "crop_scale")


@dataclass
class Job:
    """One clip to prepare (picklable: it travels to worker processes)."""

    clip_id: str
    source: str                 # path relative to SRC (posix)
    path: str                   # absolute path of the video
    identity: str
    split: str | None = None    # given by a world manifest; None = assigned by identity hash
    text: str | None = None
    labels: str | None = None   # absolute path of a labels .npz
    detector: str = "auto"      # "none" for the synthetic world
    voice: str | None = None    # the speaker's voice, when the world manifest names it (espeak voice+variant)


@dataclass
class PrepareSummary:
    prepared: int
    reused: int
    skipped: list[tuple[str, str]]
    out: Path
    splits: dict[str, int] = field(default_factory=dict)  # clips per split in the manifest

    def __str__(self) -> str:
        total = sum(self.splits.values())
        parts = ", ".join(f"{k} {v}" for k, v in self.splits.items() if v)
        text = (f"prepared {self.prepared} clips, reused {self.reused}, skipped {len(self.skipped)}; "
                f"{self.out / 'manifest.jsonl'} lists {total} clips ({parts or 'none'})")
        if self.skipped:
            text += ". Skipped: " + "; ".join(f"{f} ({r})" for f, r in self.skipped)
        return text + "."


# --------------------------------------------------------------------------------------------- sources


def _unique_ids(jobs: list[Job]) -> list[Job]:
    """Make clip ids unique (``a``, ``a__2``, ...) in the given, deterministic order."""
    seen: set[str] = set()
    for job in jobs:
        base, n = job.clip_id, 1
        while job.clip_id in seen:
            n += 1
            job.clip_id = f"{base}__{n}"
        seen.add(job.clip_id)
    return jobs


def _sidecar_text(video: Path) -> str | None:
    """Transcript from ``<stem>.txt`` next to a video (LRS3 ``Text:`` line, else the first line)."""
    path = video.with_suffix(".txt")
    if not path.is_file():
        return None
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return None
    for line in lines:
        if line.lower().startswith("text:"):
            return line[5:].strip() or None
    return next((ln for ln in lines if ln), None)


def _world_jobs(src: Path, manifest: Path, detector: str) -> list[Job]:
    jobs = []
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{manifest}:{n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise DataError(f"{manifest}:{n}: a row must be a JSON object, not {type(row).__name__}")
        if "shard" in row:
            raise DataError(f"{src} is already a prepared directory; give the raw videos or a synthetic world")
        if not isinstance(row.get("video"), str) or not row["video"]:
            raise DataError(f"{manifest}:{n}: row has no 'video' path")
        if not all(isinstance(row.get(k), str) for k in ("id", "identity", "split", "text", "labels", "voice")
                   if row.get(k) is not None):
            raise DataError(f"{manifest}:{n}: id, identity, split, text, labels and voice must be strings")
        video = Path(row["video"])
        labels = row.get("labels")
        jobs.append(Job(
            clip_id=safe_name(str(row.get("id") or video.parent.name or video.stem)),
            source=video.as_posix(), path=str(src / video),
            identity=str(row.get("identity") or row.get("id") or video.stem),
            split=row.get("split") if row.get("split") in SPLITS else None,
            text=row.get("text"), labels=str(src / labels) if labels else None,
            detector="none" if labels else detector, voice=row.get("voice")))
    return _unique_ids(jobs)


def _folder_jobs(src: Path, detector: str, exclude: Path | None) -> list[Job]:
    jobs = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if (path.suffix.lower() not in VIDEO_SUFFIXES or any(p.startswith(".") for p in rel.parts)
                or not path.is_file() or (exclude is not None and exclude in path.resolve().parents)):
            continue
        parts = rel.parts
        identity = parts[0] if len(parts) > 1 else path.stem
        clip_id = safe_name("__".join([*parts[:-1], path.stem]))
        jobs.append(Job(clip_id, rel.as_posix(), str(path), identity, text=_sidecar_text(path),
                        detector=detector))
    return _unique_ids(jobs)


def find_clips(src: str | os.PathLike, detector: str = "auto", exclude: str | os.PathLike | None = None
               ) -> list[Job]:
    """The clips in SRC (a synthetic world or a folder of videos); `DataError` if there are none."""
    src = Path(src)
    if not src.exists():
        raise DataError(f"SRC {src} does not exist")
    if not src.is_dir():
        raise DataError(f"SRC {src} is not a directory")
    manifest = src / "manifest.jsonl"
    if manifest.is_file():
        jobs = _world_jobs(src, manifest, detector)
    else:
        jobs = _folder_jobs(src, detector, Path(exclude).resolve() if exclude else None)
    if not jobs:
        looked = ", ".join(f"*{s}" for s in VIDEO_SUFFIXES)
        raise DataError(f"no videos found in {src} (looked for {looked}, any case, in it and its "
                        "subfolders, or a manifest.jsonl of a synthetic world)")
    return jobs


# ---------------------------------------------------------------------------------------------- splits


def _hash01(seed: int, identity: str) -> float:
    digest = hashlib.sha256(f"{seed}:{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(identities, val_fraction: float, test_fraction: float, seed: int = 0) -> dict[str, str]:
    """Split by identity: ``u = hash(seed, identity)`` in [0, 1); test if ``u < test_fraction``,
    val if ``u < test_fraction + val_fraction``, else train.

    An identity's split depends only on (seed, identity), so adding identities never moves the
    existing ones (no test speaker leaks into train as the dataset grows). Small sets: with fewer
    than 3 identities everything is train; otherwise a split with a non-zero fraction that came out
    empty takes the train identity with the lowest u (keeping at least one train identity).
    """
    ids = sorted(set(identities))
    u = {i: _hash01(seed, i) for i in ids}
    if len(ids) < 3:
        return {i: "train" for i in ids}
    split = {i: "test" if u[i] < test_fraction else "val" if u[i] < test_fraction + val_fraction
             else "train" for i in ids}
    for name, frac in (("test", test_fraction), ("val", val_fraction)):
        train = sorted((i for i in ids if split[i] == "train"), key=u.get)
        if frac > 0 and name not in split.values() and len(train) > 1:
            split[train[0]] = name
    return split


# ------------------------------------------------------------------------------------------- one clip


def _seconds(x: float) -> str:
    return f"{x:.1f}" if abs(x * 10 - round(x * 10)) < 1e-6 else f"{x:.2f}"


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Trim, or pad by repeating the last element, along axis 0 to length n."""
    if len(x) >= n:
        return x[:n]
    if len(x) == 0:
        return np.zeros((n, *x.shape[1:]), x.dtype)
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])


def _load_labels(path: str, n_frames: int) -> dict[str, np.ndarray]:
    """Per-frame tracks (fitted to n_frames) and phoneme arrays from a world labels file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in (*FRAME_TRACKS, *PHONEME_KEYS) if k in z.files}
    except FileNotFoundError:
        raise DataError(f"labels file {path} not found") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read labels {path} ({e})") from None
    for key in FRAME_TRACKS:
        if key in data:
            if abs(len(data[key]) - n_frames) > 2:
                raise DataError(f"labels have {len(data[key])} {key} frames but the video has {n_frames}")
            data[key] = _fit_length(data[key], n_frames)
    if "phoneme_symbols" in data:
        data["phoneme_symbols"] = data["phoneme_symbols"].astype(str)
    return data


def mel_params(sample_rate: int) -> dict:
    """STFT settings for `log_mel`: 25 ms Hann windows every 10 ms (n_fft 512 at 16 kHz)."""
    hop, win = round(sample_rate / 100), round(sample_rate * 0.025)
    return {"hop_length": hop, "win_length": win, "n_fft": 1 << (win - 1).bit_length()}


def build_shard(job: Job, cfg: PrepareConfig) -> dict[str, np.ndarray]:
    """Decode, crop and featurize one clip; the arrays of its shard.

    Keys: ``frames`` uint8 [T, S, S, 3]; ``audio`` float32 [round(T * sample_rate / fps)];
    ``mel`` float16 [T, K, n_mels] (`features.frame_windows` of `features.log_mel`); ``fps``
    float32; ``sample_rate`` int64; ``crop_box`` int64 [4] = x, y, w, h in source pixels (the
    centred square for detector "none"); ``meta`` a JSON string (id, source, identity, split,
    text, frames, seconds, size, fps, sample_rate, mel_window, detector, has_labels[, voice]); and, when
    the source has labels, ``visemes`` int64 [T], ``mouth`` float32 [T, 3], ``head_pose`` float32
    [T, 3], ``blink`` float32 [T], ``phoneme_symbols`` str [P], ``phoneme_start`` /
    ``phoneme_end`` float32 [P] seconds. Raises `MediaError` / `DataError` for unusable clips.
    """
    video = read_video(job.path, fps=cfg.fps, audio="required", sample_rate=cfg.sample_rate,
                       max_seconds=cfg.max_seconds)
    n_frames = len(video.frames)
    seconds = n_frames / cfg.fps
    if seconds < cfg.min_seconds - 1e-9:
        raise DataError(f"too short ({_seconds(seconds)} s < {_seconds(cfg.min_seconds)} s)")
    labels = _load_labels(job.labels, n_frames) if job.labels else {}
    if job.detector == "none":
        box = centre_box(*video.frames.shape[1:3])
    else:
        box = clip_crop_box(video.frames, job.detector, scale=cfg.crop_scale)
        if box is None:
            raise DataError("no face found")
    frames = crop_frames(video.frames, box, cfg.size)
    audio = _fit_length(video.audio.astype(np.float32), round(n_frames * cfg.sample_rate / cfg.fps))
    stft = mel_params(cfg.sample_rate)
    mel = log_mel(audio, cfg.sample_rate, cfg.n_mels, **stft)
    windows = frame_windows(mel, n_frames, cfg.fps, cfg.sample_rate / stft["hop_length"], cfg.mel_window)
    meta = {"id": job.clip_id, "source": job.source, "identity": job.identity, "split": job.split,
            "text": job.text, "frames": n_frames, "seconds": round(seconds, 6), "size": cfg.size,
            "fps": cfg.fps, "sample_rate": cfg.sample_rate, "mel_window": cfg.mel_window,
            "detector": job.detector, "has_labels": bool(labels)}
    if job.voice is not None:
        meta["voice"] = job.voice
    return {"frames": frames, "audio": audio, "mel": windows.astype(np.float16),
            "fps": np.float32(cfg.fps), "sample_rate": np.int64(cfg.sample_rate),
            "crop_box": np.array(box, dtype=np.int64), "meta": np.array(json.dumps(meta)), **labels}


def write_shard(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write a shard atomically (uncompressed .npz)."""
    with atomic_path(path) as tmp:  # tmp keeps the .npz suffix, so np.savez does not append one
        np.savez(tmp, **arrays)


def read_shard_meta(path: str | os.PathLike) -> dict | None:
    """The ``meta`` of a complete shard, or None if the file is missing, partial or not a shard."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not set(SHARD_KEYS) <= set(z.files):
                return None
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError):
        return None


def _init_worker() -> None:
    """One thread per worker process: the pool already uses every core."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def prepare_clip(job: Job, cfg_dict: dict, out: str) -> tuple[str, str, str]:
    """Worker entry point: prepare one clip; returns (status, source, reason), never raises."""
    cfg = from_dict(PrepareConfig, cfg_dict)
    try:
        write_shard(Path(out) / "shards" / f"{job.clip_id}.npz", build_shard(job, cfg))
    except MediaError as e:
        return "skipped", job.source, e.problem
    except DataError as e:
        return "skipped", job.source, str(e)
    except Exception as e:  # noqa: BLE001 -- a bug or an odd file must not stop the other clips
        return "skipped", job.source, f"unexpected {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return "prepared", job.source, ""


# ------------------------------------------------------------------------------------------- the run


def _check_config(out: Path, cfg: PrepareConfig) -> None:
    saved = out / "config.json"
    if not saved.is_file():
        return
    old = load_config(PrepareConfig, saved)
    diff = [f"{k} {getattr(old, k)!r} -> {getattr(cfg, k)!r}" for k in SHARD_FIELDS
            if getattr(old, k) != getattr(cfg, k)]
    if diff:
        raise ConfigError(f"{out} holds clips prepared with different settings ({', '.join(diff)}); "
                          "use a new --out or the same settings to resume")


def _run_jobs(jobs: list[Job], cfg: PrepareConfig, out: Path, workers: int, progress: bool):
    """Prepare `jobs` in-process or over a process pool; yields (status, source, reason)."""
    cfg_dict = to_dict(cfg)
    bar = tqdm(total=len(jobs), desc="prepare", unit="clip", file=sys.stderr,
               disable=None if progress else True)
    try:
        if workers <= 1:
            for job in jobs:
                yield prepare_clip(job, cfg_dict, str(out))
                bar.update()
            return
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            futures = {pool.submit(prepare_clip, job, cfg_dict, str(out)): job for job in jobs}
            for fut in as_completed(futures):
                try:
                    yield fut.result()
                except Exception as e:  # noqa: BLE001 -- e.g. a worker killed for memory
                    yield "skipped", futures[fut].source, f"worker failed ({type(e).__name__}: {e})"
                bar.update()
    finally:
        bar.close()


def build_manifest(out: str | os.PathLike, cfg: PrepareConfig) -> list[dict]:
    """Rebuild ``OUT/manifest.jsonl`` from every shard in ``OUT/shards`` (sorted by id), atomically."""
    out = Path(out)
    metas = []
    for path in sorted((out / "shards").glob("*.npz")):
        if not path.name.startswith(".") and (meta := read_shard_meta(path)) is not None:
            metas.append((path, meta))
    hashed = assign_splits([m["identity"] for _, m in metas if m.get("split") not in SPLITS],
                           cfg.val_fraction, cfg.test_fraction, cfg.seed)
    rows = []
    for path, m in sorted(metas, key=lambda pm: pm[1]["id"]):
        row = {"id": m["id"], "source": m["source"], "shard": path.relative_to(out).as_posix(),
               "identity": m["identity"],
               "split": m["split"] if m.get("split") in SPLITS else hashed[m["identity"]],
               "frames": m["frames"], "seconds": m["seconds"], "size": m["size"], "fps": m["fps"],
               "has_labels": m["has_labels"]}
        for key in ("text", "voice"):
            if m.get(key) is not None:
                row[key] = m[key]
        rows.append(row)
    write_jsonl_atomic(out / "manifest.jsonl", rows)
    return rows


def _reasons(skipped: list[tuple[str, str]], n: int = 3) -> str:
    more = f"; and {len(skipped) - n} more" if len(skipped) > n else ""
    return "; ".join(f"{f} ({r})" for f, r in skipped[:n]) + more


def prepare_dataset(src: str | os.PathLike, out: str | os.PathLike, cfg: PrepareConfig | None = None, *,
                    workers: int = 0, progress: bool = True) -> PrepareSummary:
    """Prepare every clip of SRC into OUT (see the module docstring); resumes a previous run.

    Args:
        src: a synthetic world directory or a folder (flat or nested) of videos.
        out: output directory; re-running into it reuses the clips already prepared, provided the
            settings in `SHARD_FIELDS` match its config.json (else `ConfigError`).
        cfg: settings (defaults: `PrepareConfig()`).
        workers: processes; 0 = one per CPU core, 1 = in this process (no pool).
        progress: show a tqdm bar on stderr (only when stderr is a terminal).

    Returns:
        A `PrepareSummary`; ``str()`` of it is a one-paragraph report naming every skipped file.

    Raises:
        DataError: SRC is missing, holds no videos, or none of them could be prepared (what this run
            made in OUT is removed again; a folder that was there before stays).
        ConfigError: invalid settings, or settings that differ from OUT's.
    """
    cfg = cfg or PrepareConfig()
    validate(cfg)
    src, out = Path(src), Path(out)
    jobs = find_clips(src, cfg.detector, exclude=out)
    if any(j.detector != "none" for j in jobs):  # resolve "auto" once, fail early on missing dlib
        detector = resolve_detector(cfg.detector)
        for job in jobs:
            job.detector = detector if job.detector != "none" else "none"
    _check_config(out, cfg)
    made = [p for p in (missing_root(out), out / "shards", out / "config.json")  # removed if none is prepared
            if p is not None and not p.exists()]
    (out / "shards").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)

    todo = [j for j in jobs if read_shard_meta(out / "shards" / f"{j.clip_id}.npz") is None]
    reused = len(jobs) - len(todo)
    workers = min(len(todo), workers if workers > 0 else (os.cpu_count() or 1))
    prepared, skipped = 0, []
    for status, source, reason in _run_jobs(todo, cfg, out, workers, progress):
        if status == "prepared":
            prepared += 1
        else:
            skipped.append((source, reason))
    skipped.sort()
    if prepared + reused == 0:
        remove_made(made)
        raise DataError(f"no clip could be prepared from {src}: {len(skipped)} skipped: {_reasons(skipped)}")
    write_jsonl_atomic(out / "skipped.jsonl", [{"file": f, "reason": r} for f, r in skipped])
    rows = build_manifest(out, cfg)
    splits = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    return PrepareSummary(prepared, reused, skipped, out, splits)


__all__ = [
    "SHARD_FIELDS",
    "VIDEO_SUFFIXES",
    "Job",
    "PrepareConfig",
    "PrepareSummary",
    "assign_splits",
    "build_manifest",
    "build_shard",
    "find_clips",
    "mel_params",
    "prepare_clip",
    "prepare_dataset",
    "read_shard_meta",
    "write_shard",
]
