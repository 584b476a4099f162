"""Training the mouth reader behind MouthErr (`lipstep.nets.mouthreader.MouthReaderNet`).

On the synthetic world every frame carries its ground-truth mouth state (openness, width, roundness;
`data/visemes.py`). A reader that is accurate on frames like the generated ones needs, and
`train_mouth_reader` gives it:

- the train-split frames of a prepared directory (identities disjoint from val/test);
- with a codec directory, half of the training frames replaced by their codec reconstruction
  (encode -> decode): generated frames are codec decodes, so codec blur and colour shifts are part
  of what the reader has seen;
- augmentation of every frame (colour channel permutations and gains, brightness/contrast, blur,
  noise, a shift of up to 2 px) so that unseen skin/lip colours and small generator artefacts do not
  move its reading;
- a report of its held-out error (mean absolute openness error and Pearson correlation on the val
  split, else the test split; on raw frames and, with a codec, on codec reconstructions) in
  ``train.json``. That error is the floor under every MouthErr it produces.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lipstep.codecs import load_codec
from lipstep.config import check, to_dict
from lipstep.data.dataset import open_shard, read_manifest
from lipstep.errors import DataError
from lipstep.eval.mouthreader import MouthReader, mouth_scores, reconstruct
from lipstep.fit import fit
from lipstep.nets.mouthreader import (
    NAME,
    MouthReaderConfig,
    MouthReaderNet,
    check_mouth_reader_out,
    mouth_reader_input,
    save_mouth_reader,
)


@dataclass
class MouthTrainConfig:
    net: MouthReaderConfig = field(default_factory=MouthReaderConfig)  # image_size comes from the data
    steps: int = 1500               # optimizer steps
    batch: int = 128                # frames per step
    lr: float = 2e-3                # AdamW peak learning rate (warm-up 50 steps, cosine decay to lr / 20)
    weight_decay: float = 1e-4
    codec_fraction: float = 0.5     # share of training frames replaced by their codec reconstruction
    max_codec_frames: int = 4000    # train frames reconstructed by the codec once, up front
    shift: int = 2                  # random translation, pixels (at 64 px; scaled with the crop size)
    blur: float = 1.2               # max Gaussian blur sigma (pixels at 64 px), applied to half the frames
    noise: float = 0.04             # max std of additive Gaussian noise, [-1, 1] units
    jitter: float = 0.12            # brightness/contrast jitter amplitude
    colour: float = 0.5             # share of frames with permuted colour channels and per-channel gains
    weights: tuple[float, float, float] = (1.0, 0.5, 0.5)  # L1 weights of openness, width, roundness
    seed: int = 0

    def validate(self) -> None:
        self.net.validate()
        check(self.steps >= 1 and self.batch >= 2, f"steps must be >= 1 and batch >= 2, got {self.steps}, {self.batch}")
        check(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0")
        check(0.0 <= self.codec_fraction <= 1.0, f"codec_fraction must be in [0, 1], got {self.codec_fraction}")
        check(self.max_codec_frames >= 0 and self.shift >= 0 and self.blur >= 0 and self.noise >= 0
              and self.jitter >= 0, "max_codec_frames, shift, blur, noise and jitter must be >= 0")
        check(0.0 <= self.colour <= 1.0, f"colour must be in [0, 1], got {self.colour}")
        check(len(self.weights) == 3 and min(self.weights) >= 0 and max(self.weights) > 0,
              f"weights must be 3 non-negative numbers, not all 0, got {self.weights}")


@dataclass
class MouthTrainResult:
    out: Path
    losses: list[float]
    heldout: dict                   # {split: {frames, mae, corr[, mae_codec, corr_codec]}}
    parameters: int
    seconds: float


def split_frames(root: Path, rows: list[dict], split: str, limit: int | None = None):
    """All frames and mouth labels of one split: (uint8 [N, S, S, 3], float32 [N, 3]) or None."""
    frames, labels = [], []
    for row in rows:
        if row.get("split") != split or int(row.get("frames", 0)) <= 0:
            continue
        data = open_shard(root / row["shard"], ("frames", "mouth"))
        if "mouth" not in data:
            raise DataError(f"{root / row['shard']} has no mouth labels: the mouth reader needs synthetic-world data")
        f = np.asarray(data["frames"])
        if f.ndim != 4 or f.shape[-1] != 3 or f.shape[1] != f.shape[2] or f.dtype != np.uint8:
            raise DataError(f"{root / row['shard']}: frames are not square uint8 crops [T, S, S, 3]")
        n = min(len(f), len(data["mouth"]))
        frames.append(f[:n])
        labels.append(np.asarray(data["mouth"][:n], np.float32))
    if not frames:
        return None
    frames, labels = np.concatenate(frames), np.concatenate(labels)
    if limit is not None and len(frames) > limit:
        keep = np.linspace(0, len(frames) - 1, limit).round().astype(np.int64)
        frames, labels = frames[keep], labels[keep]
    return frames, labels


def _gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None] / sigmas[:, None].clamp_min(1e-3)) ** 2)
    return k / k.sum(1, keepdim=True)


def _augment(x: torch.Tensor, cfg: MouthTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random colour permutation/gains, shift, per-frame blur, brightness/contrast jitter and noise on
    [B, 3, S, S] in [-1, 1]."""
    b, _, s, _ = x.shape
    scale = s / 64.0
    if cfg.colour > 0:  # unseen identities and codec colour shifts: the reader must not key on colours
        pick = torch.rand(b, generator=gen) < cfg.colour
        perm = torch.stack([torch.randperm(3, generator=gen) for _ in range(b)])          # [B, 3]
        gains = 0.75 + 0.5 * torch.rand(b, 3, 1, 1, generator=gen)
        shuffled = ((torch.gather(x, 1, perm[:, :, None, None].expand_as(x)) + 1) * gains - 1).clamp(-1, 1)
        x = torch.where(pick[:, None, None, None], shuffled, x)
    shift = round(cfg.shift * scale)
    if shift > 0:
        pad = F.pad(x, (shift,) * 4, mode="replicate")
        dy, dx = (torch.randint(0, 2 * shift + 1, (2,), generator=gen).tolist())
        x = pad[:, :, dy:dy + s, dx:dx + s]
    if cfg.blur > 0:
        sig = torch.rand(b, generator=gen) * cfg.blur * scale
        sig = torch.where(torch.rand(b, generator=gen) < 0.5, sig, torch.zeros_like(sig))
        radius = max(1, int(np.ceil(2.5 * cfg.blur * scale)))
        k = _gaussian_kernels(sig, radius)                       # [B, 2r+1]; sigma 0 -> a delta
        xb = x.reshape(1, b * 3, s, s)
        kh = k.repeat_interleave(3, 0)[:, None, None, :]         # [3B, 1, 1, K]
        xb = F.conv2d(F.pad(xb, (radius, radius, 0, 0), mode="replicate"), kh, groups=3 * b)
        xb = F.conv2d(F.pad(xb, (0, 0, radius, radius), mode="replicate"), kh.transpose(2, 3), groups=3 * b)
        x = xb.reshape(b, 3, s, s)
    if cfg.jitter > 0:
        contrast = 1.0 + cfg.jitter * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
        bright = cfg.jitter * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + bright
    if cfg.noise > 0:
        x = x + torch.randn(x.shape, generator=gen) * (torch.rand(b, 1, 1, 1, generator=gen) * cfg.noise)
    return x.clamp(-1, 1)


