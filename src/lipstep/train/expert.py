"""A frozen mouth-state expert in latent space: the teacher's lip-sync loss.

A denoising loss alone spends little signal on the mouth: it is a few latent pixels of a mostly
static frame, and on a CPU budget the teacher learns the reference face long before it learns how
far the speech opens the mouth (teacher v3 of ``experiments/teacher``: right timing, compressed
amplitude). Lip-sync work adds an expert loss on the predicted clean frames for that reason: Wav2Lip
and LatentSync use a frozen SyncNet. Our data carries the mouth state itself (openness, width,
roundness per frame, ``mouth`` in the shards of the synthetic world), so the expert here is a
regressor of that state:

1. `train_mouth_expert` fits a small CNN on the cached codec latents of the *training* split
   (``latent [C, h, w] -> mouth [3]``), with Gaussian noise of a random level added to half of
   the inputs so that it also reads the smooth x0 predictions of high noise levels;
2. the teacher (`TeacherMethod`, ``loss.mouth_weight``) then adds
   ``mouth_weight · mean((expert(x0_hat) - mouth)^2)`` over the frames of every sample whose audio
   was not dropped, with x0_hat the net's prediction converted to clean latents. The expert is
   frozen; its gradient reaches only the denoiser.

The expert is a different network from everything the evaluation harness uses (`lipstep.eval`: the
pixel-space mouth reader behind MouthErr and the pixel-space SyncNet behind Sync-C). It is fitted on
the training split only; the validation split serves only to report its fit. It needs mouth labels; on real video without them, leave
``loss.mouth_weight`` at 0.

Weights are written as ``OUT/mouth_expert/model.safetensors`` with ``expert.json`` (config and
held-out fit); a finished expert is reused on ``--resume``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipstep.config import check, to_dict
from lipstep.errors import DataError, LipstepError
from lipstep.fsutil import write_json_atomic

WEIGHTS = "model.safetensors"
INFO = "expert.json"


@dataclass
class MouthExpertConfig:
    width: int = 32             # channels of the first conv stage (doubled at each downsampling)
    steps: int = 600            # optimisation steps
    batch_size: int = 128       # latent frames per step
    lr: float = 2e-3            # AdamW, cosine decay to 5 %
    noise_prob: float = 0.5     # share of inputs with Gaussian noise added
    noise_max: float = 0.5      # noise std ~ U(0, noise_max) in latent units
    min_corr: float = 0.5       # refuse an expert whose held-out openness correlation is below this
    seed: int = 0

    def validate(self) -> None:
        check(self.width > 0 and self.steps > 0 and self.batch_size > 0 and self.lr > 0,
              "expert width, steps, batch_size and lr must be > 0")
        check(0 <= self.noise_prob <= 1 and self.noise_max >= 0, "expert noise_prob in [0, 1], noise_max >= 0")


def adamw_cosine(params, lr: float, steps: int, weight_decay: float = 1e-4):
    """(AdamW, a per-step scheduler decaying its lr along a cosine to 5 % over ``steps``) for the small
    regressors `train teacher` fits before the denoiser (this expert, the mouth-state head)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(s / steps, 1.0))))
    return opt, sched


