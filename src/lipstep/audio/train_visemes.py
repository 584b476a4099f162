"""Training the audio -> viseme classifier (`lipstep.audio.visemes.VisemeNet`) on lipstep's own speech.

The synthetic world's clips carry espeak-ng speech and the exact viseme of every frame
(`lipstep.data.visemes`). `train_viseme_classifier` trains on the prepared clips of a world and, with
``synth_clips`` > 0, on more speech synthesized here as the world makes it (`lipstep.data.world.speech_for`:
a sentence after a lead silence, over the noise floor; no video), and measures what a front end that must
work for any speaker needs:

- **held-out voices**: the voices in ``holdout`` (``holdout_by`` "voice" = espeak voice+variant such as
  ``en-us+f2``; "variant" = the variant under every accent; "accent"), by default ``holdout_fraction`` of
  the data's voices drawn with the seed, are never trained on, not even in synthesized speech; every clip
  in them, of any split, is the test;
- **seen voices, held-out clips**: the val/test-split clips (identities never trained on) of the other voices;
- for scale: the majority-class baseline (the most frequent training label predicted everywhere), per-class
  recall, the most frequent confusions, and the accuracy on training clips.

Every score runs the deployed path, `VisemeAudioEncoder.predict` on the clip's waveform (float32 log-mel,
silence before the audio), at ``smooth`` 0 and, for comparison, 1 and 2. Clips prepared before ``lipstep
prepare`` kept the world's ``voice`` get theirs from the world directory they were prepared from (``world``),
matched by clip id.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from lipstep.audio.encoders import MelEncoder, VisemeAudioEncoder
from lipstep.audio.visemes import (
    NAME,
    VisemeNet,
    VisemeNetConfig,
    check_viseme_classifier_out,
    save_viseme_classifier,
    silence_windows,
)
from lipstep.config import check, to_dict
from lipstep.data.dataset import open_shard, read_manifest
from lipstep.data.features import LOG_FLOOR
from lipstep.data.latents import clip_id_of
from lipstep.data.speech import voices
from lipstep.data.visemes import VISEMES, viseme_track
from lipstep.data.world import SAMPLE_RATE, WorldConfig, place_speech, speech_for
from lipstep.errors import DataError
from lipstep.fit import fit

_EVAL_SMOOTH = (0, 1, 2)


@dataclass
class VisemeTrainConfig:
    net: VisemeNetConfig = field(default_factory=VisemeNetConfig)  # n_mels, mel_window and fps come from the data
    steps: int = 1500               # optimizer steps
    batch: int = 32                 # segments per step
    segment: int = 32               # labelled frames per segment (clips shorter than this are not trained on)
    lr: float = 2e-3                # AdamW peak learning rate (warm-up, cosine decay to lr / 20)
    weight_decay: float = 0.01
    label_smoothing: float = 0.05
    holdout_by: Literal["voice", "variant", "accent"] = "voice"  # what a held-out "voice" is
    holdout: tuple[str, ...] = ()   # held-out voices (variants, accents); () = holdout_fraction of the data's
    holdout_fraction: float = 0.2   # share of the data's voices held out when `holdout` is empty
    synth_clips: int = 0            # extra clips of speech synthesized here, in voices not held out
    gain_db: float = 12.0           # random gain, ± dB (added to the log-mel, clamped at silence)
    shift_bands: int = 2            # random shift of the mel bands, ± bands (a crude vocal-tract change)
    mask_bands: int = 8             # one random band mask of up to this many mel bands per segment
    seed: int = 0

    def validate(self) -> None:
        self.net.validate()
        check(self.steps >= 1 and self.batch >= 1 and self.segment >= 1,
              f"steps, batch and segment must be >= 1, got {self.steps}, {self.batch}, {self.segment}")
        check(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0")
        check(0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(0.0 < self.holdout_fraction < 1.0, f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        check(self.synth_clips >= 0 and self.gain_db >= 0 and self.shift_bands >= 0 and self.mask_bands >= 0,
              "synth_clips, gain_db, shift_bands and mask_bands must be >= 0")


@dataclass
class VisemeTrainResult:
    out: Path
    losses: list[float]
    holdout: list[str]              # the held-out voices (variants, accents)
    results: dict                   # {set: {clips, frames, accuracy, majority_baseline, ...}}
    parameters: int
    seconds: float


@dataclass(eq=False)  # compared by identity
class _Clip:
    id: str
    split: str                      # train / val / test, or "synth"
    voice: str
    wav: np.ndarray                 # float32 [N] at 16 kHz
    labels: np.ndarray              # int64 [T]


def voice_key(voice: str, by: str) -> str:
    """What `holdout_by` holds out of an espeak voice name: itself, its variant ("default" for none), its accent."""
    base, _, variant = voice.partition("+")
    return voice if by == "voice" else (variant or "default") if by == "variant" else base


# ------------------------------------------------------------------------------------------------- data


def _world_voices(world: Path) -> dict[str, str]:
    """Clip id -> voice from a synthetic world's manifest."""
    path = world / "manifest.jsonl"
    if not path.is_file():
        raise DataError(f"{world} has no manifest.jsonl; expected the synthetic world the data was prepared from")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e})") from None
            if isinstance(row, dict) and row.get("id") and row.get("voice"):
                out[str(row["id"])] = str(row["voice"])
    return out


