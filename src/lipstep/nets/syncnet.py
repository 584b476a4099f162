"""Audio-visual lip-sync networks: the official SyncNet "S" and lipstep's own small `LipSyncNet`.

`SyncNetS` re-implements the two-stream network of Chung & Zisserman, "Out of time: automated lip
sync in the wild" (ACCV-W 2016), in the form released as ``syncnet_v2.model`` by
joonson/syncnet_python (metrics.md §1.4). Its layers sit at the same ``nn.Sequential`` indices as
the reference module, so the released state dict loads by name (`load_official_syncnet`); the
weights themselves never ship with lipstep. Inputs, as the reference ``evaluate()`` feeds them:

- lip stream: ``[B, 3, 5, 224, 224]`` float, five consecutive 224 px face crops, BGR channel order,
  raw 0..255 values (no mean subtraction, no scaling) -> ``[B, 1024]``;
- audio stream: ``[B, 1, 13, 20]`` float, 13 MFCC x 20 steps of 10 ms (0.2 s, int16 sample scale,
  `lipstep.eval.sync.mfcc`) -> ``[B, 1024]``.

Embeddings are not normalised; the protocol compares them by Euclidean distance.

`LipSyncNet` is a SyncNet-style "eval expert" trained on lipstep's own face crops (metrics.md §5.3,
after Wav2Lip's expert discriminator and LatentSync's StableSyncNet): the lower half of
``frames`` (default 5) S x S crops, stacked on channels, and the matching ``frames x 4`` audio
feature steps (80-band log-mel or 13 MFCC at 100 Hz) map to L2-normalised embeddings whose cosine
similarity, through a learned affine map, is the logit of "in sync". It is saved as
``model.safetensors`` + ``config.json`` + ``checksums.json`` (`save_lipsync`, `load_lipsync`, through
`lipstep.netdir`); training lives in `lipstep.eval.train_syncnet`.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipstep.config import check
from lipstep.errors import LipstepError
from lipstep.netdir import check_net_out, load_net_dir, save_net_dir

_WHAT = "LipSyncNet"   # names its directory in errors
S_EMBED_DIM = 1024
S_LIP_SHAPE = (3, 5, 224, 224)   # per-sample lip input of SyncNetS: C, T, H, W
S_AUDIO_SHAPE = (1, 13, 20)      # per-sample audio input of SyncNetS: 1, MFCC, steps

# ------------------------------------------------------------------------------------- SyncNet "S"


def _conv2d_bn(c_in: int, c_out: int, kernel, padding) -> list[nn.Module]:
    """Conv2d (with bias) + BatchNorm2d + ReLU: three Sequential slots."""
    return [nn.Conv2d(c_in, c_out, kernel, stride=1, padding=padding), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _conv3d_bn(c_in: int, c_out: int, kernel, stride=1, padding=0) -> list[nn.Module]:
    """Conv3d (with bias) + BatchNorm3d + ReLU: three Sequential slots."""
    return [nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding), nn.BatchNorm3d(c_out),
            nn.ReLU(inplace=True)]


def _fc_head(dim: int) -> nn.Sequential:
    """Linear 512->512, BatchNorm1d, ReLU, Linear 512->dim (indices 0..3)."""
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, dim))


class SyncNetS(nn.Module):
    """The official SyncNet "S" (``syncnet_v2.model``): same layers, same state-dict keys.

    Per-sample shapes are in comments as C x H x W (audio) and C x T x H x W (lip); see
    metrics.md §1.4 for the table this follows. Build it, then `load_official_syncnet`; run in eval
    mode (BatchNorm running statistics).
    """

    def __init__(self, embed_dim: int = S_EMBED_DIM):
        super().__init__()
        self.netcnnaud = nn.Sequential(                                     # in 1 x 13 x 20
            *_conv2d_bn(1, 64, 3, 1), nn.MaxPool2d(1, stride=1),             # 0-3:  64 x 13 x 20
            *_conv2d_bn(64, 192, 3, 1), nn.MaxPool2d(3, stride=(1, 2)),      # 4-7:  192 x 11 x 9
            *_conv2d_bn(192, 384, 3, 1),                                     # 8-10: 384 x 11 x 9
            *_conv2d_bn(384, 256, 3, 1),                                     # 11-13: 256 x 11 x 9
            *_conv2d_bn(256, 256, 3, 1), nn.MaxPool2d(3, stride=2),          # 14-17: 256 x 5 x 4
            *_conv2d_bn(256, 512, (5, 4), 0),                                # 18-20: 512 x 1 x 1
        )
        self.netfcaud = _fc_head(embed_dim)
        self.netcnnlip = nn.Sequential(                                     # in 3 x 5 x 224 x 224
            *_conv3d_bn(3, 96, (5, 7, 7), stride=(1, 2, 2)),                 # 0-2: 96 x 1 x 109 x 109
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),                       # 3:   96 x 1 x 54 x 54
            *_conv3d_bn(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),  # 4-6: 256 x 1 x 26 x 26
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),    # 7:   256 x 1 x 13 x 13
            *_conv3d_bn(256, 256, (1, 3, 3), padding=(0, 1, 1)),             # 8-10
            *_conv3d_bn(256, 256, (1, 3, 3), padding=(0, 1, 1)),             # 11-13
            *_conv3d_bn(256, 256, (1, 3, 3), padding=(0, 1, 1)),             # 14-16: 256 x 1 x 13 x 13
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),                       # 17:  256 x 1 x 6 x 6
            *_conv3d_bn(256, 512, (1, 6, 6)),                                # 18-20: 512 x 1 x 1 x 1
        )
        self.netfclip = _fc_head(embed_dim)

    def forward_aud(self, x: Tensor) -> Tensor:
        """MFCC windows [B, 1, 13, 20] -> audio embeddings [B, 1024]."""
        _expect_shape(x, S_AUDIO_SHAPE, "forward_aud")
        return self.netfcaud(self.netcnnaud(x).flatten(1))  # [B, 512, 1, 1] -> [B, 512] -> [B, 1024]

    def forward_lipfeat(self, x: Tensor) -> Tensor:
        """Lip windows [B, 3, 5, 224, 224] -> the 512-d visual feature before the FC head."""
        _expect_shape(x, S_LIP_SHAPE, "forward_lip")
        return self.netcnnlip(x).flatten(1)  # [B, 512, 1, 1, 1] -> [B, 512]

    def forward_lip(self, x: Tensor) -> Tensor:
        """Lip windows [B, 3, 5, 224, 224] (BGR, 0..255) -> visual embeddings [B, 1024]."""
        return self.netfclip(self.forward_lipfeat(x))


def _expect_shape(x: Tensor, shape: tuple[int, ...], where: str) -> None:
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"SyncNetS.{where} expects [B, {', '.join(map(str, shape))}], got {list(x.shape)}")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a torch-saved plain dict or a safetensors file; LipstepError naming `path` otherwise."""
    if not path.is_file():
        raise LipstepError(f"{path}: SyncNet weights file not found")
    if path.stat().st_size == 0:
        raise LipstepError(f"{path}: cannot read SyncNet weights: the file is empty")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only: the official file is a plain dict of tensors; refuse arbitrary pickles.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise many types for a bad file
        raise LipstepError(f"{path}: cannot read SyncNet weights: {_unreadable(path, e)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise LipstepError(f"{path}: not a SyncNet state dict (expected a plain dict of tensors, "
                           f"got {type(state).__name__})")
    return state


def _unreadable(path: Path, e: Exception) -> str:
    """Why a weights file did not load, in words (torch's own errors for garbage are a bare KeyError number
    or a long note on ``weights_only``)."""
    if path.suffix == ".safetensors":
        return f"not a valid safetensors file ({' '.join(str(e).split())[:120]})"
    if "Unsupported global" in str(e):
        return "it holds pickled Python objects, not only tensors (refused: loading them could run code)"
    return ("not a PyTorch weights file, or a damaged or truncated one (expected the official syncnet_v2.model: "
            "a torch-saved dict of tensors)")


def _match_state_dict(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Strict key and shape check; only BatchNorm ``num_batches_tracked`` may be absent from the file."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise LipstepError(f"{path}: keys do not match SyncNet S ({len(missing)} missing, e.g. {missing[:3]}; "
                           f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise LipstepError(f"{path}: {k} has shape {list(v.shape)}, SyncNet S needs {list(own[k].shape)}")


def load_official_syncnet(path: str | os.PathLike) -> SyncNetS:
    """`SyncNetS` with the weights of a local ``syncnet_v2.model`` (or a safetensors copy), in eval mode.

    Keys must match exactly (BatchNorm ``num_batches_tracked`` counters may be missing, as in the
    released file); a missing file, an unreadable one, wrong keys or wrong shapes raise a one-line
    `LipstepError` naming the file. Nothing is downloaded.
    """
    path = Path(path)
    state = _read_state_dict(path)
    model = SyncNetS()
    _match_state_dict(model, state, path)
    model.load_state_dict(state, strict=False)  # strictness was checked above, by name and shape
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------- LipSyncNet


@dataclass
class LipSyncConfig:
    image_size: int = 64            # S: side of the square face crops read; the net sees rows S/2..S
    frames: int = 5                 # video frames per window (0.2 s at 25 fps, as the official S)
    audio: Literal["mel", "mfcc"] = "mel"  # 10 ms audio features: log-mel (features.log_mel) or 13 MFCC
    audio_dim: int = 80             # features per 10 ms step: mel bands, or 13 for "mfcc"
    steps_per_frame: int = 4        # 10 ms feature steps per video frame (100 Hz / 25 fps)
    width: int = 32                 # channels of the first conv of each stream
    levels: int = 4                 # stride-2 stages of the visual stream (channels double, up to 8 x width)
    embed_dim: int = 256            # size of the L2-normalised embeddings

    @property
    def audio_steps(self) -> int:
        """Feature steps per window: frames x steps_per_frame (20 at the defaults)."""
        return self.frames * self.steps_per_frame

    def validate(self) -> None:
        check(self.frames >= 1 and self.steps_per_frame >= 1,
              f"frames and steps_per_frame must be >= 1, got {self.frames}, {self.steps_per_frame}")
        check(self.levels >= 1, f"levels must be >= 1, got {self.levels}")
        unit = 2 ** (self.levels + 1)
        check(self.image_size >= unit and self.image_size % unit == 0,
              f"image_size must be a positive multiple of 2**(levels + 1) = {unit}, got {self.image_size}")
        check(self.width >= 1 and self.embed_dim >= 1, "width and embed_dim must be >= 1")
        check(self.audio_dim >= 1, f"audio_dim must be >= 1, got {self.audio_dim}")
        check(self.audio != "mfcc" or self.audio_dim == 13, f"audio 'mfcc' has 13 coefficients, "
              f"got audio_dim={self.audio_dim}")


# BatchNorm, as in the official S and Wav2Lip's expert: with per-sample GroupNorm the embeddings
# collapsed to one constant vector within ~25 steps (loss stuck at chance on the synthetic world);
# batch statistics keep samples apart. Scoring runs in eval mode, so a window scores the same alone
# or in a batch.
def _block2d(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def _block1d(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm1d(c_out),
                         nn.ReLU(inplace=True))


class LipSyncNet(nn.Module):
    """lipstep's own SyncNet-style model for S px face crops (see the module docstring).

    ``forward_lip``: frames [B, T, 3, S, S] in [-1, 1] -> [B, E]; ``forward_aud``: features
    [B, T * steps_per_frame, D] (time-major) -> [B, E]; both unit-norm. ``logits(lip, aud)`` is
    ``exp(logit_scale) * cos + logit_bias``, the BCE logit of "in sync". Score in eval mode
    (BatchNorm running statistics).
    """

    def __init__(self, cfg: LipSyncConfig | None = None):
        super().__init__()
        cfg = cfg or LipSyncConfig()
        cfg.validate()
        self.cfg = cfg
        w, s = cfg.width, cfg.image_size
        chans = [w * 2 ** min(i, 3) for i in range(cfg.levels + 1)]
        layers = [_block2d(3 * cfg.frames, chans[0], 1)]
        for c_in, c_out in itertools.pairwise(chans):
            layers += [_block2d(c_in, c_out, 2), _block2d(c_out, c_out, 1)]
        self.lip_encoder = nn.Sequential(*layers)
        h_out, w_out = (s // 2) >> cfg.levels, s >> cfg.levels
        self.lip_head = nn.Linear(chans[-1] * h_out * w_out, cfg.embed_dim)
        a = 2 * w
        self.aud_encoder = nn.Sequential(_block1d(cfg.audio_dim, a, 1), _block1d(a, 2 * a, 2), _block1d(2 * a, 2 * a, 1),
                                         _block1d(2 * a, 4 * a, 2), _block1d(4 * a, 4 * a, 1))
        steps_out = (((cfg.audio_steps + 1) // 2) + 1) // 2  # two stride-2 convs, padding 1
        self.aud_head = nn.Linear(4 * a * steps_out, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))  # threshold at cos = 0.5 initially

    def forward_lip(self, frames: Tensor) -> Tensor:
        """Face crops [B, T, 3, S, S] in [-1, 1] -> unit-norm embeddings [B, E] (lower half only)."""
        cfg = self.cfg
        want = (cfg.frames, 3, cfg.image_size, cfg.image_size)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != want:
            raise ValueError(f"LipSyncNet.forward_lip expects [B, {', '.join(map(str, want))}], got {list(frames.shape)}")
        mouth = frames[..., cfg.image_size // 2:, :]             # [B, T, 3, S/2, S]
        x = mouth.flatten(1, 2)                                  # [B, 3T, S/2, S]
        x = self.lip_encoder(x)                                  # [B, C, S/2^(L+1), S/2^L]
        return F.normalize(self.lip_head(x.flatten(1)), dim=-1)  # [B, E]

    def forward_aud(self, feats: Tensor) -> Tensor:
        """Audio features [B, T * steps_per_frame, D] -> unit-norm embeddings [B, E]."""
        want = (self.cfg.audio_steps, self.cfg.audio_dim)
        if feats.ndim != 3 or tuple(feats.shape[1:]) != want:
            raise ValueError(f"LipSyncNet.forward_aud expects [B, {want[0]}, {want[1]}], got {list(feats.shape)}")
        x = self.aud_encoder(feats.transpose(1, 2))              # [B, D, steps] -> [B, C, ceil(steps / 4)]
        return F.normalize(self.aud_head(x.flatten(1)), dim=-1)  # [B, E]

    def logits(self, lip: Tensor, aud: Tensor) -> Tensor:
        """In-sync logits [B] of paired unit-norm embeddings: exp(scale) * cos + bias."""
        return self.logit_scale.exp() * (lip * aud).sum(-1) + self.logit_bias

    def forward(self, frames: Tensor, feats: Tensor) -> Tensor:
        """In-sync logits [B] of paired windows."""
        return self.logits(self.forward_lip(frames), self.forward_aud(feats))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def check_lipsync_out(directory: str | os.PathLike) -> None:
    """Refuse to write a LipSyncNet over anything but a LipSyncNet directory or an empty one."""
    check_net_out(directory, LipSyncConfig, what=_WHAT)


def save_lipsync(model: LipSyncNet, directory: str | os.PathLike, *, train: dict | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` (and ``train.json`` if given) as one atomic directory."""
    return save_net_dir(model, directory, what=_WHAT, metadata={"kind": "LipSyncNet"}, train=train)


def load_lipsync(directory: str | os.PathLike) -> LipSyncNet:
    """A `LipSyncNet` saved by `save_lipsync` (or `train_syncnet`), in eval mode, frozen."""
    return load_net_dir(directory, LipSyncConfig, LipSyncNet, what=_WHAT)


__all__ = [
    "S_AUDIO_SHAPE", "S_EMBED_DIM", "S_LIP_SHAPE", "LipSyncConfig", "LipSyncNet", "SyncNetS",
    "check_lipsync_out", "load_lipsync", "load_official_syncnet", "save_lipsync",
]
