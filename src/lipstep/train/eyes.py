"""Training the eyelid renderer (`lipstep.nets.eyes.EyeNet`) on a prepared directory's labelled blinks.

Every frame of a labelled blink (eyelid closure c > 0 in the shards' ``blink`` track, the synthetic world's
labels) is a target; its input is the nearest frame of the same clip whose eyes are open (c = 0), before
the blink and after it (two pairs per blink frame, at most ``max_gap`` frames away; blinks last 5
frames, so the open frame is 1–3 frames away and the head has barely moved). Both pairs are also
mirrored left-right (the eyes are symmetric; 988 pairs become 1 976 on the default world). Frames go through the
codec once, up front, and the net learns in its latent space:

    L = mean (EyeNet(z_open, c) − z_blink)²

The lids change a few percent of the latent by a lot; the small head motion between the two frames
changes the rest by little and is not predictable from the input. Squared error lets the large, learnable
change dominate the gradient (an L1 loss, tried first, sits at its zero-delta median for thousands of
steps: most positions do not change); the unpredictable rest averages out to no change. Held-out pairs
(the val split, else the test split: identities the net has not seen) are scored on the decoded frames:
the eye band's brightness (`lipstep.data.blinks.eye_brightness`, what the soak's blink reading uses) of
the input, the output and the real blink frame, over the frames with c >= 0.5, and the PSNR of input and
output against the real frame. ``lipstep train eyes`` runs it; ``lipstep export --eyes`` puts the result
into a model directory (`lipstep.pipeline.AvatarPipeline.attach_eyes`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lipstep.codecs import load_codec
from lipstep.config import check, to_dict
from lipstep.data.blinks import blink_rate, eye_brightness
from lipstep.data.dataset import open_shard, read_manifest
from lipstep.errors import DataError
from lipstep.fit import fit
from lipstep.nets.eyes import EyeConfig, EyeNet, check_eye_net_out, save_eye_net
from lipstep.samplers.chunks import decode_frames


@dataclass
class EyeTrainConfig:
    net: EyeConfig = field(default_factory=EyeConfig)  # latent_channels / latent_size come from the codec
    steps: int = 2000               # optimizer steps
    batch: int = 64                 # pairs per step
    lr: float = 1e-3                # AdamW peak (warm-up 50 steps, cosine decay to lr / 20)
    weight_decay: float = 1e-4
    max_gap: int = 4                # the open input frame is at most this many frames from the blink frame
    mirror: bool = True             # add every pair mirrored left-right
    seed: int = 0

    def validate(self) -> None:
        self.net.validate()
        check(self.steps >= 1 and self.batch >= 1, f"steps and batch must be >= 1, got {self.steps}, {self.batch}")
        check(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0")
        check(self.max_gap >= 1, f"max_gap must be >= 1, got {self.max_gap}")


@dataclass
class EyeTrainResult:
    out: Path
    losses: list[float]
    heldout: dict                   # the held-out readings (module docstring)
    parameters: int
    seconds: float
    blinks_per_second: float        # the training labels' blink rate (what a model with this eye net draws)


@dataclass
class BlinkPairs:
    inputs: np.ndarray              # uint8 [P, S, S, 3]: the open-eyed frame beside each blink frame
    targets: np.ndarray             # uint8 [P, S, S, 3]: the blink frame
    closure: np.ndarray             # float32 [P]: its eyelid closure
    blinks_per_second: float        # the split's blink rate (`lipstep.data.blinks.blink_rate`)


def open_neighbour(blink: np.ndarray, i: int, direction: int, max_gap: int) -> int | None:
    """The nearest frame from ``i`` in ``direction`` (−1 or +1) whose closure is 0, within ``max_gap`` frames."""
    for d in range(1, max_gap + 1):
        j = i + direction * d
        if j < 0 or j >= len(blink):
            return None
        if blink[j] <= 0:
            return j
    return None


def blink_pairs(root: Path, split: str, max_gap: int, fps: float = 25.0) -> BlinkPairs | None:
    """Every labelled blink frame of a split with its open neighbours (`BlinkPairs`); None when the split has no
    clips; a `DataError` when its clips carry no blink labels or no blink."""
    inputs, targets, closure = [], [], []
    clips, tracks = 0, []
    for row in read_manifest(root):
        if row.get("split") != split or int(row.get("frames", 0)) <= 0:
            continue
        clips += 1
        data = open_shard(root / row["shard"], ("frames", "blink"))
        if "blink" not in data:
            raise DataError(f"{root / row['shard']} has no blink labels: the eye net learns from labelled blinks "
                            "(the synthetic world's; real video needs a blink detector's labels)")
        frames, blink = np.asarray(data["frames"]), np.asarray(data["blink"], np.float32)
        tracks.append(blink)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(blink) != len(frames):
            raise DataError(f"{root / row['shard']}: frames are not uint8 [T, S, S, 3] with one blink label each")
        for i in np.flatnonzero(blink > 0):
            for direction in (-1, 1):
                j = open_neighbour(blink, int(i), direction, max_gap)
                if j is not None:
                    inputs.append(frames[j])
                    targets.append(frames[i])
                    closure.append(blink[i])
    if clips == 0:
        return None
    if not inputs:
        raise DataError(f"{root}: the {split} clips' blink labels hold no blink with an open frame beside it")
    return BlinkPairs(np.stack(inputs), np.stack(targets), np.asarray(closure, np.float32), blink_rate(tracks, fps))


@torch.no_grad()
def encode(codec, frames: np.ndarray, batch: int = 128) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> latents [N, C, h, w] (float32, on the CPU)."""
    out = []
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(np.asarray(frames[i:i + batch])).float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2)
        out.append(codec.encode(x.to(codec.device, codec.dtype)).float().cpu())
    return torch.cat(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 arrays (`lipstep.eval.psnr.psnr` sits in a later layer than training)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return round(float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10))), 2)