def load_clips(root: Path, world: Path | None = None) -> list[_Clip]:
    """Every clip of a prepared directory with its waveform, viseme labels and voice."""
    rows = read_manifest(root)
    from_world = _world_voices(world) if world is not None else {}
    clips = []
    for row in rows:
        clip = clip_id_of(row)
        voice = row.get("voice") or from_world.get(clip)
        if voice is None:
            raise DataError(f"{root}: clip {clip} names no voice; give the synthetic world it was prepared "
                            "from (--world), or prepare it again (prepare now records voices)")
        data = open_shard(root / row["shard"], ("audio", "visemes"))
        if "visemes" not in data or "audio" not in data:
            raise DataError(f"{root / row['shard']} has no viseme labels: the classifier needs synthetic-world data")
        clips.append(_Clip(clip, row["split"], str(voice), np.asarray(data["audio"], np.float32),
                           np.asarray(data["visemes"], np.int64)))
    if not clips:
        raise DataError(f"{root / 'manifest.jsonl'} lists no clips")
    return clips


def synth_clips(n: int, pool: list[str], seconds: float, fps: float, seed: int) -> list[_Clip]:
    """`n` clips of speech the way the synthetic world makes it, voices drawn from `pool`."""
    wcfg = WorldConfig(seconds=seconds)
    n_frames = round(seconds * fps)
    n_samples = round(n_frames * SAMPLE_RATE / fps)
    clips = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 11])
        voice = {"voice": pool[int(rng.integers(len(pool)))], "pitch": int(rng.integers(30, 71))}
        lead = float(rng.uniform(*wcfg.lead_silence))
        speech, _ = speech_for(rng, wcfg, voice, seconds - lead - 0.25)
        wav, phonemes = place_speech(speech, n_samples, lead, wcfg.noise_floor, rng)
        clips.append(_Clip(f"synth{i:05d}", "synth", voice["voice"], wav, viseme_track(phonemes, n_frames, fps)))
    return clips


def choose_holdout(clips: list[_Clip], cfg: VisemeTrainConfig) -> list[str]:
    """The held-out voices (variants, accents): `cfg.holdout`, checked, or a seeded share of the data's."""
    keys = sorted({voice_key(c.voice, cfg.holdout_by) for c in clips})
    if len(keys) < 2:
        raise DataError(f"the data has clips of {len(keys)} {cfg.holdout_by}(s) ({', '.join(keys)}); holding "
                        "one out needs at least 2")
    if cfg.holdout:
        unknown = [k for k in cfg.holdout if k not in keys]
        if unknown or len(set(cfg.holdout)) == len(keys):
            raise DataError(f"holdout {list(cfg.holdout)}: " + (f"{unknown} not among the data's {cfg.holdout_by}s "
                            f"({', '.join(keys)})" if unknown else "leaves nothing to train on"))
        return sorted(set(cfg.holdout))
    n = max(1, min(len(keys) - 1, round(cfg.holdout_fraction * len(keys))))
    return sorted(np.random.default_rng([cfg.seed, 5]).choice(keys, n, replace=False).tolist())


def _windows(mel: MelEncoder, clip: _Clip, context: int, net_cfg: VisemeNetConfig) -> np.ndarray:
    """float16 [T + 2·context, K, D]: the windows of frames -context .. T + context - 1 (silence before 0)."""
    windows = mel.encode(clip.wav, len(clip.labels) + context)
    return torch.cat([silence_windows(context, net_cfg), windows]).numpy().astype(np.float16)


# ------------------------------------------------------------------------------------------------ train


