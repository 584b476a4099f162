"""`lipstep eval`: generate a split of prepared data with a model and compute every available metric.

For every clip of the split (up to ``max_clips``, the first ``seconds`` of each) the model generates
a video from the clip's first frame (the reference portrait) and the clip's own audio, exactly as
`lipstep generate` would (same pipeline, sampler and guidance unless overridden). The generated frames
are then compared with the clip's ground truth:

==============  =====================================================================================
key             what
==============  =====================================================================================
mouth_err       mean |openness read from the generated frame - the clip's labelled openness| (also
                under the audio controls below; the mouth reader, `eval/mouthreader.py`); mouth_corr:
                Pearson over time
sync_c/sync_d   Sync-C / Sync-D and the AV offset (official protocol, `eval/sync.py`) of the generated
                frames against the clip's audio; official SyncNet S when its weights are given, else
                lipstep's own SyncNet (the extractor name says which)
fd, kid         Fréchet distance and KID between generated and ground-truth frames (InceptionV3 =
                FID when its weights are given, else lipstep's own frame features)
fvd             Fréchet distance between 16-frame clips (I3D when given, else own video features)
id_sim          mean cosine similarity of generated frames to the reference portrait (own identity
                encoder; ArcFace / dlib when available, under their own keys)
id_psnr/id_ssim PSNR / SSIM of the generated frames against the reference portrait on the identity
                region (the crop minus `portrait.MOUTH_BOX`): is it still the portrait's person?
colour_shift    RGB distance (0..255) between the mean colour of the generated frames and of the
                reference, both over the identity region
flicker         mean |x_t+1 - x_t| over frames ([0, 1] units), flicker_second_diff, warp_err
                (Farneback warping error), drift_colour / drift_id (change over seconds)
psnr_gt/ssim_gt against the ground-truth frames; psnr_codec/ssim_codec against the codec's
                reconstruction of them (the denoiser's own error, TempoSyncDiff's protocol)
nfe             denoiser evaluations per chunk; nfe_clip: per clip on average
==============  =====================================================================================

Every metric also has a ``*_gt`` ceiling where that makes sense (the same measurement on the
ground-truth frames). Metrics whose weights are missing are listed under ``skipped`` with the reason;
``extractors`` names the network behind each metric. ``contact_sheet.png`` shows, for the first clips,
a row of generated frames spread over the clip above the ground-truth frames at the same times.

``long`` > 0 switches to the long-run mode (`eval/longrun.py`): each of a few identities of the split
is driven for a minute or more with its clips' speech chained, and the portrait metrics are reported
per block of seconds.

Two controls change only the audio that drives the generation while every metric still compares
with the clip's own audio and labels: ``audio_shift`` (seconds) rotates the clip's audio by that
much, ``other_audio`` uses the next clip's audio instead. A model whose mouths follow the audio
scores clearly worse under either (MouthErr up, Sync-C down); the teacher acceptance compares
MouthErr with the right audio against MouthErr with another clip's audio.
"""

from __future__ import annotations

import glob
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipstep.checks import MAX_STEPS
from lipstep.config import check, to_dict
from lipstep.data.dataset import check_shard, open_shard, read_manifest
from lipstep.data.latents import clip_id_of
from lipstep.data.media import write_image, write_video
from lipstep.diffusion.guidance import check_scale
from lipstep.errors import DataError, LipstepError
from lipstep.eval.drift import drift
from lipstep.eval.fd import fd_from_features
from lipstep.eval.features import (
    I3DFeatures,
    InceptionFeatures,
    OwnFeatures,
    OwnVideoFeatures,
    clips_from_video,
)
from lipstep.eval.flicker import flicker
from lipstep.eval.identity import identity_per_second, identity_similarity
from lipstep.eval.identity_embedders import resolve_identity_embedders
from lipstep.eval.kid import kid
from lipstep.eval.mouthreader import MouthReader, mouth_scores, reconstruct
from lipstep.eval.portrait import MOUTH_BOX, colour_shift, identity_psnr, identity_ssim
from lipstep.eval.psnr import psnr
from lipstep.eval.ssim import ssim
from lipstep.eval.sync import score_lipsync, score_official
from lipstep.eval.warping import warping_error
from lipstep.fsutil import write_json_atomic, write_jsonl_atomic, write_text_atomic
from lipstep.nets.syncnet import load_lipsync, load_official_syncnet
from lipstep.pipeline import AvatarPipeline
from lipstep.runtime import RUNTIMES

