"""Training lipstep's own lip-sync evaluator (`lipstep.nets.syncnet.LipSyncNet`) on a prepared directory.

`train_syncnet` draws in-sync windows (5 frames + their audio steps) and, for each, the same frames with
audio from a shifted window of the same clip; the loss is binary cross-entropy on the logits
``exp(scale) * cos + bias`` (1 = in sync, 0 = shifted) plus a softmax cross-entropy that must pick the
in-sync audio among the same clip's windows shifted by ``-offset_range .. offset_range`` frames. It
reports pair accuracy and the full protocol (`lipstep.eval.sync`) on held-out clips.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lipstep.config import check, to_dict
from lipstep.data.dataset import open_shard, read_manifest
from lipstep.errors import DataError
from lipstep.eval.sync import lipsync_features, lipsync_frames, score_lipsync
from lipstep.fit import fit
from lipstep.nets.syncnet import LipSyncConfig, LipSyncNet, check_lipsync_out, save_lipsync

log = logging.getLogger(__name__)


@dataclass
class SyncTrainConfig:
    net: LipSyncConfig = field(default_factory=LipSyncConfig)  # architecture; image_size comes from the data
    steps: int = 3000               # optimizer steps
    batch: int = 64                 # in-sync windows per step; each also brings one shifted negative
    lr: float = 1e-3                # AdamW learning rate (linear warm-up, cosine decay to lr / 10)
    warmup_steps: int = 100         # linear warm-up length
    weight_decay: float = 1e-4      # AdamW weight decay
    grad_clip: float = 1.0          # max gradient norm; 0 disables
    min_shift: int = 1              # negatives: the same clip's audio shifted by min_shift..max_shift
    max_shift: int = 15             #   frames either way (any other window if the clip is too short)
    offset_range: int = 3           # K of the offset term: pick the in-sync audio among shifts -K..K; 0 disables
    offset_weight: float = 1.0      # weight of the offset term (softmax cross-entropy) next to the BCE
    eval_pairs: int = 512           # held-out in-sync windows scored (and as many shifted ones)
    eval_clips: int = 16            # held-out clips scored with the full protocol (sync_c / offset)
    seed: int = 0                   # initial weights, window draws, negative shifts

    def validate(self) -> None:
        check(self.steps >= 1 and self.batch >= 1, f"steps and batch must be >= 1, got {self.steps}, {self.batch}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.warmup_steps >= 0 and self.weight_decay >= 0 and self.grad_clip >= 0,
              "warmup_steps, weight_decay and grad_clip must be >= 0")
        check(1 <= self.min_shift <= self.max_shift,
              f"need 1 <= min_shift <= max_shift, got {self.min_shift}, {self.max_shift}")
        check(self.offset_range >= 0 and self.offset_weight >= 0, "offset_range and offset_weight must be >= 0")
        check(self.eval_pairs >= 1 and self.eval_clips >= 0, "eval_pairs must be >= 1 and eval_clips >= 0")


@dataclass
class SyncTrainResult:
    out: Path                       # directory with model.safetensors, config.json, train.json
    losses: list[float]             # training loss per step (BCE + weighted offset term)
    accuracy: float                 # held-out: in-sync logit > 0 and shifted logit <= 0, over both kinds
    rank_accuracy: float            # held-out: in-sync cosine > the paired shifted window's cosine
    eval_split: str                 # split the accuracy was measured on ("val", else "test", else "train")
    eval_pairs: int                 # in-sync windows scored (as many shifted ones)
    protocol: dict                  # mean sync_c / sync_d and |offset| <= 1 rate on held-out clips
    parameters: int
    seconds: float


class _Clips:
    """Frames (memory-mapped) and audio features (in memory) of one split's clips, for window sampling."""

    def __init__(self, root: Path, rows: list[dict], cfg: LipSyncConfig):
        self.frames, self.feats, self.wavs, self.last = [], [], [], []
        t, spf = cfg.frames, cfg.steps_per_frame
        for row in rows:
            path = root / row["shard"]
            data = open_shard(path, ("frames", "audio"))
            if "frames" not in data or "audio" not in data:
                raise DataError(f"shard {path} lacks frames or audio")
            feats = lipsync_features(np.asarray(data["audio"]), cfg)
            last = min(len(data["frames"]) - t, (len(feats) - t * spf) // spf)  # last usable window start
            if last < 1:  # needs at least two windows: one in sync, one shifted
                continue
            self.frames.append(data["frames"])
            self.wavs.append(data["audio"])
            self.feats.append(feats)
            self.last.append(last)
        self.cfg = cfg
        self.size = int(self.frames[0].shape[1]) if self.frames else 0

    def __len__(self) -> int:
        return len(self.frames)

    def negative(self, c: int, v: int, lo: int, hi: int, rng: np.random.Generator) -> int:
        """A start u != v of clip c with lo <= |u - v| <= hi when possible, else any u != v."""
        u = np.arange(max(0, v - hi), min(self.last[c], v + hi) + 1)
        u = u[np.abs(u - v) >= lo]
        if len(u) == 0:
            u = np.delete(np.arange(self.last[c] + 1), v)
        return int(rng.choice(u))

    def batch(self, picks: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clip, start, negative start) triples -> frames [B, T, 3, S, S], in-sync and shifted features."""
        t, spf = self.cfg.frames, self.cfg.steps_per_frame
        lip = np.stack([np.asarray(self.frames[c][v:v + t]) for c, v, _ in picks])           # [B, T, S, S, 3]
        pos = np.stack([self.feats[c][spf * v:spf * (v + t)] for c, v, _ in picks])           # [B, T*spf, D]
        neg = np.stack([self.feats[c][spf * u:spf * (u + t)] for c, _, u in picks])
        return lipsync_frames(lip, self.cfg.image_size), torch.from_numpy(pos), torch.from_numpy(neg)

    def shifted(self, picks: list[tuple[int, int, int]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio windows at starts v - k .. v + k of each pick: [B, 2k + 1, T*spf, D], and which exist [B, 2k + 1]."""
        t, spf = self.cfg.frames, self.cfg.steps_per_frame
        out = np.zeros((len(picks), 2 * k + 1, t * spf, self.feats[0].shape[1]), np.float32)
        valid = np.zeros((len(picks), 2 * k + 1), bool)
        for b, (c, v, _) in enumerate(picks):
            for j, u in enumerate(range(v - k, v + k + 1)):
                if 0 <= u <= self.last[c]:
                    out[b, j], valid[b, j] = self.feats[c][spf * u:spf * (u + t)], True
        return torch.from_numpy(out), torch.from_numpy(valid)


def _train_picks(clips: _Clips, cfg: SyncTrainConfig, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """One batch of (clip, start, negative start): clips weighted by their number of windows."""
    weights = np.array(clips.last, np.float64) + 1
    chosen = rng.choice(len(clips), size=cfg.batch, p=weights / weights.sum())
    picks = []
    for c in chosen:
        v = int(rng.integers(clips.last[c] + 1))
        picks.append((int(c), v, clips.negative(int(c), v, cfg.min_shift, cfg.max_shift, rng)))
    return picks


def _offset_loss(model: LipSyncNet, e_lip: torch.Tensor, cand: torch.Tensor, valid: torch.Tensor,
                 device) -> torch.Tensor:
    """Cross-entropy of picking the in-sync window (the middle one) among shifted audio windows."""
    b, n = valid.shape
    e_cand = model.forward_aud(cand.to(device).flatten(0, 1)).unflatten(0, (b, n))   # [B, 2K+1, E]
    sims = model.logit_scale.exp() * (e_lip[:, None] * e_cand).sum(-1)               # [B, 2K+1]
    sims = sims.masked_fill(~valid.to(device), float("-inf"))
    return F.cross_entropy(sims, torch.full((b,), n // 2, dtype=torch.long, device=device))


def _eval_picks(clips: _Clips, cfg: SyncTrainConfig) -> list[tuple[int, int, int]]:
    """Fixed held-out pairs: evenly spaced windows of every clip, negatives from a seeded generator."""
    every = [(c, v) for c in range(len(clips)) for v in range(clips.last[c] + 1)]
    keep = np.unique(np.linspace(0, len(every) - 1, min(len(every), cfg.eval_pairs)).round().astype(np.int64))
    rng = np.random.default_rng((cfg.seed, 1))
    return [(c, v, clips.negative(c, v, cfg.min_shift, cfg.max_shift, rng)) for c, v in (every[i] for i in keep)]


@torch.no_grad()
def _pair_accuracy(model: LipSyncNet, clips: _Clips, picks, device) -> tuple[float, float]:
    """(threshold accuracy over in-sync + shifted pairs, rate of in-sync cosine > shifted cosine)."""
    hits, ranked = 0, 0
    for first in range(0, len(picks), 64):
        lip, pos, neg = (x.to(device) for x in clips.batch(picks[first:first + 64]))
        e_lip = model.forward_lip(lip)
        e_pos, e_neg = model.forward_aud(pos), model.forward_aud(neg)
        hits += int((model.logits(e_lip, e_pos) > 0).sum()) + int((model.logits(e_lip, e_neg) <= 0).sum())
        ranked += int(((e_lip * e_pos).sum(-1) > (e_lip * e_neg).sum(-1)).sum())
    return hits / (2 * len(picks)), ranked / len(picks)


def _protocol_summary(model: LipSyncNet, clips: _Clips, n: int, device) -> dict:
    """Mean Sync-C / Sync-D and the rate of |offset| <= 1 over up to n held-out ground-truth clips."""
    scores = []
    for c in range(min(n, len(clips))):
        try:
            scores.append(score_lipsync(model, np.asarray(clips.frames[c]), np.asarray(clips.wavs[c]), device=device))
        except DataError:  # shorter than the protocol's 6 frames
            continue
    if not scores:
        return {"clips": 0}
    return {"clips": len(scores), "sync_c": round(float(np.mean([s.sync_c for s in scores])), 4),
            "sync_d": round(float(np.mean([s.sync_d for s in scores])), 4),
            "offset_within_1": round(float(np.mean([abs(s.offset) <= 1 for s in scores])), 4)}


def _split_clips(root: Path, rows: list[dict], split: str, cfg: LipSyncConfig) -> _Clips | None:
    chosen = [r for r in rows if r.get("split") == split and int(r.get("frames", 0)) > 0]
    clips = _Clips(root, chosen, cfg) if chosen else None
    return clips if clips is not None and len(clips) else None


def train_syncnet(prepared_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  cfg: SyncTrainConfig | None = None, *, progress: bool = True,
                  device: str | torch.device | None = None) -> SyncTrainResult:
    """Train a `LipSyncNet` on the train clips of a prepared directory and save it to `out_dir`.

    Each step draws ``cfg.batch`` in-sync windows (5 frames + their audio steps) and, for each, the
    same frames with audio from a shifted window of the same clip (``min_shift..max_shift`` frames
    either way); the loss is binary cross-entropy on the logits ``exp(scale) * cos + bias`` (1 = in
    sync, 0 = shifted) plus ``offset_weight`` x a softmax cross-entropy that must pick the in-sync
    audio among the same clip's windows shifted by ``-offset_range .. offset_range`` frames.

    Args:
        prepared_dir: output of ``lipstep prepare`` (manifest.jsonl + shards with ``frames`` and ``audio``).
        out_dir: written as one atomic directory: ``model.safetensors``, ``checksums.json``, ``config.json``
            and ``train.json``. An existing directory is replaced only if it is a LipSyncNet directory or empty.
        cfg: training settings; ``cfg.net.image_size`` is set from the data.
        progress: show a tqdm bar with the loss.
        device: where to train; None = CUDA when available, else CPU.

    Returns:
        A `SyncTrainResult`; ``train.json`` holds the same summary without the per-step losses. The
        accuracy is measured on the val split (else test; else, marked as such, train).
    """
    cfg = cfg or SyncTrainConfig()
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(prepared_dir), Path(out_dir)
    check_lipsync_out(out)
    rows = read_manifest(root)
    train = _split_clips(root, rows, "train", cfg.net)
    if train is None:
        raise DataError(f"{root / 'manifest.jsonl'} has no train clip long enough for two "
                        f"{cfg.net.frames}-frame windows")
    net_cfg = dataclasses.replace(cfg.net, image_size=train.size)
    net_cfg.validate()
    train.cfg = net_cfg
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LipSyncNet(net_cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    rng = np.random.default_rng(cfg.seed)
    labels = torch.cat([torch.ones(cfg.batch), torch.zeros(cfg.batch)]).to(device)

    # Train: BCE on in-sync (label 1) and shifted (label 0) pairs sharing the same frames, plus the
    # offset term: softmax over the audio shifted by -K..K frames must pick shift 0 (what the
    # protocol's offset search asks of the embeddings; BCE alone sits at ln 2 for a long time).
    def step(_: int) -> torch.Tensor:
        picks = _train_picks(train, cfg, rng)
        lip, pos, neg = (x.to(device) for x in train.batch(picks))
        e_lip = model.forward_lip(lip)
        e_aud = model.forward_aud(torch.cat([pos, neg]))                        # [2B, E]
        loss = F.binary_cross_entropy_with_logits(model.logits(e_lip.repeat(2, 1), e_aud), labels)
        if cfg.offset_range > 0 and cfg.offset_weight > 0:
            loss = loss + cfg.offset_weight * _offset_loss(model, e_lip, *train.shifted(picks, cfg.offset_range),
                                                           device)
        return loss

    losses = fit(model.parameters(), step, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                 schedule="cosine", warmup_steps=cfg.warmup_steps, floor=0.1, grad_clip=cfg.grad_clip,
                 progress=progress, desc="train syncnet").losses
    model.eval().requires_grad_(False)

    # Report: pair accuracy and the full protocol on held-out clips (val, else test, else train).
    split, held = next(((s, c) for s in ("val", "test") if (c := _split_clips(root, rows, s, net_cfg))),
                       ("train", train))
    if split == "train":
        log.warning("sync: %s has no val/test clips; accuracy is measured on the train split", root)
    picks = _eval_picks(held, cfg)
    accuracy, rank_accuracy = _pair_accuracy(model, held, picks, device)
    protocol = _protocol_summary(model, held, cfg.eval_clips, device)
    result = SyncTrainResult(out=out, losses=losses, accuracy=accuracy, rank_accuracy=rank_accuracy,
                             eval_split=split, eval_pairs=len(picks), protocol=protocol,
                             parameters=model.num_parameters(), seconds=time.perf_counter() - started)
    save_lipsync(model, out, train={
        "accuracy": round(accuracy, 4), "rank_accuracy": round(rank_accuracy, 4), "eval_split": split,
        "eval_pairs": len(picks), "protocol": protocol, "final_loss": losses[-1], "parameters": result.parameters,
        "seconds": round(result.seconds, 2), "prepared_dir": str(root.resolve()),
        "train": to_dict(dataclasses.replace(cfg, net=net_cfg))})
    return result


__all__ = ["SyncTrainConfig", "SyncTrainResult", "train_syncnet"]
