"""Fitting the denoiser's audio -> mouth-state head before the denoiser trains (``mouth_state=true``).

Five teacher recipes in ``experiments/teacher`` learnt *when* the mouth moves but not *how far*: their
generated openness scatters by 0.14-0.2 around the labelled one, and the scatter follows the sampling
noise, while a small regressor reads the openness from the same 160 ms audio window to 0.04. The
denoiser has to discover the mouth state inside its 16 × 80 log-mel window through cross-attention,
from a denoising loss in which the mouth is a few latent pixels. ``DiTConfig.mouth_state`` splits that
into two problems, as two-stage talking-head systems do (audio -> mouth parameters -> image):

1. `fit_mouth_head` trains the net's `MouthStateHead` alone, on the training split's per-frame audio
   windows against their mouth labels (openness, width, roundness; L1 loss, AdamW with cosine decay),
   reports its held-out error, and freezes it;
2. the denoiser then trains with the head's reading of every frame as a clean, low-dimensional
   condition (`AvatarDiT.embed_mouth_state`): rendering a given mouth state is a simpler job than
   discovering it.

The head is part of the denoiser's weights, so generation, guidance (dropping the audio drops the
state too) and distilled students need nothing else; at generation time it reads whatever speech
drives the avatar. It needs mouth labels in the training data (the synthetic world); `train teacher`
turns it on by default, so pass ``mouth_state=false`` for real video without them. The fit is deterministic (``seed``) and took 17 s at two CPU
threads for the default world (``experiments/teacher``); on ``--resume`` the checkpoint restores the
fitted head instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lipstep.config import check, to_dict
from lipstep.data.dataset import open_shard, read_manifest, split_track
from lipstep.errors import DataError, LipstepError
from lipstep.fit import fit, pearson
from lipstep.fsutil import write_json_atomic

INFO = "mouth_head.json"


@dataclass
class MouthHeadConfig:
    steps: int = 1500           # optimisation steps
    batch_size: int = 256       # audio windows (video frames) per step
    lr: float = 2e-3            # AdamW, cosine decay towards 5 % (lipstep.fit)
    weight_decay: float = 1e-4
    min_corr: float = 0.5       # refuse a head whose held-out openness correlation is below this
    seed: int = 0

    def validate(self) -> None:
        check(self.steps > 0 and self.batch_size > 0 and self.lr > 0 and self.weight_decay >= 0,
              "mouth_head steps, batch_size and lr must be > 0 and weight_decay >= 0")
        check(-1 <= self.min_corr <= 1, "mouth_head.min_corr must be in [-1, 1]")


def _no_mouth_labels(shard: Path) -> DataError:
    return DataError(f"{shard}: no mouth labels. mouth_state (on by default in train teacher) needs data with a "
                     "mouth track (the synthetic world); pass mouth_state=false to train on unlabelled (real) data")


def check_mouth_labels(prepared: str | Path, split: str = "train") -> None:
    """Raise the DataError of `split_windows` now if a clip of ``split`` has no mouth labels (a cheap check,
    made before any latent is encoded)."""
    for shard, mouth in split_track(prepared, "mouth", split):
        if mouth is None:
            raise _no_mouth_labels(shard)


def split_windows(prepared: str | Path, split: str, encode=None) -> tuple[np.ndarray, np.ndarray]:
    """Every labelled frame's audio window [N, K, D] and mouth state [N, 3] of one split.

    ``encode(shard) -> [T, K, D]`` builds the windows (default: the shards' own log-mel windows).
    """
    prepared = Path(prepared)
    xs, ys = [], []
    for row in (r for r in read_manifest(prepared) if r["split"] == split):
        shard = open_shard(prepared / row["shard"], keys=("mel", "mouth", "visemes"))
        if shard.get("mouth") is None:
            raise _no_mouth_labels(prepared / row["shard"])
        x = np.asarray(encode(shard) if encode else shard["mel"], np.float32)
        y = np.asarray(shard["mouth"], np.float32)
        n = min(len(x), len(y))
        xs.append(x[:n])
        ys.append(y[:n])
    if not xs:
        return np.zeros((0, 1, 1), np.float32), np.zeros((0, 3), np.float32)
    return np.concatenate(xs), np.concatenate(ys)


def _scores(net, x: np.ndarray, y: np.ndarray) -> dict:
    with torch.no_grad():
        pred = torch.cat([net.read_mouth_state(torch.from_numpy(x[i:i + 1024])[None])[0]
                          for i in range(0, len(x), 1024)]).numpy()
    err = np.abs(pred - y).mean(0)
    return {"frames": len(x), "openness_mae": round(float(err[0]), 4),
            "mae_all": [round(float(e), 4) for e in err], "openness_corr": round(pearson(pred[:, 0], y[:, 0]), 4)}


def fit_mouth_head(net, prepared: str | Path, out: str | Path, cfg: MouthHeadConfig | None = None, *,
                   encode=None, progress: bool = True) -> dict:
    """Fit ``net.mouth_head`` on the train split, freeze it, write ``out/mouth_head.json``; returns the scores.

    Only the head's parameters change. Held-out scores are on the val split (else the test split).
    """
    cfg = cfg or MouthHeadConfig()
    cfg.validate()
    if getattr(net, "mouth_head", None) is None:
        raise LipstepError("this denoiser has no mouth-state head (DiTConfig.mouth_state = 0)")
    x, y = split_windows(prepared, "train", encode)
    if len(x) == 0:
        raise DataError(f"{prepared}: no labelled train frames to fit the mouth-state head on")
    outputs = net.cfg.mouth_state
    if y.shape[1] < outputs:
        raise DataError(f"{prepared}: the mouth labels have {y.shape[1]} values per frame, the head needs {outputs}")
    y = y[:, :outputs]
    head = net.mouth_head.train().requires_grad_(True)
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step(_: int) -> torch.Tensor:
        idx = torch.randint(len(xt), (cfg.batch_size,), generator=gen)
        return F.l1_loss(net.read_mouth_state(xt[idx][None])[0], yt[idx])

    # fit leaves no gradients on the head: left on the frozen head, they would enter the denoiser loop's
    # gradient-norm clipping (and differ between a run and its resume, which never fits the head)
    fit(head.parameters(), step, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, schedule="cosine",
        floor=0.05, progress=progress, desc="mouth-state head", hint="lower mouth_head.lr")
    head.eval().requires_grad_(False)
    scores, held_split = {"train": _scores(net, x[::4], y[::4])}, "train"
    for split in ("val", "test"):
        xv, yv = split_windows(prepared, split, encode)
        if len(xv):
            scores[split], held_split = _scores(net, xv, yv[:, :outputs]), split
            break
    held = scores[held_split]
    seconds = round(time.perf_counter() - started, 1)
    print(f"mouth-state head: openness MAE {held['openness_mae']:.4f}, r {held['openness_corr']:.3f} "
          f"({held_split}, {held['frames']} frames; {seconds:.0f} s)", flush=True)
    if held["openness_corr"] < cfg.min_corr:
        raise LipstepError(f"the mouth-state head did not learn the mouth state (openness r {held['openness_corr']} "
                           f"< mouth_head.min_corr {cfg.min_corr}); check the data's mouth labels or set "
                           "mouth_state=false")
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(out) / INFO, {"config": to_dict(cfg), "scores": scores, "seconds": seconds})
    return scores


__all__ = ["MouthHeadConfig", "check_mouth_labels", "fit_mouth_head", "split_windows"]