INCEPTION_GLOB = "pt_inception-2015-12-05*.pth"
SYNCNET_FILE = "syncnet_v2.model"
I3D_FILE = "i3d_torchscript.pt"
ARCFACE_GLOB = ("w600k_r50.onnx", "*arcface*.onnx", "glintr100.onnx")
EVALUATOR_DIRS = {"mouth": "mouth", "syncnet": "syncnet", "features": "features", "identity": "identity"}


@dataclass
class EvalConfig:
    split: str = "test"             # split of the prepared directory to generate
    max_clips: int = 0              # clips evaluated (the first ones of the split); 0 = all
    seconds: float = 0.0            # evaluate the first `seconds` of each clip; 0 = whole clips
    steps: int | None = None        # sampler steps (None = the model's default)
    cfg_audio: float | None = None  # audio guidance scale (None = the model's default)
    cfg_ref: float | None = None    # reference guidance scale (None = the model's default)
    seed: int = 0                   # noise seed, the same for every clip
    audio_shift: float = 0.0        # control: drive with the audio rotated by this many seconds
    other_audio: bool = False       # control: drive each clip with the next clip's audio (cut/padded)
    save_videos: int = 2            # write GT | generated side-by-side mp4s of the first N clips
    kid_subsets: int = 100          # KID: random subsets ...
    kid_subset_size: int = 1000     # ... of this size (clipped to the sample count)
    clip_length: int = 16           # FVD clip length (frames)
    vshift: int = 15                # sync protocol: offsets searched, -vshift..vshift frames
    long: float = 0.0               # long-run mode: seconds generated per identity (0 = per-clip evaluation)
    long_identities: int = 3        # long-run mode: identities of the split (the first ones; 0 = all)
    long_block: float = 10.0        # long-run mode: seconds per reported block
    runtime: str = "torch"          # what runs the networks: torch, onnx or onnx-int8 (the model's ONNX export)

    def validate(self) -> None:
        check(self.split in ("train", "val", "test"), f"split must be train, val or test, got {self.split!r}")
        for name in ("seconds", "audio_shift", "long", "long_block"):
            value = getattr(self, name)
            check(math.isfinite(value), f"{name} must be a finite number, got {value}")
        check(self.max_clips >= 0, f"max_clips must be >= 0, got {self.max_clips}")
        check(self.seconds >= 0, f"seconds must be >= 0, got {self.seconds}")
        check(self.steps is None or 1 <= self.steps <= MAX_STEPS, f"steps must be in 1..{MAX_STEPS}, got {self.steps}")
        for name in ("cfg_audio", "cfg_ref"):
            if (scale := getattr(self, name)) is not None:
                check_scale(scale, name)
        check(self.save_videos >= 0 and self.kid_subsets >= 1 and self.kid_subset_size >= 2,
              "save_videos must be >= 0, kid_subsets >= 1 and kid_subset_size >= 2")
        check(self.clip_length >= 2 and self.vshift >= 1, "clip_length must be >= 2 and vshift >= 1")
        check(self.runtime in RUNTIMES, f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        check(self.long >= 0 and self.long_identities >= 0 and self.long_block > 0,
              "long must be >= 0, long_identities >= 0 and long_block > 0")
        if self.long:
            check(not (self.audio_shift or self.other_audio), "the audio controls (audio_shift, other_audio) "
                  "apply to the per-clip evaluation, not to the long run")
            check(not (self.max_clips or self.seconds), "max_clips and seconds apply to the per-clip evaluation; "
                  "the long run takes long_identities (--identities) and whole clips")


@dataclass
class Evaluators:
    """The networks behind the metrics; None = unavailable (reason in `skipped`)."""

    mouth: object | None = None          # MouthReader
    lipsync: object | None = None        # own LipSyncNet
    official_syncnet: object | None = None
    frames: object | None = None         # primary frame features (Inception or own)
    frames_own: object | None = None     # own frame features when Inception is primary
    video: object | None = None          # primary clip features (I3D or own)
    identity: list = field(default_factory=list)   # identity embedders (own first)
    skipped: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # evaluator -> path it came from


def _find(directory: Path | None, patterns) -> Path | None:
    if directory is None:
        return None
    for pattern in (patterns,) if isinstance(patterns, str) else patterns:
        hits = sorted(glob.glob(str(directory / pattern)))
        if hits:
            return Path(hits[0])
    return None


def _file(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LipstepError(f"{path}: {what} file not found")
    return path


def default_evaluators_dir() -> Path | None:
    """The bundled evaluators (lipstep/weights/evaluators) when present."""
    path = Path(__file__).resolve().parent.parent / "weights" / "evaluators"
    return path if path.is_dir() else None


def load_evaluators(evaluators_dir: str | os.PathLike | None = None, *, weights_dir: str | os.PathLike | None = None,
                    syncnet: str | os.PathLike | None = None, inception: str | os.PathLike | None = None,
                    i3d: str | os.PathLike | None = None, arcface: str | os.PathLike | None = None,
                    dlib: bool = False, device: str = "cpu") -> Evaluators:
    """Resolve every evaluator: explicit file > `weights_dir` (known file names) > skipped with a reason.

    `evaluators_dir` holds lipstep's own evaluators (``lipstep train evaluators``: mouth/, syncnet/,
    features/, identity/); None = the bundled ones, if any. An explicit file that cannot be used is an
    error. The I3D is TorchScript, and loading TorchScript runs code stored in the file, so it is only
    loaded from `i3d`, never found in `weights_dir`.
    """
    ev = Evaluators()
    own = Path(evaluators_dir) if evaluators_dir is not None else default_evaluators_dir()
    if own is not None and not own.is_dir():
        raise LipstepError(f"{own}: evaluators directory not found (make one with `lipstep train evaluators`)")
    wd = Path(weights_dir) if weights_dir is not None else None
    if wd is not None and not wd.is_dir():
        raise LipstepError(f"{wd}: weights directory not found")
    no_own = "no lipstep evaluators directory (--evaluators; `lipstep train evaluators` makes one)"

    def own_dir(key: str) -> Path | None:
        if own is None:
            return None
        path = own / EVALUATOR_DIRS[key]
        return path if (path / "config.json").is_file() else None

    if (p := own_dir("mouth")) is not None:
        ev.mouth = MouthReader(p, device=device)
        ev.sources["mouth"] = str(p)
    else:
        ev.skipped["mouth_err"] = f"no mouth reader in {own}" if own else no_own
    if (p := own_dir("syncnet")) is not None:
        ev.lipsync = load_lipsync(p).to(device)
        ev.sources["syncnet"] = str(p)
    official = Path(syncnet) if syncnet is not None else _find(wd, SYNCNET_FILE)
    if official is not None:
        ev.official_syncnet = load_official_syncnet(_file(official, "SyncNet")).to(device)
        ev.sources["syncnet_official"] = str(official)
    else:
        ev.skipped["sync_c_official"] = f"no {SYNCNET_FILE} given (--syncnet or --weights-dir)"
    if ev.lipsync is None and ev.official_syncnet is None:
        ev.skipped["sync_c"] = f"no SyncNet: neither {SYNCNET_FILE} nor an own syncnet/ in the evaluators"
    own_frames = OwnFeatures(p) if (p := own_dir("features")) is not None else None
    if own_frames is not None:
        ev.sources["features"] = str(p)
    inc = Path(inception) if inception is not None else _find(wd, INCEPTION_GLOB)
    if inc is not None:
        ev.frames, ev.frames_own = InceptionFeatures(_file(inc, "Inception")), own_frames
        ev.sources["inception"] = str(inc)
    else:
        ev.frames = own_frames
        ev.skipped["fid"] = "no pt_inception-2015-12-05-*.pth given (--inception or --weights-dir)"
    if ev.frames is None:
        ev.skipped["fd"] = "no frame features: neither Inception weights nor an own features/ in the evaluators"
    if i3d is not None:
        ev.video = I3DFeatures(_file(i3d, "I3D"))
        ev.sources["i3d"] = str(i3d)
    else:
        found = _find(wd, I3D_FILE)
        ev.skipped["fvd_i3d"] = (f"{found} not loaded: TorchScript runs code from its file, so it is only "
                                 "taken from --i3d" if found else f"no {I3D_FILE} given (--i3d)")
        if own_frames is not None:
            ev.video = OwnVideoFeatures(own_frames)
        else:
            ev.skipped["fvd"] = "no clip features: neither I3D weights nor an own features/ in the evaluators"
    arc = Path(arcface) if arcface is not None else _find(wd, ARCFACE_GLOB)
    embedders, skipped = resolve_identity_embedders(own_dir=own_dir("identity"), arcface=arc, dlib=dlib,
                                                    required=("arcface-onnx",) if arcface is not None else ())
    ev.identity = list(embedders)
    for name, reason in skipped:
        ev.skipped[f"id_sim_{name}"] = reason
    if not ev.identity:
        ev.skipped["id_sim"] = "no identity encoder: neither an own identity/ in the evaluators nor ArcFace/dlib"
    return ev


# ------------------------------------------------------------------------------------ contact sheets

SHEET_CLIPS = 4     # clips shown in contact_sheet.png (generated row over ground-truth row)
SHEET_FRAMES = 8    # frames per row, spread over the whole video


def spread_frames(video: np.ndarray, n: int = SHEET_FRAMES) -> np.ndarray:
    """`n` frames evenly spread over a video [T, H, W, 3], first and last included (all of them if T <= n)."""
    video = np.asarray(video)
    if video.ndim != 4 or len(video) == 0:
        raise LipstepError(f"spread_frames: expected a video [T, H, W, 3], got shape {video.shape}")
    return video[np.unique(np.linspace(0, len(video) - 1, min(n, len(video))).round().astype(int))]


def contact_sheet(videos, frames: int = SHEET_FRAMES, *, group: int = 1, gap: int = 2) -> np.ndarray:
    """A grid image: one row per video of `frames` frames spread over it (shorter rows padded white on the
    right); a white line of `gap` pixels after every `group` rows. uint8 [H, W, 3]."""
    rows = [np.concatenate(list(spread_frames(v, frames)), axis=1) for v in videos]
    if not rows:
        raise LipstepError("contact_sheet: no videos")
    width = max(r.shape[1] for r in rows)
    out = []
    for i, r in enumerate(rows):
        out.append(np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255))
        if gap and (i + 1) % group == 0 and i + 1 < len(rows):
            out.append(np.full((gap, width, 3), 255, np.uint8))
    return np.concatenate(out, axis=0).astype(np.uint8)


def write_contact_sheet(path: Path, videos, frames: int = SHEET_FRAMES, *, group: int = 1) -> Path:
    """`contact_sheet` written as a PNG."""
    return write_image(path, contact_sheet(videos, frames, group=group))


# ----------------------------------------------------------------------------------------- per clip


def _clip_data(root: Path, row: dict, seconds: float, fps: float, sr: int):
    data = open_shard(root / row["shard"], ("frames", "audio", "mouth"))
    if "frames" not in data or "audio" not in data:
        raise DataError(f"{root / row['shard']} lacks frames or audio")
    frames, wav = np.asarray(data["frames"]), np.asarray(data["audio"], np.float32)
    n = len(frames) if seconds <= 0 else min(len(frames), round(seconds * fps))
    n = min(n, int(len(wav) * fps / sr))
    if n < 6:
        raise DataError(f"{root / row['shard']}: {n} frames with audio; the evaluation needs at least 6")
    mouth = np.asarray(data["mouth"][:n, 0], np.float64) if "mouth" in data else None
    return frames[:n], wav[:round(n * sr / fps)], mouth


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _side_by_side(path: Path, gt: np.ndarray, gen: np.ndarray, wav: np.ndarray, fps: float, sr: int) -> None:
    write_video(path, np.concatenate([gt, gen], axis=2), fps, audio=wav, sample_rate=sr)


def split_rows(prepared: str | os.PathLike, out: str | os.PathLike, split: str) -> tuple[Path, Path, list[dict]]:
    """(prepared dir, output dir, manifest rows of `split` that have frames); one-line errors otherwise."""
    root, out = Path(prepared), Path(out)
    if out.exists() and not out.is_dir():
        raise LipstepError(f"{out} exists and is not a directory")
    rows = [r for r in read_manifest(root) if r.get("split") == split and int(r.get("frames", 0)) > 0]
    if not rows:
        raise DataError(f"{root}: no clips in split '{split}'")
    return root, out, rows


def load_for_eval(model, root: Path, rows: list[dict], evaluators, device: str | None, runtime: str = "torch"):
    """(evaluators, pipeline) for an evaluation of `rows`; the frames must be the model's size."""
    ev = evaluators if evaluators is not None else load_evaluators(device=device or "cpu")
    pipe = AvatarPipeline.from_pretrained(model, device=device or "cpu", runtime=runtime)
    size = pipe.info.image_size
    if any(int(r.get("size", size)) != size for r in rows):
        raise DataError(f"{root}: frames are {rows[0].get('size')} px but the model generates "
                        f"{size} px; prepare the data at the model's size")
    return ev, pipe


def evaluate_model(model: str | os.PathLike, prepared: str | os.PathLike, out: str | os.PathLike,
                   cfg: EvalConfig | None = None, evaluators: Evaluators | None = None, *,
                   device: str | None = None, progress: bool = True) -> dict:
    """Generate ``cfg.split`` of `prepared` with `model`, score it, write OUT/metrics.json + metrics.md.

    Returns the metrics dict (what metrics.json holds). With ``cfg.long`` > 0 this is the long run
    (`lipstep.eval.longrun.evaluate_long`).
    """
    from tqdm.auto import tqdm

    cfg = cfg or EvalConfig()
    cfg.validate()
    if cfg.long:
        raise LipstepError("cfg.long > 0 is the long-run mode: call lipstep.eval.longrun.evaluate_long")
    started = time.perf_counter()
    root, out, rows = split_rows(prepared, out, cfg.split)
    rows = rows[:cfg.max_clips] if cfg.max_clips else rows
    for row in rows:  # a damaged shard before the models load and the bar starts
        check_shard(root / row["shard"])
    ev, pipe = load_for_eval(model, root, rows, evaluators, device, cfg.runtime)
    info = pipe.info
    fps, sr = info.fps, info.sample_rate
    per_clip, gen_all, gt_all, gen_clips, gt_clips = [], [], [], [], []
    if cfg.save_videos:
        (out / "videos").mkdir(parents=True, exist_ok=True)
    gen_seconds, nfe_total = 0.0, 0
    for i, row in enumerate(tqdm(rows, desc=f"eval {cfg.split}", unit="clip", disable=not progress)):
        gt, wav, truth = _clip_data(root, row, cfg.seconds, fps, sr)
        drive = wav
        if cfg.other_audio:  # the next clip's audio, cut or zero-padded to this clip's length
            other = _clip_data(root, rows[(i + 1) % len(rows)], 0.0, fps, sr)[1][:len(wav)]
            drive = np.pad(other, (0, len(wav) - len(other)))
        if cfg.audio_shift:
            drive = np.roll(drive, round(cfg.audio_shift * sr))
        t0 = time.perf_counter()
        res = pipe(gt[0], drive, steps=cfg.steps, cfg_audio=cfg.cfg_audio, cfg_ref=cfg.cfg_ref, seed=cfg.seed)
        gen_seconds += time.perf_counter() - t0
        nfe_total += res.nfe
        n = min(len(res.frames), len(gt))
        gen, gt = res.frames[:n], gt[:n]
        clip = {"clip": clip_id_of(row), "frames": n, "nfe": res.nfe,
                "seconds": round(time.perf_counter() - t0, 2)}
        if ev.mouth is not None and truth is not None:
            clip["mouth_err"], clip["mouth_corr"] = mouth_scores(ev.mouth.openness(gen), truth[:n])
            clip["mouth_err_gt"], clip["mouth_corr_gt"] = mouth_scores(ev.mouth.openness(gt), truth[:n])
        for key, net, score in (("", ev.official_syncnet, score_official), ("_lipstep", ev.lipsync, score_lipsync)):
            if net is None:
                continue
            for what, frames in (("", gen), ("_gt", gt)):
                s = score(net, frames, wav, cfg.vshift)
                clip[f"sync_c{key}{what}"], clip[f"sync_d{key}{what}"] = s.sync_c, s.sync_d
                clip[f"sync_offset{key}{what}"] = s.offset
        for emb in ev.identity:
            suffix = "" if emb is ev.identity[0] else f"_{_short(emb.name)}"
            clip[f"id_sim{suffix}"] = identity_similarity(emb, gt[0], gen)
            clip[f"id_sim{suffix}_gt"] = identity_similarity(emb, gt[0], gt)
            if not suffix:
                per_s = identity_per_second(emb, gt[0], gen, fps)
                clip["drift_id"] = float(per_s[0] - per_s[-1]) if len(per_s) > 1 else 0.0
        for what, frames in (("", gen), ("_gt", gt)):
            f = flicker(frames)
            clip[f"flicker{what}"], clip[f"flicker_second_diff{what}"] = f.mean_abs_diff, f.second_diff
            clip[f"warp_err{what}"] = warping_error(frames)
        clip["drift_colour"] = drift(gen, fps).max_colour_shift
        for what, frames in (("", gen), ("_gt", gt)):   # against the reference portrait, mouth left out
            clip[f"id_psnr{what}"], clip[f"id_ssim{what}"] = identity_psnr(frames, gt[0]), identity_ssim(frames, gt[0])
            clip[f"colour_shift{what}"] = colour_shift(frames, gt[0])
        recon = reconstruct(pipe.codec, gt)
        clip["psnr_gt"], clip["ssim_gt"] = psnr(gen, gt), ssim(gen, gt)
        clip["psnr_codec"], clip["ssim_codec"] = psnr(gen, recon), ssim(gen, recon)
        clip["psnr_codec_gt"] = psnr(recon, gt)
        per_clip.append(clip)
        gen_all.append(gen)
        gt_all.append(gt)
        if n >= cfg.clip_length:  # half-overlapping clips: twice the samples for the clip statistics
            gen_clips.append(clips_from_video(gen, cfg.clip_length, stride=max(1, cfg.clip_length // 2)))
            gt_clips.append(clips_from_video(gt, cfg.clip_length, stride=max(1, cfg.clip_length // 2)))
        if i < cfg.save_videos:
            # a plain file name: read_manifest refuses path-like ids
            _side_by_side(out / "videos" / f"{clip_id_of(row)}.mp4", gt, gen, wav, fps, sr)

    metrics: dict = {}
    keys = [k for k in per_clip[0] if k not in ("clip", "frames", "nfe", "seconds")]
    for k in keys:
        metrics[k] = round(_mean(c.get(k) for c in per_clip), 5)
    for k in [k for k in keys if k.startswith("sync_offset")]:
        metrics[k.replace("sync_offset", "sync_offset_within_1")] = round(
            float(np.mean([abs(c[k]) <= 1 for c in per_clip])), 4)
    extractors: dict[str, str] = {}
    if ev.mouth is not None:
        extractors["mouth_err"] = ev.mouth.name
    if ev.official_syncnet is not None:
        extractors["sync_c"] = "syncnet_v2 (official S)"
        if ev.lipsync is not None:
            extractors["sync_c_lipstep"] = "lipstep-syncnet"
    elif ev.lipsync is not None:
        extractors["sync_c"] = "lipstep-syncnet"
        for k in [k for k in list(metrics) if "_lipstep" in k]:   # own SyncNet is the primary: plain keys
            metrics[k.replace("_lipstep", "")] = metrics.pop(k)
    if ev.identity:
        extractors["id_sim"] = ev.identity[0].name
        for emb in ev.identity[1:]:
            extractors[f"id_sim_{_short(emb.name)}"] = emb.name
    skipped = dict(ev.skipped)
    gen_frames, gt_frames = np.concatenate(gen_all), np.concatenate(gt_all)
    for key, feats in (("fd", ev.frames), ("fd_lipstep", ev.frames_own)):
        if feats is None:
            continue
        a, b = feats(gen_frames), feats(gt_frames)
        metrics[key] = round(fd_from_features(a, b), 5)
        k = kid(a, b, subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size, seed=cfg.seed)
        kk = key.replace("fd", "kid")
        metrics[kk], metrics[f"{kk}_std"] = round(k.mean, 6), round(k.std, 6)
        extractors[key] = extractors[kk] = feats.name
    metrics["fd_frames"] = len(gen_frames)
    n_clips = sum(len(c) for c in gen_clips)
    if ev.video is not None and n_clips >= 2:
        a, b = ev.video(np.concatenate(gen_clips)), ev.video(np.concatenate(gt_clips))
        metrics["fvd"] = round(fd_from_features(a, b), 5)
        metrics["fvd_clips"] = len(a)
        extractors["fvd"] = ev.video.name
    elif ev.video is not None:
        skipped["fvd"] = f"{n_clips} clips of {cfg.clip_length} frames; FVD needs at least 2"
    metrics["nfe"] = int(info.nfe_per_chunk(cfg.steps, cfg.cfg_audio, cfg.cfg_ref)) \
        if hasattr(info, "nfe_per_chunk") else per_clip[0]["nfe"]
    metrics["nfe_clip"] = round(nfe_total / len(per_clip), 1)
    metrics["clips"] = len(per_clip)
    metrics["frames"] = int(sum(c["frames"] for c in per_clip))
    metrics["gen_seconds"] = round(gen_seconds, 2)
    metrics["gen_fps"] = round(metrics["frames"] / max(gen_seconds, 1e-9), 3)
    result = {**metrics, "extractors": extractors, "skipped": skipped, "model": str(model),
              "model_kind": info.kind, "prepared": str(root.resolve()), "mouth_box": list(MOUTH_BOX),
              "eval": to_dict(cfg), "sources": ev.sources, "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "per_clip.jsonl", [{k: (round(v, 5) if isinstance(v, float) else v)
                                                  for k, v in c.items()} for c in per_clip])
    write_contact_sheet(out / "contact_sheet.png", [v for pair in zip(gen_all[:SHEET_CLIPS], gt_all[:SHEET_CLIPS])
                                                    for v in pair], group=2)
    write_json_atomic(out / "metrics.json", result)
    write_text_atomic(out / "metrics.md", metrics_markdown(result))
    return result


def _short(name: str) -> str:
    return name.split(":")[0].split("-")[0].lower()


_ORDER = ("mouth_err", "mouth_corr", "sync_c", "sync_d", "sync_offset", "fd", "kid", "fvd", "id_sim", "id_psnr",
          "id_ssim", "colour_shift", "flicker", "warp_err", "psnr_gt", "ssim_gt", "psnr_codec", "ssim_codec",
          "long_id_psnr", "long_id_ssim", "long_colour_shift", "long_id_sim", "nfe")
BLOCK_KEYS = ("id_psnr", "id_ssim", "colour_shift", "id_sim")   # long run: the metrics of each block


def metrics_markdown(result: dict) -> str:
    """A markdown table: metric, generated value, ground-truth ceiling, extractor; then the skipped list."""
    ex = result.get("extractors", {})
    what = (f"long run of {result.get('identities')} identities x {_fmt(result.get('long_seconds'))} s"
            if "long_blocks" in result else f"{result.get('clips')} clips, {result.get('frames')} frames")
    lines = [f"# lipstep eval: {result.get('model')} on {result.get('eval', {}).get('split')} ({what})", "",
             "| metric | generated | ground truth | extractor |", "|---|---|---|---|"]
    # "<metric>_gt" is the ground-truth ceiling of <metric> when <metric> exists (mouth_err_gt); metrics
    # whose own name ends in _gt (psnr_gt: generated against ground truth) are rows of their own
    numeric = {k: v for k, v in result.items()
               if isinstance(v, int | float) and not (k.endswith("_gt") and k[:-3] in result)}
    ordered = sorted(numeric, key=lambda k: (next((i for i, p in enumerate(_ORDER) if k.startswith(p)), 99), k))
    for k in ordered:
        gt = result.get(f"{k}_gt")
        lines.append(f"| {k} | {_fmt(numeric[k])} | {_fmt(gt) if gt is not None else ''} | {ex.get(k, '')} |")
    if result.get("long_blocks"):
        keys = [k for k in BLOCK_KEYS if k in result["long_blocks"][0]]
        lines += ["", ("Per block, against the reference portrait (mean over identities; "
                  "`long_*_delta` = last block - first):"), "",
                  "| block | seconds | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        lines += [f"| {b['block']} | {_fmt(b['start_s'])}-{_fmt(b['end_s'])} | "
                  + " | ".join(_fmt(b[k]) for k in keys) + " |" for b in result["long_blocks"]]
    if result.get("skipped"):
        lines += ["", "Skipped:", ""] + [f"- `{k}`: {v}" for k, v in sorted(result["skipped"].items())]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


__all__ = ["EvalConfig", "Evaluators", "contact_sheet", "default_evaluators_dir", "evaluate_model",
           "load_evaluators", "metrics_markdown", "spread_frames", "write_contact_sheet"]
