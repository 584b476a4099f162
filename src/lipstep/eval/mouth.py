"""Mouth opening read from pixels, and the teacher's lip-sync check against labelled mouth state.

`PixelMouthProbe` is a deliberately simple, transparent reader for face-centred crops of the
synthetic world: in the lower-middle region of the crop it measures how much darker than the
surrounding skin each pixel is (the mouth interior is the darkest thing on the face), summarises that
as two numbers (dark area, tallest dark column) and maps them to the labelled openness with a
least-squares line fitted on ground-truth frames. It is calibrated on frames that went through the
same codec as the generated ones (encode -> decode), so codec blur is part of the calibration, and on
a different split than the one it scores. The evaluation issue's trained CNN mouth reader (MouthErr)
supersedes it; this probe is the "equivalent measurement against the labelled mouth state" the
teacher is accepted with, and it reports its own calibration error and correlation.

`lipsync_check` generates held-out clips twice with the same reference and seed: once driven by the
clip's own audio, once by the audio of a different clip, and scores both against the clip's own
labelled openness. A teacher whose mouths follow the speech has a much lower error with the right
audio (and its wrong-audio mouths correlate with the other clip's labels instead).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipstep.data.dataset import open_shard, read_manifest
from lipstep.errors import DataError
from lipstep.fit import pearson

REGION = (0.55, 0.75, 0.33, 0.67)  # rows (top, bottom) and columns (left, right) as fractions of the crop
INTERIOR_LUMA = 0.299 * 38 + 0.587 * 8 + 0.114 * 12  # the world's mouth interior colour (render.INTERIOR)


def darkness_features(frames: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] -> float [N, 2]: (dark area, tallest dark column), both in units of the crop side."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"darkness_features expects uint8 frames [N, S, S, 3], got {frames.shape} {frames.dtype}")
    s = frames.shape[1]
    r0, r1, c0, c1 = (round(f * s) for f in REGION)
    reg = frames[:, r0:r1, c0:c1].astype(np.float32)
    luma = reg @ np.array([0.299, 0.587, 0.114], np.float32)             # [N, h, w]
    skin = np.median(luma.reshape(len(luma), -1), axis=1)[:, None, None]  # the region is mostly skin
    dark = np.clip((skin - luma) / np.maximum(skin - INTERIOR_LUMA, 1.0), 0.0, 1.0)
    area = dark.sum(axis=(1, 2)) / s
    column = np.sort(dark.sum(axis=1), axis=1)[:, ::-1][:, :3].mean(axis=1) / s
    return np.stack([area, column], axis=1)


@dataclass
class PixelMouthProbe:
    """Least-squares map from `darkness_features` to labelled openness."""

    coef: np.ndarray
    calib_mae: float = float("nan")
    calib_corr: float = float("nan")
    name: str = "pixel-darkness probe"

    @classmethod
    def fit(cls, frames: np.ndarray, openness: np.ndarray) -> PixelMouthProbe:
        x = np.concatenate([darkness_features(frames), np.ones((len(frames), 1))], axis=1)
        y = np.asarray(openness, np.float64).reshape(-1)
        if len(y) != len(x) or len(y) < 3:
            raise DataError(f"probe calibration needs >= 3 frames with labels, got {len(x)} frames, {len(y)} labels")
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        probe = cls(coef)
        pred = probe.predict(frames)
        probe.calib_mae = float(np.abs(pred - y).mean())
        probe.calib_corr = pearson(pred, y)
        return probe

    def predict(self, frames: np.ndarray) -> np.ndarray:
        x = np.concatenate([darkness_features(frames), np.ones((len(frames), 1))], axis=1)
        return np.clip(x @ self.coef, 0.0, None)


def _clips(prepared: Path, split: str) -> list[dict]:
    rows = [r for r in read_manifest(prepared) if r["split"] == split]
    if not rows:
        raise DataError(f"{prepared}: no clips in split '{split}'")
    return rows


def _labelled(prepared: Path, row: dict, n: int | None = None):
    data = open_shard(prepared / row["shard"], ("frames", "audio", "mouth"))
    if "mouth" not in data:
        raise DataError(f"{prepared / row['shard']} has no mouth labels (synthetic world data is needed)")
    n = len(data["frames"]) if n is None else min(n, len(data["frames"]))
    return np.asarray(data["frames"][:n]), np.asarray(data["audio"]), np.asarray(data["mouth"][:n, 0])


def calibrate_probe(pipe, prepared: str | Path, split: str = "val", max_clips: int = 8) -> PixelMouthProbe:
    """Fit the probe on codec reconstructions of ground-truth frames of `split`."""
    prepared = Path(prepared)
    frames, labels = [], []
    for row in _clips(prepared, split)[:max_clips]:
        f, _, o = _labelled(prepared, row)
        x = torch.from_numpy(f.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
        with torch.no_grad():
            z = pipe.codec.encode(x.to(pipe.device))
        frames.append(pipe.decode(z))
        labels.append(o)
    return PixelMouthProbe.fit(np.concatenate(frames), np.concatenate(labels))


def lipsync_check(pipe, prepared: str | Path, *, split: str = "test", calib_split: str = "val",
                  max_clips: int = 8, seconds: float = 2.0, steps: int | None = None,
                  cfg_audio: float | None = None, cfg_ref: float | None = None, seed: int = 0,
                  progress: bool = True, reader=None) -> dict:
    """Right audio vs a different clip's audio, scored against the clip's own labelled openness.

    ``reader``: a trained `MouthReader` (MouthErr of the evaluation harness); None = the pixel probe,
    calibrated on codec reconstructions of ``calib_split``.
    """
    from tqdm.auto import tqdm

    prepared = Path(prepared)
    if reader is None:
        probe = calibrate_probe(pipe, prepared, calib_split)
        read, name, calib = probe.predict, probe.name, (calib_split, probe.calib_mae, probe.calib_corr)
    else:  # the trained reader reports its own held-out error (on codec reconstructions when it has them)
        split_info = next(iter(reader.train_info.get("heldout", {}).items()), ("", {}))
        read, name = reader.openness, reader.name
        calib = (split_info[0], split_info[1].get("mae_codec", split_info[1].get("mae", float("nan"))),
                 split_info[1].get("corr_codec", split_info[1].get("corr", float("nan"))))
    rows = _clips(prepared, split)[:max_clips]
    if len(rows) < 2:
        raise DataError(f"lipsync_check needs at least 2 clips in split '{split}' (one lends its audio)")
    n = round(seconds * pipe.info.fps)
    T = pipe.info.frames
    padded = -(-n // T) * T
    right_err, wrong_err, right_corr, wrong_corr, wrong_follow, nfe = [], [], [], [], [], 0
    t0 = time.perf_counter()
    for i, row in enumerate(tqdm(rows, desc="lipsync", unit="clip", disable=not progress)):
        frames, audio, truth = _labelled(prepared, row, n)
        other = rows[(i + 1) % len(rows)]
        _, other_audio, other_truth = _labelled(prepared, other, n)
        m = min(len(truth), len(other_truth))
        ref = pipe.encode_image(frames[0])
        out = {}
        for key, wav in (("right", audio), ("wrong", other_audio)):
            feats = pipe.audio_encoder.encode(wav, padded)
            lat, k = pipe.generate_latents(ref, feats, steps=steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref,
                                           seed=seed, n_frames=m)
            nfe = k
            out[key] = read(pipe.decode(lat))
        right_err.append(float(np.abs(out["right"] - truth[:m]).mean()))
        wrong_err.append(float(np.abs(out["wrong"] - truth[:m]).mean()))
        right_corr.append(pearson(out["right"], truth[:m]))
        wrong_corr.append(pearson(out["wrong"], truth[:m]))
        wrong_follow.append(pearson(out["wrong"], other_truth[:m]))
    return {
        "probe": name, "probe_calib_split": calib[0], "probe_calib_mae": round(float(calib[1]), 4),
        "probe_calib_corr": round(float(calib[2]), 4), "split": split, "clips": len(rows), "frames_per_clip": n,
        "nfe_per_clip": nfe, "mouth_err_right": round(float(np.mean(right_err)), 4),
        "mouth_err_wrong": round(float(np.mean(wrong_err)), 4),
        "mouth_corr_right": round(float(np.mean(right_corr)), 4),
        "mouth_corr_wrong": round(float(np.mean(wrong_corr)), 4),
        "wrong_audio_corr_with_its_own_labels": round(float(np.mean(wrong_follow)), 4),
        "ratio_right_over_wrong": round(float(np.mean(right_err) / max(np.mean(wrong_err), 1e-9)), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }


__all__ = ["PixelMouthProbe", "calibrate_probe", "darkness_features", "lipsync_check"]