class MouthExpert(nn.Module):
    """Latents [N, C, h, w] -> mouth state [N, 3] in (0, 1): three conv stages, global pooling, a linear."""

    def __init__(self, channels: int, width: int = 32, outputs: int = 3):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.SiLU(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.SiLU())
        self.head = nn.Linear(4 * w, outputs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(z)
        # mean and max pooling: the mouth is a small region, so max keeps its response from being diluted
        return torch.sigmoid(self.head(h.mean((2, 3)) + h.amax((2, 3))))


def _split_latents(prepared: Path, cache: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from lipstep.codecs.cache import load_latents
    from lipstep.data.dataset import open_shard, read_manifest

    zs, ys = [], []
    for row in (r for r in read_manifest(prepared) if r["split"] == split):
        mouth = open_shard(prepared / row["shard"], keys=("mouth",)).get("mouth")
        if mouth is None:
            raise DataError(f"{prepared / row['shard']}: no mouth labels; loss.mouth_weight needs data with a "
                            "mouth track (the synthetic world); set loss.mouth_weight=0 for other data")
        z = load_latents(cache, str(row["id"]))
        n = min(len(z), len(mouth))
        zs.append(np.asarray(z[:n], np.float32))
        ys.append(np.asarray(mouth[:n], np.float32))
    if not zs:
        return np.zeros((0,), np.float32), np.zeros((0, 3), np.float32)
    return np.concatenate(zs), np.concatenate(ys)


def _fit_scores(net: MouthExpert, z: np.ndarray, y: np.ndarray) -> dict:
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(z[i:i + 512])) for i in range(0, len(z), 512)]).numpy()
    from lipstep.eval.mouth import pearson

    err = np.abs(pred - y).mean(0)
    corr = pearson(pred[:, 0], y[:, 0])
    return {"frames": len(z), "openness_mae": round(float(err[0]), 4),
            "mae_all": [round(float(e), 4) for e in err], "openness_corr": round(corr, 4)}


def train_mouth_expert(prepared: str | Path, cache: str | Path, out: str | Path,
                       cfg: MouthExpertConfig | None = None, *, progress: bool = True) -> MouthExpert:
    """Fit the expert on the train split's cached latents; write ``out``; return it frozen, in eval mode.

    A finished expert in ``out`` (same config) is loaded instead of refitted, so a resumed teacher
    run gets the identical expert.
    """
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from lipstep.fsutil import atomic_path

    cfg = cfg or MouthExpertConfig()
    cfg.validate()
    prepared, cache, out = Path(prepared), Path(cache), Path(out)
    z, y = _split_latents(prepared, cache, "train")
    if len(z) == 0:
        raise DataError(f"{prepared}: no train clips to fit the mouth expert on")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = MouthExpert(z.shape[1], cfg.width)
    info_path = out / INFO
    if info_path.is_file() and (out / WEIGHTS).is_file():
        info = json.loads(info_path.read_text())
        if info.get("config") == to_dict(cfg) and info.get("channels") == int(z.shape[1]):
            net.load_state_dict(load_file(str(out / WEIGHTS)))
            return net.eval().requires_grad_(False)
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    opt, sched = adamw_cosine(net.parameters(), cfg.lr, cfg.steps)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    bar = tqdm(range(cfg.steps), desc="mouth expert", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        idx = torch.randint(len(zt), (cfg.batch_size,), generator=gen)
        x = zt[idx]
        noisy = torch.rand(len(x), 1, 1, 1, generator=gen) < cfg.noise_prob
        sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * cfg.noise_max
        x = x + torch.where(noisy, sigma, torch.zeros_like(sigma)) * torch.randn(x.shape, generator=gen)
        loss = F.mse_loss(net(x), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{loss.item():.4f}", refresh=False)
    bar.close()
    net.eval()
    scores = {"train": _fit_scores(net, z[::4], y[::4])}
    zv, yv = _split_latents(prepared, cache, "val")
    if len(zv):
        scores["val"] = _fit_scores(net, zv, yv)
    held = scores.get("val", scores["train"])
    print(f"mouth expert: openness MAE {held['openness_mae']:.4f}, r {held['openness_corr']:.3f} "
          f"({'val' if 'val' in scores else 'train'}, {held['frames']} frames)", flush=True)
    if held["openness_corr"] < cfg.min_corr:
        raise LipstepError(f"the mouth expert did not learn the mouth state (openness r {held['openness_corr']} < "
                           f"expert.min_corr {cfg.min_corr}); check the data's mouth labels or set loss.mouth_weight=0")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    write_json_atomic(info_path, {"config": to_dict(cfg), "channels": int(z.shape[1]), "scores": scores,
                                  "seconds": round(time.perf_counter() - started, 1)})
    return net.requires_grad_(False)


__all__ = ["MouthExpert", "MouthExpertConfig", "adamw_cosine", "train_mouth_expert"]