def _evaluate(reader: MouthReader, frames: np.ndarray, labels: np.ndarray, codec=None) -> dict:
    mae, corr = mouth_scores(reader.openness(frames), labels[:, 0])
    out = {"frames": len(frames), "mae": round(mae, 4), "corr": round(corr, 4)}
    if codec is not None:
        mae, corr = mouth_scores(reader.openness(reconstruct(codec, frames)), labels[:, 0])
        out |= {"mae_codec": round(mae, 4), "corr_codec": round(corr, 4)}
    return out


def train_mouth_reader(prepared_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       cfg: MouthTrainConfig | None = None, *, codec_dir: str | os.PathLike | None = None,
                       progress: bool = True) -> MouthTrainResult:
    """Train the mouth reader on the train split of a prepared synthetic-world directory; save it to `out_dir`.

    Args:
        prepared_dir: output of ``lipstep prepare`` on synthetic-world data (shards with ``mouth``).
        out_dir: directory written atomically: ``config.json``, ``model.safetensors``, ``checksums.json``,
            ``train.json``. An existing directory is replaced only if it is a mouth-reader directory or empty.
        cfg: training settings (`MouthTrainConfig`); ``cfg.net.image_size`` comes from the data.
        codec_dir: a codec (``lipstep train codec`` output or a diffusers VAE directory); when given,
            ``cfg.codec_fraction`` of the training frames are codec reconstructions and the held-out
            error is also reported on reconstructions.
        progress: show a tqdm bar with the loss.

    Returns:
        A `MouthTrainResult`; ``heldout`` holds the held-out error per split (val and test).
    """
    cfg = cfg or MouthTrainConfig()
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(prepared_dir), Path(out_dir)
    check_mouth_reader_out(out)
    rows = read_manifest(root)
    train = split_frames(root, rows, "train")
    if train is None:
        raise DataError(f"{root / 'manifest.jsonl'} has no train clips with frames")
    frames, labels = train
    net_cfg = dataclasses.replace(cfg.net, image_size=int(frames.shape[1]))
    codec = None
    recon, recon_idx = None, None
    if codec_dir is not None:
        codec = load_codec(codec_dir)
        codec.eval().requires_grad_(False)
        if cfg.codec_fraction > 0 and cfg.max_codec_frames > 0:
            recon_idx = np.linspace(0, len(frames) - 1, min(len(frames), cfg.max_codec_frames)).round().astype(np.int64)
            recon_idx = np.unique(recon_idx)
            recon = reconstruct(codec, frames[recon_idx])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = MouthReaderNet(net_cfg)
    net.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    w = torch.tensor(cfg.weights, dtype=torch.float32)

    def step(_: int) -> torch.Tensor:
        idx = rng.integers(0, len(frames), cfg.batch)
        batch = frames[idx]
        if recon is not None:
            use = rng.random(cfg.batch) < cfg.codec_fraction
            j = rng.integers(0, len(recon_idx), cfg.batch)
            batch = np.where(use[:, None, None, None], recon[j], batch)
            target = np.where(use[:, None], labels[recon_idx[j]], labels[idx])
        else:
            target = labels[idx]
        x = _augment(mouth_reader_input(batch, net_cfg.image_size), cfg, gen)
        return ((net(x) - torch.from_numpy(target)).abs() * w).sum(1).mean() / w.sum()

    warm = min(50, cfg.steps // 10 + 1)
    losses = fit(net.parameters(), step, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                 schedule="cosine", warmup_steps=warm, floor=0.05, progress=progress,
                 desc="train mouth reader").losses
    net.eval().requires_grad_(False)
    reader = MouthReader.from_net(net)
    heldout = {}
    for split in ("val", "test"):
        data = split_frames(root, rows, split, limit=4000)
        if data is not None:
            heldout[split] = _evaluate(reader, *data, codec=codec)
    if not heldout:
        heldout["train"] = _evaluate(reader, frames[:2000], labels[:2000], codec=codec)
    result = MouthTrainResult(out=out, losses=losses, heldout=heldout, parameters=net.num_parameters(),
                              seconds=time.perf_counter() - started)
    save_mouth_reader(net, out, train={
        "name": NAME, "heldout": heldout, "final_loss": round(float(np.mean(losses[-50:])), 5),
        "parameters": result.parameters, "seconds": round(result.seconds, 1), "train_frames": len(frames),
        "codec": str(Path(codec_dir).resolve()) if codec_dir is not None else None,
        "prepared_dir": str(root.resolve()), "train": to_dict(dataclasses.replace(cfg, net=net_cfg))})
    return result


__all__ = ["MouthTrainConfig", "MouthTrainResult", "split_frames", "train_mouth_reader"]