def _augment(x: torch.Tensor, net: VisemeNet, cfg: VisemeTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random gain, mel-band shift and one band mask per segment of log-mel windows [B, N, K, D]."""
    b, d = x.shape[0], x.shape[-1]
    if cfg.gain_db > 0:
        gain = (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1) * cfg.gain_db * math.log(10) / 10
        x = (x + gain).clamp_min(math.log(LOG_FLOOR))
    bands = torch.arange(d)
    if cfg.shift_bands > 0:
        shift = torch.randint(-cfg.shift_bands, cfg.shift_bands + 1, (b,), generator=gen)
        idx = (bands[None] - shift[:, None]).clamp(0, d - 1)                 # [B, D], edge bands repeat
        x = torch.gather(x, 3, idx[:, None, None, :].expand_as(x))
    if cfg.mask_bands > 0:
        width = torch.randint(0, min(cfg.mask_bands, d - 1) + 1, (b,), generator=gen)
        start = (torch.rand(b, generator=gen) * (d - width + 1)).long()
        mask = (bands[None] >= start[:, None]) & (bands[None] < (start + width)[:, None])  # [B, D]
        x = torch.where(mask[:, None, None, :], net.mel_mean, x)              # masked bands read as average
    return x


def _set_normalisation(net: VisemeNet, windows: list[np.ndarray]) -> None:
    """Per-band mean and std of the training windows into the net's buffers."""
    flat = np.concatenate([w.reshape(-1, w.shape[-1]) for w in windows]).astype(np.float64)
    net.mel_mean.copy_(torch.from_numpy(flat.mean(0)).float())
    net.mel_std.copy_(torch.from_numpy(flat.std(0)).float().clamp_min(1e-3))


def _fit(net: VisemeNet, windows: list[np.ndarray], labels: list[np.ndarray], cfg: VisemeTrainConfig,
         progress: bool) -> list[float]:
    c, length = net.cfg.context, cfg.segment
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    sizes = np.array([len(lab) - length + 1 for lab in labels], np.float64)  # segment starts per clip

    def step(_: int) -> torch.Tensor:
        picks = rng.choice(len(labels), cfg.batch, p=sizes / sizes.sum())
        starts = [int(rng.integers(sizes[i])) for i in picks]
        x = torch.from_numpy(np.stack([windows[i][s:s + length + 2 * c] for i, s in zip(picks, starts)])).float()
        y = torch.from_numpy(np.stack([labels[i][s:s + length] for i, s in zip(picks, starts)]))
        logits = net(_augment(x, net, cfg, gen))                              # [B, L, n]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                               label_smoothing=cfg.label_smoothing)

    net.train()
    warm = min(100, cfg.steps // 10 + 1)
    losses = fit(net.parameters(), step, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
                 schedule="cosine", warmup_steps=warm, floor=0.05, grad_clip=1.0, progress=progress,
                 desc="train viseme classifier").losses
    net.eval().requires_grad_(False)
    return losses


# ------------------------------------------------------------------------------------------------- score


def score(net: VisemeNet, clips: list[_Clip], majority: int, *, confusion: bool = False) -> dict:
    """Frame accuracy of `net` through `VisemeAudioEncoder.predict` on `clips` (smooth 0; 1 and 2 beside it; and
    on the frames whose true class is not silence, class 0), the majority-class baseline, per-class recall and
    the most frequent confusions."""
    n = net.cfg.n_visemes
    truth = np.concatenate([c.labels for c in clips])
    acc = {}
    for smooth in _EVAL_SMOOTH:
        encoder = VisemeAudioEncoder(net, smooth=smooth)
        pred = np.concatenate([encoder.predict(c.wav, len(c.labels)).numpy() for c in clips])
        acc[smooth] = float((pred == truth).mean())
        if smooth == 0:
            matrix = np.bincount(truth * n + pred, minlength=n * n).reshape(n, n)
    support = matrix.sum(1)
    off = matrix - np.diag(np.diag(matrix))
    worst = np.unravel_index(np.argsort(off, axis=None, kind="stable")[::-1][:5], off.shape)
    speech = matrix[1:].sum()
    out = {"clips": len(clips), "frames": len(truth), "accuracy": round(acc[0], 4),
           "speech_accuracy": round(float(np.trace(matrix[1:, 1:]) / speech), 4) if speech else None,
           "majority_baseline": round(float((truth == majority).mean()), 4),
           "accuracy_smooth": {str(s): round(a, 4) for s, a in acc.items() if s},
           "per_class_recall": {_name(i, n): round(float(matrix[i, i] / support[i]), 3)
                                for i in range(n) if support[i]},
           "class_frames": {_name(i, n): int(support[i]) for i in range(n) if support[i]},
           "top_confusions": [f"{_name(i, n)}->{_name(j, n)}: {int(off[i, j])}" for i, j in zip(*worst) if off[i, j]]}
    if confusion:
        out["confusion"] = matrix.tolist()  # rows: true class, columns: predicted
    return out


def _name(i: int, n: int) -> str:
    return VISEMES[i] if n == len(VISEMES) else str(i)


# ------------------------------------------------------------------------------------------------ entry


def train_viseme_classifier(prepared_dir: str | os.PathLike, out_dir: str | os.PathLike,
                            cfg: VisemeTrainConfig | None = None, *, world: str | os.PathLike | None = None,
                            progress: bool = True) -> VisemeTrainResult:
    """Train the audio -> viseme classifier on a prepared synthetic-world directory; save it to `out_dir`.

    Args:
        prepared_dir: output of ``lipstep prepare`` on synthetic-world data (shards with ``audio`` and ``visemes``).
        out_dir: classifier directory, written atomically: ``config.json``, ``model.safetensors``,
            ``checksums.json``, ``train.json``. An existing directory is replaced only if it is a viseme
            classifier directory or empty.
        cfg: training settings (`VisemeTrainConfig`); ``cfg.net``'s mel window, bands and fps come from the data.
        world: the synthetic world the data was prepared from, for clips whose manifest row names no voice.
        progress: show a tqdm bar with the loss.

    Returns:
        A `VisemeTrainResult`; ``results`` holds the scores of "heldout_voices", "seen_voices" (held-out clips
        of the voices trained on) and "train".
    """
    cfg = cfg or VisemeTrainConfig()
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(prepared_dir), Path(out_dir)
    check_viseme_classifier_out(out)
    clips = load_clips(root, Path(world) if world is not None else None)
    probe = open_shard(root / read_manifest(root)[0]["shard"], ("mel", "fps"))
    _, k, d = probe["mel"].shape
    net_cfg = dataclasses.replace(cfg.net, mel_window=int(k), n_mels=int(d), fps=float(probe["fps"]))
    holdout = choose_holdout(clips, cfg)
    held = [c for c in clips if voice_key(c.voice, cfg.holdout_by) in holdout]
    seen = [c for c in clips if c not in held and c.split in ("val", "test")]
    train = [c for c in clips if c not in held and c.split == "train"]
    if cfg.synth_clips:
        pool = [v for v in voices() if voice_key(v, cfg.holdout_by) not in holdout]
        seconds = max(2.0, float(np.median([len(c.labels) for c in clips])) / net_cfg.fps)
        train += synth_clips(cfg.synth_clips, pool, seconds, net_cfg.fps, cfg.seed)
    train = [c for c in train if len(c.labels) >= cfg.segment]
    if not train:
        raise DataError(f"{root}: no training clip of {cfg.segment} frames or more in the voices not held out")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = VisemeNet(net_cfg)
    mel = MelEncoder(net_cfg.mel_window, net_cfg.n_mels, net_cfg.fps)
    windows = [_windows(mel, c, net_cfg.context, net_cfg) for c in train]
    labels = [c.labels for c in train]
    _set_normalisation(net, windows)
    losses = _fit(net, windows, labels, cfg, progress)

    majority = int(np.bincount(np.concatenate(labels), minlength=net_cfg.n_visemes).argmax())
    results = {"heldout_voices": score(net, held, majority, confusion=True)}
    if seen:
        results["seen_voices"] = score(net, seen, majority)
    results["train"] = score(net, train[::max(1, len(train) // 40)], majority)
    seconds = time.perf_counter() - started
    result = VisemeTrainResult(out=out, losses=losses, holdout=holdout, results=results,
                               parameters=net.num_parameters(), seconds=seconds)
    train_voices = sorted({voice_key(c.voice, cfg.holdout_by) for c in train})
    save_viseme_classifier(net, out, train={
        "name": NAME, "holdout_by": cfg.holdout_by, "holdout": holdout, "train_voices": train_voices,
        "majority_class": VISEMES[majority] if net_cfg.n_visemes == len(VISEMES) else majority,
        "results": results, "final_loss": round(float(np.mean(losses[-50:])), 5),
        "parameters": result.parameters, "seconds": round(seconds, 1),
        "train_clips": {kind: sum(c.split == split for c in train) for kind, split in (("prepared", "train"),
                                                                                     ("synth", "synth"))},
        "train_frames": int(sum(len(lab) for lab in labels)), "prepared_dir": str(root.resolve()),
        "world": str(Path(world).resolve()) if world is not None else None,
        "train": to_dict(dataclasses.replace(cfg, net=net_cfg))})
    return result


__all__ = ["VisemeTrainConfig", "VisemeTrainResult", "choose_holdout", "load_clips", "score", "synth_clips",
           "train_viseme_classifier", "voice_key"]