@torch.no_grad()
def heldout_readings(net: EyeNet, codec, pairs: BlinkPairs, z: torch.Tensor | None = None) -> dict:
    """The eye band of input, output and real blink frames (closure >= 0.5) and PSNR against the real frame
    (``z``: the inputs' latents when they are already encoded)."""
    inputs, targets, closure = pairs.inputs, pairs.targets, pairs.closure
    z = encode(codec, inputs) if z is None else z
    out = decode_frames(codec, torch.cat([net(z[i:i + 256], torch.from_numpy(closure[i:i + 256]))
                                          for i in range(0, len(z), 256)]), codec.device)
    shut = closure >= 0.5
    return {"pairs": len(closure), "shut_pairs": int(shut.sum()),
            "eyes_input": round(float(eye_brightness(inputs[shut]).mean()), 2),
            "eyes_output": round(float(eye_brightness(out[shut]).mean()), 2),
            "eyes_real": round(float(eye_brightness(targets[shut]).mean()), 2),
            "psnr_input": psnr(inputs, targets), "psnr_output": psnr(out, targets)}


def train_eyes(prepared_dir: str | os.PathLike, codec_dir: str | os.PathLike, out_dir: str | os.PathLike,
               cfg: EyeTrainConfig | None = None, *, progress: bool = True) -> EyeTrainResult:
    """Train an eye net for ``codec_dir``'s latents on the train split of ``prepared_dir``; save it to ``out_dir``
    (atomically: ``config.json``, ``model.safetensors``, ``checksums.json``, ``train.json``)."""
    cfg = cfg or EyeTrainConfig()
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(prepared_dir), Path(out_dir)
    check_eye_net_out(out)
    train = blink_pairs(root, "train", cfg.max_gap)
    if train is None:
        raise DataError(f"{root / 'manifest.jsonl'} has no train clips with frames")
    held = None
    for split in ("val", "test"):
        held = blink_pairs(root, split, cfg.max_gap)
        if held is not None:
            held_split = split
            break
    codec = load_codec(codec_dir)
    codec.eval().requires_grad_(False)
    inputs, targets, closure = train.inputs, train.targets, train.closure
    if cfg.mirror:
        inputs = np.concatenate([inputs, inputs[:, :, ::-1]])
        targets = np.concatenate([targets, targets[:, :, ::-1]])
        closure = np.concatenate([closure, closure])
    z_in, z_out = encode(codec, inputs), encode(codec, targets)
    c = torch.from_numpy(closure)
    net_cfg = dataclasses.replace(cfg.net, latent_channels=int(z_in.shape[1]), latent_size=int(z_in.shape[-1]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = EyeNet(net_cfg).train()
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(k: int):
        idx = torch.randint(0, len(c), (cfg.batch,), generator=gen)
        return (net(z_in[idx], c[idx]) - z_out[idx]).square().mean()

    history = fit(net.parameters(), step, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                  schedule="cosine", warmup_steps=min(50, cfg.steps // 10), floor=0.05, grad_clip=1.0,
                  progress=progress, desc="train eyes")
    net.eval().requires_grad_(False)
    heldout = {held_split: heldout_readings(net, codec, held)} if held is not None else {}
    heldout["train"] = heldout_readings(net, codec, train, z_in[:len(train.closure)])  # the unmirrored pairs
    seconds = time.perf_counter() - started
    record = {"data": str(root.resolve()), "codec": str(Path(codec_dir).resolve()), "config": to_dict(cfg),
              "pairs": len(c), "blinks_per_second": round(train.blinks_per_second, 4), "final_loss": round(float(np.mean(history.losses[-50:])), 5),
              "heldout": heldout, "parameters": net.num_parameters(), "seconds": round(seconds, 1)}
    save_eye_net(net, out, train=record)
    return EyeTrainResult(out=out, losses=history.losses, heldout=heldout, parameters=net.num_parameters(),
                          seconds=seconds, blinks_per_second=train.blinks_per_second)


__all__ = ["BlinkPairs", "EyeTrainConfig", "EyeTrainResult", "blink_pairs", "heldout_readings", "open_neighbour", "train_eyes"]
