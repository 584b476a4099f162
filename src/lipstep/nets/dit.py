"""AvatarDiT: the spatio-temporal diffusion transformer behind every lipstep teacher and student.

The net maps noisy video latents x_t [B, T, C, h, w], model time t [B] and a `Cond` (design.md §3)
to a raw output of the same shape. Whether that output is eps, v or a flow velocity is decided by
the schedule outside; the net does not know.

Tokens. Each latent frame is cut into N = (h/p)·(w/p) patches, embedded by one linear map and given
a spatial position and a temporal position (0..T-1). The reference latent goes through the SAME
patch embedding plus a "reference" type embedding; motion-frame latents (the M frames before the
window) get temporal positions -M..-1 and a "motion" type embedding. Reference and motion tokens
are context: they take part in self-attention but are never decoded and never see the audio.
With ``channel_context`` each video token also gets, through a zero-initialised linear map, the
patches of the last motion latent and of the reference at its own position (channel concatenation,
as image-to-video models condition on their first frame): a spatially aligned copy source.
With ``mouth_state`` a small audio -> mouth-state head (fitted on its own before the denoiser, then
frozen) reads each frame's audio window; an embedding of its reading joins that frame's audio tokens
and its adaLN conditioning, so the denoiser renders a given mouth state instead of discovering it.

Blocks (adaLN-Zero, Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"): the
timestep embedding modulates (shift, scale, gate) every branch (with ``mouth_state``, a video frame's
modulation also carries its mouth-state embedding; the context keeps the time's); all gates start at
zero, and the final projection is zero-initialised, so an untrained net outputs exactly 0. A block is
  self-attention  - "full": one joint attention over all T·N video + context tokens;
                    "factorized": spatial attention within each frame (video frames also see the
                    reference/motion context) then temporal attention across motion + video frames
                    at each spatial location;
  audio cross-attention - frame τ attends only to its own K audio vectors (T folded into batch);
  CFG cross-attention   - optional (FADA, algorithms.md §4): tokens attend to a guidance embedding
                    Emb = cfg_a(γ_a − γ_r) + cfg_r(γ_r − γ_b) + γ_b; output projection zero-init
                    (``cfg_layer="time"`` instead adds a zero-init MLP of the scales to the
                    timestep embedding: the ablation baseline without a layer);
  MLP.

Output. A final adaLN + linear map writes each token's p×p patch; with ``out_head`` a small
convolutional head (`ConvOutputHead`, zero-initialised) then refines the whole latent frame from that
output, the noisy input and the aligned last-motion and reference latents, so what crosses patch
borders and what depends on the local colour is drawn per pixel, not per patch.

Null conditions (classifier-free guidance, condition dropout): where `drop_ref` is True the
reference and motion content is replaced by a learned null token set (positions and type
embeddings stay); where `drop_audio` is True the audio (and viseme) stream is replaced by a learned
null audio embedding. Both are per-sample `torch.where`s, so one batch can mix condition patterns.

Sizes come from one table, `PRESETS`; `param_count(cfg)` gives the exact count without building.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from lipstep.config import check, from_dict
from lipstep.errors import ConfigError

if TYPE_CHECKING:  # type only: nets sit before diffusion in the import order
    from lipstep.diffusion.cond import Cond

TIME_FREQ_DIM = 256  # width of the sinusoidal timestep features fed to the time MLP
INIT_STD = 0.02      # std of learned embeddings (positions, types, null conditions, CFG tokens)
MOUTH_FREQS = 6      # sin/cos frequencies π·2^k (k < MOUTH_FREQS) of each mouth-state number before its MLP

# One table for every model size. head dim = width / heads.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"width": 64, "depth": 2, "heads": 2},      # unit tests
    "small": {"width": 192, "depth": 6, "heads": 6},    # CPU default
    "base": {"width": 384, "depth": 12, "heads": 6},    # one GPU
    "large": {"width": 768, "depth": 16, "heads": 12},  # multi-GPU
}


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class DiTConfig:
    """Architecture of an AvatarDiT (saved as denoiser/config.json). Defaults = the "small" preset."""

    latent_channels: int = 4      # C of the video / reference / motion latents
    latent_size: int = 8          # h = w of the latents
    patch: int = 1                # p: one token per p×p latent patch (latent_size % p == 0)
    width: int = 192              # token width
    depth: int = 6                # number of DiTBlocks
    heads: int = 6                # attention heads (width % heads == 0)
    mlp_ratio: float = 4.0        # MLP hidden width = width · mlp_ratio
    frames: int = 8               # T max: temporal positions 0..frames-1 (shorter T works too)
    motion_frames: int = 2        # M max: motion frames get temporal positions -M..-1 (fewer/none ok)
    audio_dim: int = 80           # D: width of one audio feature vector
    audio_window: int = 16        # K: audio feature vectors per video frame
    audio_mean: float = 0.0       # audio features enter the audio MLP as (a - audio_mean) / audio_std:
    audio_std: float = 1.0        #   log-mel sits near -9 ± 3, so a fixed standardisation (training-set
    #   statistics, `lipstep.train.teacher.audio_stats`) keeps its first layer out of saturation; 0 / 1 = off
    attention: Literal["full", "factorized"] = "full"  # joint over all tokens | spatial then temporal
    use_visemes: bool = False     # add a learned viseme embedding (cond.visemes [B, T]) to the audio
    n_visemes: int = 15           # viseme classes (algorithms.md §5.3)
    grad_checkpointing: bool = False  # recompute each block in backward (less activation memory)
    cfg_layer: Literal["none", "tokens", "plain", "time"] = "none"  # how the guidance scales enter:
    #   "tokens" = FADA's CFG cross-attention after each audio cross-attention over learnable tokens
    #   (Emb linear in the scales); "plain" = the same layer over an MLP of (cfg_a, cfg_r) (ablation:
    #   CFG layer without tokens); "time" = an MLP of the scales added to the timestep embedding, no
    #   extra layer (ablation: time-embedding injection); "none" = the scales are not an input
    cfg_tokens: int = 4           # n_tokens of the guidance embedding the CFG layer attends to
    dropout: float = 0.0          # dropout probability in attention weights and MLP
    channel_context: bool = False  # also give every video token the same-position patch of the last motion
    #   latent and of the reference latent (channel concatenation through a zero-initialised linear map, as
    #   image-to-video models condition on their first frame): a spatially aligned copy source, so the net
    #   spends its capacity on what changes (the mouth) instead of re-learning to copy the face through
    #   attention; null (zeros) where the reference is dropped. Off leaves the net as before
    mouth_state: int = 0          # outputs of an audio -> mouth-state head (`MouthStateHead`, fitted before the
    #   denoiser and then frozen, `lipstep.train.mouth_head`) whose reading of each frame's audio window conditions
    #   that frame: an embedding of it joins the frame's audio tokens and its adaLN (zero-initialised); 0 = none
    mouth_head_width: int = 128   # channels of the mouth-state head's convolutions
    blink: bool = False           # condition every frame on its eyelid closure (cond.blink [B, T] in [0, 1]: the world's
    #   blink labels in training, a `lipstep.data.blinks.BlinkSchedule` at inference) along three paths, all
    #   zero-initialised: an embedding of it joins the frame's adaLN (and the output head's FiLM), the closure times
    #   a learned map over the token grid (one vector per position) is added to the frame's video tokens, and with
    #   `out_head` the closure times a learned map over the latent grid enters the head, where the lids get drawn
    #   (experiments/streaming/README.md). Never dropped, so guidance leaves it alone. Off = no blink input (the
    #   bundled models draw blinks after sampling with an eye net instead, `lipstep.nets.eyes`)
    out_head: int = 0             # hidden channels of a convolutional output head (`ConvOutputHead`) that refines
    #   the unpatchified output at latent resolution from it, the noisy input and the aligned last-motion and
    #   reference latents, modulated by the time embedding (zero-initialised: the net is unchanged at the
    #   start); it draws what crosses patch borders and what depends on the local colour; 0 = none

    @classmethod
    def preset(cls, name: str, **overrides) -> DiTConfig:
        """The named size from `PRESETS`, with any other field overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown DiT preset '{name}'; choose one of {', '.join(PRESETS)}")
        cfg = from_dict(cls, {**PRESETS[name], **overrides})  # unknown keys / wrong types: ConfigError
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Range checks; raises ConfigError."""
        check(self.width > 0 and self.depth > 0 and self.heads > 0, "DiT width/depth/heads must be > 0")
        check(self.width % self.heads == 0, f"DiT width {self.width} not divisible by heads {self.heads}")
        check(self.patch > 0 and self.latent_size % self.patch == 0,
              f"DiT latent_size {self.latent_size} not divisible by patch {self.patch}")
        check(self.frames > 0 and self.motion_frames >= 0, "DiT frames must be > 0, motion_frames >= 0")
        check(self.audio_dim > 0 and self.audio_window > 0, "DiT audio_dim/audio_window must be > 0")
        check(self.audio_std > 0, f"DiT audio_std must be > 0, got {self.audio_std}")
        check(self.mlp_ratio > 0 and 0.0 <= self.dropout < 1.0, "DiT mlp_ratio > 0 and 0 <= dropout < 1")
        check(self.cfg_tokens > 0 and self.n_visemes > 0, "DiT cfg_tokens/n_visemes must be > 0")
        check(self.out_head >= 0, f"DiT out_head must be >= 0 (0 = none), got {self.out_head}")
        check(self.mouth_state >= 0 and self.mouth_head_width > 0,
              f"DiT mouth_state must be >= 0 and mouth_head_width > 0, got {self.mouth_state}, {self.mouth_head_width}")
        check(self.attention in ("full", "factorized"), f"DiT attention: bad value {self.attention!r}")
        check(self.cfg_layer in ("none", "tokens", "plain", "time"), f"DiT cfg_layer: bad value {self.cfg_layer!r}")

    @property
    def tokens_per_frame(self) -> int:
        """N = (h/p)·(w/p)."""
        return (self.latent_size // self.patch) ** 2

    @property
    def patch_dim(self) -> int:
        """Values in one patch: C·p·p."""
        return self.latent_channels * self.patch ** 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)


# Options removed on 2026-12-05 (they did not pay off; their results stay in experiments/teacher/README.md),
# with the value that left the net as it is now. Denoiser configs saved before then still name them.
REMOVED_OPTIONS: dict[str, object] = {"audio_adaln": False, "audio_probe": 0}


def drop_removed_options(data: dict) -> dict:
    """A saved DiTConfig dict without the `REMOVED_OPTIONS` keys (a copy).

    A removed key at its neutral value (``audio_adaln: false``, ``audio_probe: 0``) is dropped silently;
    any other value means the weights need the removed code, and raises ConfigError.
    """
    for key, neutral in REMOVED_OPTIONS.items():
        if key in data and (data[key] != neutral or type(data[key]) is not type(neutral)):
            value = json.dumps(data[key])
            raise ConfigError(f"this denoiser was trained with the removed option {key}={value}; lipstep removed "
                              f"it on 2026-12-05 (see experiments/teacher/README.md), so load this denoiser with "
                              f"a lipstep commit from before that date")
    return {k: v for k, v in data.items() if k not in REMOVED_OPTIONS}


# ---------------------------------------------------------------------------------------------
# Parameter counts (exact, without building; tests check them against built models)


def _linear_n(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _attention_n(width: int) -> int:
    return 4 * _linear_n(width, width)  # q, k, v, out (self-attention fuses q,k,v; same count)


def _block_n(cfg: DiTConfig) -> int:
    w, n_self = cfg.width, 2 if cfg.attention == "factorized" else 1
    n = _linear_n(w, 3 * (n_self + 2) * w)                  # adaLN: (shift, scale, gate) per branch
    n += (n_self + 1) * _attention_n(w)                     # self-attention(s) + audio cross-attention
    n += _linear_n(w, cfg.mlp_hidden) + _linear_n(cfg.mlp_hidden, w)
    return n + (_attention_n(w) if cfg.cfg_layer in ("tokens", "plain") else 0)


def _embedding_n(cfg: DiTConfig) -> int:
    w, n_tok = cfg.width, cfg.tokens_per_frame
    n = _linear_n(cfg.patch_dim, w) + 2 * n_tok * w                   # patch embed, pos_space, null_ctx
    n += (cfg.motion_frames + cfg.frames) * w + 2 * w                 # pos_time, type_ref, type_motion
    n += _linear_n(TIME_FREQ_DIM, w) + _linear_n(w, w)                # time MLP
    n += _linear_n(cfg.audio_dim, w) + _linear_n(w, w) + 2 * cfg.audio_window * w  # audio MLP, pos, null
    n += _linear_n(2 * cfg.patch_dim, w) if cfg.channel_context else 0  # channel-wise context embedding
    if cfg.mouth_state:                                               # mouth-state head + its embedding
        hw = cfg.mouth_head_width
        n += 3 * cfg.audio_dim * hw + hw + 3 * hw * hw + hw + _linear_n(hw, hw) + _linear_n(hw, cfg.mouth_state)
        n += _linear_n(2 * MOUTH_FREQS * cfg.mouth_state, w) + _linear_n(w, w)
    if cfg.blink:                                                     # eyelid-closure embedding + spatial map
        n += _linear_n(2 * MOUTH_FREQS, w) + _linear_n(w, w) + n_tok * w
    return n + (cfg.n_visemes * w if cfg.use_visemes else 0)


def _cfg_embedding_n(cfg: DiTConfig) -> int:
    w, n_tok = cfg.width, cfg.cfg_tokens
    return {"none": 0, "tokens": 3 * n_tok * w,
            "plain": _linear_n(2, w) + _linear_n(w, n_tok * w),
            "time": _linear_n(2, w) + _linear_n(w, w)}[cfg.cfg_layer]


def _out_head_n(cfg: DiTConfig) -> int:
    c, hid = cfg.latent_channels, cfg.out_head
    if not hid:
        return 0
    blink = hid * cfg.latent_size ** 2 if cfg.blink else 0                              # the head's eyelid map
    return (4 * c * 9 * hid + hid) + _linear_n(cfg.width, 2 * hid) + (hid * 9 * c + c) + blink  # conv, FiLM, conv


def param_count(cfg: DiTConfig) -> int:
    """Exact number of parameters of `AvatarDiT(cfg)`."""
    final = _linear_n(cfg.width, 2 * cfg.width) + _linear_n(cfg.width, cfg.patch_dim) + _out_head_n(cfg)
    return _embedding_n(cfg) + _cfg_embedding_n(cfg) + cfg.depth * _block_n(cfg) + final


def forward_flops(net: nn.Module, *args, **kwargs) -> int:
    """Floating-point operations of one call ``net(*args, **kwargs)``, counted by torch's FLOP counter
    (matmuls, convolutions; attention through the math kernel, whose FLOPs the fused CPU kernels hide)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        net(*args, **kwargs)
    return int(counter.get_total_flops())


def describe_presets(**overrides) -> str:
    """A table of the size presets with their parameter counts (for the CLI)."""
    rows = [f"{'preset':<7} {'width':>5} {'depth':>5} {'heads':>5} {'head dim':>8} {'params':>9}"]
    for name in PRESETS:
        cfg = DiTConfig.preset(name, **overrides)
        rows.append(f"{name:<7} {cfg.width:>5} {cfg.depth:>5} {cfg.heads:>5} "
                    f"{cfg.width // cfg.heads:>8} {param_count(cfg) / 1e6:>7.2f} M")
    cfg = DiTConfig(**overrides)
    rows.append(f"(latents {cfg.latent_channels}×{cfg.latent_size}×{cfg.latent_size}, patch {cfg.patch}, "
                f"{cfg.frames} frames, {cfg.attention} attention, cfg_layer={cfg.cfg_layer})")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _linear(n_in: int, n_out: int, zero: bool = False) -> nn.Linear:
    """Linear layer with Xavier-uniform weights (or all zeros) and zero bias."""
    layer = nn.Linear(n_in, n_out)
    if zero:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _embedding(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * INIT_STD)


def _norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    """View a per-sample vector v [B, W] (or mask [B]) so it broadcasts over x's token axes."""
    return v.view(v.shape[0], *([1] * (x.dim() - v.dim())), *v.shape[1:])


def _per_frame(v: Tensor, x: Tensor) -> Tensor:
    """View a modulation v [B, W] (one per sample) or [B, F, W] (one per frame) over frames x [B, F, N, W]."""
    return v[:, :, None] if v.dim() == 3 else _per_sample(v, x)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x·(1 + scale) + shift, with shift/scale [B, W] broadcast over x [B, ..., W], or [B, F, W]
    (per frame) over x [B, F, N, W]."""
    return x * (1 + _per_frame(scale, x)) + _per_frame(shift, x)


def _frames(v: Tensor, n: int) -> Tensor:
    """A modulation [B, W] repeated over n frames -> [B, n, W]; a per-frame one [B, n, W] as it is."""
    return v if v.dim() == 3 else v[:, None].expand(-1, n, -1)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of model time t [B] -> [B, dim] (fp32; cos half then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # [half]
    args = t.float()[:, None] * freqs[None]                                                  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)                            # [B, dim]


def _split_heads(x: Tensor, heads: int) -> Tensor:
    return rearrange(x, "s l (h d) -> s h l d", h=heads)  # [S, L, W] -> [S, heads, L, W/heads]


def _merge_heads(x: Tensor) -> Tensor:
    return rearrange(x, "s h l d -> s l (h d)")  # [S, heads, L, d] -> [S, L, heads·d]


# ---------------------------------------------------------------------------------------------
# Layers


class SelfAttention(nn.Module):
    """Multi-head self-attention; `project`/`attend` let a caller add extra key/value tokens."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = _linear(width, 3 * width)
        self.proj = _linear(width, width)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [S, L, W] -> q, k, v, each [S, heads, L, d]."""
        return tuple(_split_heads(y, self.heads) for y in self.qkv(x).chunk(3, dim=-1))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [S, h, Lq, d], k/v [S, h, Lk, d] -> [S, Lq, W]."""
        p = self.dropout if self.training else 0.0
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=p)))

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(*self.project(x))


class CrossAttention(nn.Module):
    """Multi-head cross-attention: tokens x [S, L, W] attend to a context [S, Lc, W]."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = _linear(width, width)
        self.kv = _linear(width, 2 * width)
        self.proj = _linear(width, width)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        q = _split_heads(self.q(x), self.heads)                                       # [S, h, L, d]
        k, v = (_split_heads(y, self.heads) for y in self.kv(context).chunk(2, -1))   # [S, h, Lc, d]
        p = self.dropout if self.training else 0.0
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=p)))


class CFGCrossAttention(nn.Module):
    """FADA's CFG layer: tokens attend to the guidance embedding; zero-init output = identity at start."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm = _norm(width)
        self.attn = CrossAttention(width, heads, dropout)
        nn.init.zeros_(self.attn.proj.weight)  # so switching the layer on leaves a trained net unchanged
        nn.init.zeros_(self.attn.proj.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [B, L, W], emb [B, n_tokens, W] -> x + attention output [B, L, W]."""
        if self.training and self.attn.dropout > 0:
            return x + self.attn(self.norm(x), emb)
        return x + self.folded(self.norm(x), emb)

    def folded(self, h: Tensor, emb: Tensor) -> Tensor:
        """The attention output with the query and output projections folded into the n keys/values.

        With n_tokens keys per sample, q·k = h·(W_qᵀk) + b_q·k and proj(Σ a·v) = Σ a·(W_p v) + b_p: both
        products then cost heads·n·W per token instead of W² (n·heads = 24 against W = 192 for the
        `small` student), the same numbers up to float rounding. This is most of what the one-pass
        student's CFG layers cost at inference.
        """
        a = self.attn
        s, n, w = emb.shape
        heads = a.heads
        d = w // heads
        k, v = (y.view(s, n, heads, d) for y in a.kv(emb).chunk(2, -1))                    # [S, n, h, d]
        wq = a.q.weight.view(heads, d, w)                                                   # [h, d, W]
        keys = torch.einsum("snhd,hdw->shnw", k, wq).mul(d ** -0.5).reshape(s, heads * n, w)
        bias = torch.einsum("snhd,hd->shn", k, a.q.bias.view(heads, d)).mul(d ** -0.5).reshape(s, 1, heads * n)
        wp = a.proj.weight.view(w, heads, d)                                                # [W, h, d]
        values = torch.einsum("snhd,whd->shnw", v, wp).reshape(s, heads * n, w)
        logits = torch.baddbmm(bias, h, keys.transpose(1, 2))                               # [S, L, h·n]
        weights = logits.view(s, -1, heads, n).softmax(-1).view(s, -1, heads * n)
        return torch.baddbmm(a.proj.bias.view(1, 1, w), weights, values)                    # [S, L, W]


class CFGTokens(nn.Module):
    """FADA learnable guidance tokens: Emb = cfg_a(γ_a − γ_r) + cfg_r(γ_r − γ_b) + γ_b (algorithms.md §4.1)."""

    def __init__(self, n_tokens: int, width: int):
        super().__init__()
        self.gamma_a = _embedding(n_tokens, width)  # audio + reference condition
        self.gamma_r = _embedding(n_tokens, width)  # reference only
        self.gamma_b = _embedding(n_tokens, width)  # neither (base)

    def forward(self, scales: Tensor) -> Tensor:
        """scales [B, 2] = (cfg_a, cfg_r) -> Emb [B, n_tokens, W]; linear in the scales like the CFG sum."""
        cfg_a, cfg_r = scales[:, 0, None, None], scales[:, 1, None, None]  # [B, 1, 1]
        return cfg_a * (self.gamma_a - self.gamma_r) + cfg_r * (self.gamma_r - self.gamma_b) + self.gamma_b


class CFGScaleMLP(nn.Module):
    """Ablation baseline ("plain"): guidance embedding = MLP(cfg_a, cfg_r), not linear in the scales."""

    def __init__(self, n_tokens: int, width: int):
        super().__init__()
        self.n_tokens = n_tokens
        self.mlp = nn.Sequential(_linear(2, width), nn.SiLU(), _linear(width, n_tokens * width))

    def forward(self, scales: Tensor) -> Tensor:
        """scales [B, 2] -> [B, n_tokens, W]."""
        return rearrange(self.mlp(scales), "b (n w) -> b n w", n=self.n_tokens)


class CFGTimeEmbed(nn.Module):
    """Ablation baseline ("time"): MLP(cfg_a, cfg_r) added to the timestep embedding; zero-init output."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(_linear(2, width), nn.SiLU(), _linear(width, width, zero=True))

    def forward(self, scales: Tensor) -> Tensor:
        """scales [B, 2] -> [B, W], added to the time embedding (zero at init: the net is unchanged)."""
        return self.mlp(scales)


class Mlp(nn.Module):
    """Token-wise feed-forward: Linear -> GELU(tanh) -> Linear."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = _linear(width, hidden), _linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x), approximate="tanh")))


class DiTBlock(nn.Module):
    """Self-attention (full or factorized) -> per-frame audio cross-attention -> [CFG layer] -> MLP.

    Every branch is adaLN-Zero: h = modulate(norm(z), shift, scale); z += gate · branch(h), with the
    (shift, scale, gate) triples produced from the timestep embedding by one zero-initialised linear.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        w, drop = cfg.width, cfg.dropout
        self.factorized = cfg.attention == "factorized"
        self.n_branches = 4 if self.factorized else 3
        self.norm = _norm(w)
        self.ada = nn.Sequential(nn.SiLU(), _linear(w, 3 * self.n_branches * w, zero=True))
        self.attn = SelfAttention(w, cfg.heads, drop)
        self.attn_time = SelfAttention(w, cfg.heads, drop) if self.factorized else None
        self.audio = CrossAttention(w, cfg.heads, drop)
        self.cfg_attn = CFGCrossAttention(w, cfg.heads, drop) if cfg.cfg_layer in ("tokens", "plain") else None
        self.mlp = Mlp(w, cfg.mlp_hidden, drop)

    def forward(self, x: Tensor, ctx: Tensor, audio: Tensor, c: Tensor, c_ctx: Tensor, emb: Tensor | None):
        """x [B, T, N, W] video, ctx [B, F, N, W] reference (+ motion), audio [B, T, K, W], c the video's
        conditioning ([B, W], or [B, T, W] per frame with a mouth state), c_ctx [B, W] the context's,
        emb [B, n, W] guidance embedding or None -> (x, ctx)."""
        mx = self._triples(c)
        mc = list(mx) if c_ctx is c else self._triples(c_ctx)
        if self.factorized:
            x, ctx = self._spatial(x, ctx, mx.pop(0), mc.pop(0))
            x, ctx = self._temporal(x, ctx, mx.pop(0), mc.pop(0))
        else:
            x, ctx = self._joint(x, ctx, mx.pop(0), mc.pop(0))
        x = self._audio(x, audio, *mx.pop(0))
        mc.pop(0)
        if self.cfg_attn is not None:
            x = self._cfg(x, emb)
        return self._mlp(x, ctx, mx.pop(0), mc.pop(0))

    def _triples(self, c: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """The (shift, scale, gate) of every branch, in order, from a conditioning vector [B, (T,) W]."""
        mods = self.ada(c).chunk(3 * self.n_branches, dim=-1)
        return [mods[i:i + 3] for i in range(0, len(mods), 3)]

    def _joint(self, x, ctx, mx, mc):
        """Full attention over all context + video tokens of a sample."""
        n_ctx = ctx.shape[1] * ctx.shape[2]
        h = torch.cat([modulate(self.norm(ctx), *mc[:2]).flatten(1, 2),
                       modulate(self.norm(x), *mx[:2]).flatten(1, 2)], dim=1)  # [B, F·N + T·N, W]
        o = self.attn(h)
        x = x + _per_frame(mx[2], x) * o[:, n_ctx:].view_as(x)
        ctx = ctx + _per_frame(mc[2], ctx) * o[:, :n_ctx].view_as(ctx)
        return x, ctx

    def _spatial(self, x, ctx, mx, mc):
        """Attention within each frame; video frames also see the context, context sees itself."""
        b, t = x.shape[:2]
        hx = rearrange(modulate(self.norm(x), *mx[:2]), "b t n w -> (b t) n w")        # [B·T, N, W]
        hc = rearrange(modulate(self.norm(ctx), *mc[:2]), "b f n w -> b (f n) w")      # [B, F·N, W]
        qx, kx, vx = self.attn.project(hx)                                              # [B·T, h, N, d]
        qc, kc, vc = self.attn.project(hc)                                              # [B, h, F·N, d]
        kc_t, vc_t = kc.repeat_interleave(t, dim=0), vc.repeat_interleave(t, dim=0)     # [B·T, h, F·N, d]
        ox = self.attn.attend(qx, torch.cat([kx, kc_t], 2), torch.cat([vx, vc_t], 2))   # [B·T, N, W]
        oc = self.attn.attend(qc, kc, vc)                                               # [B, F·N, W]
        x = x + _per_frame(mx[2], x) * rearrange(ox, "(b t) n w -> b t n w", b=b)
        ctx = ctx + _per_frame(mc[2], ctx) * oc.view_as(ctx)
        return x, ctx

    def _temporal(self, x, ctx, mx, mc):
        """Attention across motion + video frames at each spatial location (reference excluded)."""
        b, n_motion, t = x.shape[0], ctx.shape[1] - 1, x.shape[1]
        z = torch.cat([ctx[:, 1:], x], dim=1)                                          # [B, M+T, N, W]
        shift, scale, gate = (torch.cat([_frames(vc, n_motion), _frames(vx, t)], dim=1) for vc, vx in zip(mc, mx))
        h = rearrange(modulate(self.norm(z), shift, scale), "b f n w -> (b n) f w")    # [B·N, M+T, W]
        o = rearrange(self.attn_time(h), "(b n) f w -> b f n w", b=b)                  # [B, M+T, N, W]
        z = z + _per_frame(gate, z) * o
        return z[:, n_motion:], torch.cat([ctx[:, :1], z[:, :n_motion]], dim=1)

    def _audio(self, x, audio, shift, scale, gate):
        """Frame τ's tokens attend only to frame τ's K audio vectors (T folded into the batch)."""
        b = x.shape[0]
        q = rearrange(modulate(self.norm(x), shift, scale), "b t n w -> (b t) n w")  # [B·T, N, W]
        kv = rearrange(audio, "b t k w -> (b t) k w")                                 # [B·T, K, W]
        o = rearrange(self.audio(q, kv), "(b t) n w -> b t n w", b=b)                 # [B, T, N, W]
        return x + _per_frame(gate, x) * o

    def _cfg(self, x, emb):
        """All video tokens of a sample attend to its guidance embedding."""
        return self.cfg_attn(x.flatten(1, 2), emb).view_as(x)  # [B, T·N, W] -> [B, T, N, W]

    def _mlp(self, x, ctx, mx, mc):
        x = x + _per_frame(mx[2], x) * self.mlp(modulate(self.norm(x), *mx[:2]))
        ctx = ctx + _per_frame(mc[2], ctx) * self.mlp(modulate(self.norm(ctx), *mc[:2]))
        return x, ctx


class MouthStateHead(nn.Module):
    """Standardised audio windows [..., K, D] -> mouth state [..., S] in (0, 1).

    Two 1-D convolutions over the K feature vectors of one video frame's window, mean-pooled, and a
    2-layer head. A deterministic regressor: the synthetic world's mouth state is a function of the
    speech, and a head like this reads it from the frame's 160 ms log-mel window with an openness MAE
    of about 0.04 on held-out identities (``experiments/teacher/audio_mouth_bound.py``).
    """

    def __init__(self, audio_dim: int, width: int, outputs: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(audio_dim, width, 3, padding=1), nn.GELU(),
                                  nn.Conv1d(width, width, 3, padding=1), nn.GELU())
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, outputs))

    def forward(self, audio: Tensor) -> Tensor:
        lead = audio.shape[:-2]
        h = self.conv(audio.reshape(-1, *audio.shape[-2:]).transpose(1, 2)).mean(-1)   # [N, width]
        return torch.sigmoid(self.head(h)).view(*lead, -1)


def mouth_features(state: Tensor) -> Tensor:
    """Mouth state [..., S] in [0, 1] -> sin/cos features [..., 2·MOUTH_FREQS·S] (fine steps stay apart)."""
    freqs = math.pi * 2.0 ** torch.arange(MOUTH_FREQS, device=state.device, dtype=state.dtype)   # [F]
    args = (state[..., None] * freqs).flatten(-2)                                                # [..., S·F]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + linear to patch values; zero-initialised, so the untrained net outputs 0."""

    def __init__(self, width: int, patch_dim: int):
        super().__init__()
        self.norm = _norm(width)
        self.ada = nn.Sequential(nn.SiLU(), _linear(width, 2 * width, zero=True))
        self.linear = _linear(width, patch_dim, zero=True)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x [B, T, N, W], c [B, W] or per frame [B, T, W] -> [B, T, N, C·p·p]."""
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class ConvOutputHead(nn.Module):
    """Refines the unpatchified output at latent resolution (U-ViT ends the same way, with a 3×3 conv).

    A linear map per token writes each p×p patch on its own, so whatever the net is unsure of comes
    out as a blend of learned patch motifs with seams at the patch borders. This head sees, per
    pixel of the latent grid, the transformer's output, the noisy input and the aligned last-motion
    and reference latents (their local colour: the same mouth offset differs in sign on a dark and a
    light face); conv 3×3 -> time/mouth FiLM -> SiLU -> conv 3×3, zero-initialised, added to the output.

    With ``blink_size`` (nets that read blinks) each frame's eyelid closure times a learned map over the latent
    grid [hidden, h, w] (zero-initialised) is added after the first conv: the head is where a blink gets drawn
    (the transformer's own output keeps the reference's open eyes, experiments/streaming/README.md), and a
    per-frame FiLM alone does not tell it where the eyes are.
    """

    def __init__(self, channels: int, hidden: int, width: int, blink_size: int = 0):
        super().__init__()
        self.conv_in = nn.Conv2d(4 * channels, hidden, 3, padding=1)
        self.film = nn.Sequential(nn.SiLU(), _linear(width, 2 * hidden, zero=True))
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.blink_map = nn.Parameter(torch.zeros(hidden, blink_size, blink_size)) if blink_size else None

    def forward(self, y: Tensor, x_t: Tensor, context: Tensor, c: Tensor, blink: Tensor | None = None) -> Tensor:
        """y, x_t [B, T, C, h, w], context [B, 2C, h, w], c [B, W] or [B, T, W], blink [B, T] (with a blink map)
        -> correction [B, T, C, h, w]."""
        b, t = y.shape[:2]
        ctx = context[:, None].expand(b, t, *context.shape[1:])
        h = self.conv_in(torch.cat([y, x_t, ctx], dim=2).flatten(0, 1))          # [B·T, hidden, h, w]
        if self.blink_map is not None:
            h = h + blink.flatten().to(h.dtype)[:, None, None, None] * self.blink_map
        shift, scale = self.film(c).chunk(2, dim=-1)                             # [B, (T,) hidden]
        if shift.dim() == 2:
            shift, scale = (v[:, None].expand(b, t, v.shape[-1]) for v in (shift, scale))
        h = F.silu(h * (1 + scale.flatten(0, 1)[..., None, None]) + shift.flatten(0, 1)[..., None, None])
        return self.conv_out(h).unflatten(0, (b, t))


# ---------------------------------------------------------------------------------------------
# The network


@dataclass
class BlockFeatures:
    """`AvatarDiT.features`: video tokens after some blocks and the conditioning the net read."""

    tokens: list[Tensor]        # [B, T, N, W] per requested block, in block order
    blocks: list[int]           # the block indices, ascending
    time: Tensor                # [B, W] the time (+ guidance, cfg_layer "time") embedding
    audio: Tensor               # [B, T, W] the audio tokens, mean over the audio window
    context: Tensor             # [B, W] the reference (+ motion) tokens after the last block run, mean


class AvatarDiT(nn.Module):
    """Spatio-temporal DiT over video latent patches, conditioned on reference, motion and audio."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        w, n = cfg.width, cfg.tokens_per_frame
        self.patch_embed = _linear(cfg.patch_dim, w)
        self.pos_space = _embedding(n, w)                             # [N, W]
        self.pos_time = _embedding(cfg.motion_frames + cfg.frames, w)  # index = frame + motion_frames
        self.type_ref, self.type_motion = _embedding(w), _embedding(w)
        self.null_ctx = _embedding(n, w)                              # content of dropped ref/motion
        self.time_mlp = nn.Sequential(_linear(TIME_FREQ_DIM, w), nn.SiLU(), _linear(w, w))
        self.audio_mlp = nn.Sequential(_linear(cfg.audio_dim, w), nn.GELU(approximate="tanh"), _linear(w, w))
        self.pos_audio = _embedding(cfg.audio_window, w)              # [K, W]
        self.null_audio = _embedding(cfg.audio_window, w)             # content of dropped audio
        self.viseme = nn.Embedding(cfg.n_visemes, w) if cfg.use_visemes else None
        if self.viseme is not None:
            nn.init.normal_(self.viseme.weight, std=INIT_STD)
        self.context_embed = _linear(2 * cfg.patch_dim, w, zero=True) if cfg.channel_context else None
        self.mouth_head = self.mouth_embed = None
        if cfg.mouth_state:
            # fitted on its own before the denoiser trains (lipstep.train.mouth_head), never by a denoiser optimiser
            self.mouth_head = MouthStateHead(cfg.audio_dim, cfg.mouth_head_width, cfg.mouth_state).requires_grad_(False)
            self.mouth_embed = nn.Sequential(_linear(2 * MOUTH_FREQS * cfg.mouth_state, w), nn.SiLU(),
                                             _linear(w, w, zero=True))
        self.blink_embed = self.blink_space = None
        if cfg.blink:
            self.blink_embed = nn.Sequential(_linear(2 * MOUTH_FREQS, w), nn.SiLU(), _linear(w, w, zero=True))
            self.blink_space = nn.Parameter(torch.zeros(n, w))          # [N, W], scaled by each frame's closure
        self.cfg_embed = _guidance_embedder(cfg)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(w, cfg.patch_dim)
        self.out_head = (ConvOutputHead(cfg.latent_channels, cfg.out_head, w, cfg.latent_size if cfg.blink else 0)
                         if cfg.out_head else None)

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """x_t [B, T, C, h, w], t [B] (model time, e.g. 1000·σ), cond -> raw output [B, T, C, h, w]."""
        x, ctx, audio, c_video, c, emb, drop_ref = self._embed(x_t, t, cond)
        for block in self.blocks:
            x, ctx = self._run_block(block, x, ctx, audio, c_video, c, emb)
        y = self.unpatchify(self.final(x, c_video))                        # [B, T, C, h, w]
        if self.out_head is not None:
            y = y + self.out_head(y, x_t, self.aligned_context(cond.reference, cond.motion, drop_ref), c_video,
                                  cond.blink)
        return y

    def features(self, x_t: Tensor, t: Tensor, cond: Cond, blocks: Sequence[int]) -> BlockFeatures:
        """The video tokens after each block in ``blocks`` (0-based) and the conditioning the net read:
        what a discriminator built on this net's trunk looks at (LADD, DMD2; `lipstep.nets.discriminator`).
        Stops after the deepest requested block; runs under the caller's grad mode (a frozen net still
        passes gradients to ``x_t``)."""
        wanted = sorted({int(b) for b in blocks})
        if not wanted or wanted[0] < 0 or wanted[-1] >= len(self.blocks):
            raise ConfigError(f"feature blocks must be in [0, {len(self.blocks) - 1}], got {list(blocks)}")
        x, ctx, audio, c_video, c, emb, _ = self._embed(x_t, t, cond)
        tokens = []
        for i, block in enumerate(self.blocks[:wanted[-1] + 1]):
            x, ctx = self._run_block(block, x, ctx, audio, c_video, c, emb)
            if i in wanted:
                tokens.append(x)
        return BlockFeatures(tokens=tokens, blocks=wanted, time=c, audio=audio.mean(dim=2),
                             context=ctx.mean(dim=(1, 2)))

    def _embed(self, x_t: Tensor, t: Tensor, cond: Cond):
        """Everything before the first block: video tokens, context tokens, audio tokens, the video's and the
        context's conditioning vectors, the guidance embedding and the reference-drop mask."""
        self._check_inputs(x_t, cond)
        drop_audio, drop_ref = cond.masks()
        x = self.embed_video(x_t)                                          # [B, T, N, W]
        if self.blink_space is not None:                                   # closure x the learned eyelid map
            x = x + cond.blink[..., None, None].to(x.dtype) * self.blink_space
        if self.context_embed is not None:
            x = x + self.embed_aligned_context(cond.reference, cond.motion, drop_ref)
        ctx = self.embed_context(cond.reference, cond.motion, drop_ref)    # [B, 1+M, N, W]
        mouth = self.embed_mouth_state(cond.audio, drop_audio)             # [B, T, W] or None
        audio = self.embed_audio(cond.audio, cond.visemes, drop_audio, mouth)  # [B, T, K, W]
        c = self.embed_time(t, x_t.shape[0])                               # [B, W]
        emb = self.guidance_embedding(cond.cfg_scales, x_t.shape[0])       # [B, n, W], [B, W] or None
        if self.cfg.cfg_layer == "time":
            c, emb = c + emb, None
        c_video = c if mouth is None else c[:, None] + mouth               # [B, W] or per frame [B, T, W]
        if self.blink_embed is not None:                                   # eyelid closure, per frame
            c_video = (c_video if c_video.dim() == 3 else c_video[:, None]) + self.embed_blink(cond.blink)
        return x, ctx, audio, c_video, c, emb, drop_ref

    # --- tokens ------------------------------------------------------------------------------

    def patchify(self, z: Tensor) -> Tensor:
        """[B, F, C, h, w] -> [B, F, N, C·p·p]."""
        p = self.cfg.patch
        return rearrange(z, "b f c (i p1) (j p2) -> b f (i j) (c p1 p2)", p1=p, p2=p)

    def unpatchify(self, y: Tensor) -> Tensor:
        """[B, F, N, C·p·p] -> [B, F, C, h, w]."""
        p = self.cfg.patch
        return rearrange(y, "b f (i j) (c p1 p2) -> b f c (i p1) (j p2)",
                         i=self.cfg.latent_size // p, p1=p, p2=p)

    def embed_video(self, x_t: Tensor) -> Tensor:
        """Noisy latents [B, T, C, h, w] -> tokens [B, T, N, W] with space and time positions."""
        m, t = self.cfg.motion_frames, x_t.shape[1]
        pos = self.pos_space[None] + self.pos_time[m:m + t, None]   # [T, N, W]
        return self.patch_embed(self.patchify(x_t)) + pos

    def aligned_context(self, reference: Tensor, motion: Tensor | None, drop_ref: Tensor) -> Tensor:
        """The last motion latent (the reference when there is none) and the reference, concatenated
        channel-wise -> [B, 2C, h, w]; zeros in place of both where the reference is dropped."""
        last = motion[:, -1] if motion is not None and motion.shape[1] else reference    # [B, C, h, w]
        pair = torch.cat([last, reference], dim=1)                                       # [B, 2C, h, w]
        return torch.where(_per_sample(drop_ref, pair), torch.zeros_like(pair), pair)

    def embed_aligned_context(self, reference: Tensor, motion: Tensor | None, drop_ref: Tensor) -> Tensor:
        """``channel_context``: `aligned_context` patch-embedded at each video token's own position ->
        [B, 1, N, W], added to every frame."""
        return self.context_embed(self.patchify(self.aligned_context(reference, motion, drop_ref)[:, None]))

    def embed_context(self, reference: Tensor, motion: Tensor | None, drop_ref: Tensor) -> Tensor:
        """Reference [B, C, h, w] and motion [B, M, C, h, w] -> context tokens [B, 1+M, N, W]."""
        frames = reference[:, None]                                   # [B, 1, C, h, w]
        if motion is not None:
            frames = torch.cat([frames, motion], dim=1)               # [B, 1+M, C, h, w]
        content = self.patch_embed(self.patchify(frames))             # [B, 1+M, N, W]
        content = torch.where(_per_sample(drop_ref, content), self.null_ctx, content)
        return content + self._context_positions(frames.shape[1] - 1)

    def _context_positions(self, n_motion: int) -> Tensor:
        """Type + position embeddings of the context frames -> [1+M, N, W]."""
        ref = (self.pos_space + self.type_ref)[None]                                  # [1, N, W]
        m = self.cfg.motion_frames
        motion_time = self.pos_time[m - n_motion:m, None] + self.type_motion          # [M, 1, W]
        return torch.cat([ref, self.pos_space[None] + motion_time], dim=0)            # [1+M, N, W]

    def standardise_audio(self, audio: Tensor) -> Tensor:
        """(a - audio_mean) / audio_std, the form every audio pathway reads."""
        if self.cfg.audio_mean != 0.0 or self.cfg.audio_std != 1.0:
            audio = (audio - self.cfg.audio_mean) / self.cfg.audio_std
        return audio

    def read_mouth_state(self, audio: Tensor) -> Tensor:
        """The mouth-state head's reading of raw audio windows [B, T, K, D] -> [B, T, S]."""
        if self.mouth_head is None:
            raise ConfigError("this AvatarDiT has no mouth-state head (DiTConfig.mouth_state = 0)")
        return self.mouth_head(self.standardise_audio(audio))

    def embed_mouth_state(self, audio: Tensor, drop_audio: Tensor) -> Tensor | None:
        """Embedding [B, T, W] of the head's (frozen, detached) mouth-state reading; zeros where the audio is
        dropped (the audio tokens there are the null audio anyway). None without a head."""
        if self.mouth_head is None:
            return None
        e = self.mouth_embed(mouth_features(self.read_mouth_state(audio).detach()))   # [B, T, W]
        return torch.where(_per_sample(drop_audio, e), torch.zeros_like(e), e)

    def embed_blink(self, blink: Tensor) -> Tensor:
        """Eyelid closure [B, T] in [0, 1] -> its embedding [B, T, W] (the mouth state's sin/cos features)."""
        return self.blink_embed(mouth_features(blink[..., None].to(self.pos_space.dtype)))

    def embed_audio(self, audio: Tensor, visemes: Tensor | None, drop_audio: Tensor,
                    mouth: Tensor | None = None) -> Tensor:
        """Audio [B, T, K, D] (+ visemes [B, T], + a mouth-state embedding [B, T, W]) -> audio tokens
        [B, T, K, W]; null where dropped."""
        a = self.audio_mlp(self.standardise_audio(audio))            # [B, T, K, W]
        if self.viseme is not None:
            a = a + self.viseme(visemes)[:, :, None]                  # [B, T, 1, W] over K
        if mouth is not None:
            a = a + mouth[:, :, None]                                 # [B, T, 1, W] over K
        a = torch.where(_per_sample(drop_audio, a), self.null_audio, a)
        return a + self.pos_audio

    def embed_time(self, t: Tensor, batch: int) -> Tensor:
        """Model time t [B] (or a scalar) -> [B, W]."""
        t = torch.as_tensor(t, device=self.pos_space.device).reshape(-1).expand(batch)
        return self.time_mlp(timestep_embedding(t, TIME_FREQ_DIM).to(self.pos_space.dtype))

    def guidance_embedding(self, cfg_scales: Tensor | None, batch: int) -> Tensor | None:
        """(cfg_a, cfg_r) [B, 2] -> the CFG layer's context [B, n, W] (a time-embedding offset [B, W] for
        ``cfg_layer="time"``); scales (1, 1) when unset."""
        if self.cfg_embed is None:
            return None
        if cfg_scales is None:
            cfg_scales = torch.ones(batch, 2, device=self.pos_space.device)
        return self.cfg_embed(cfg_scales.to(self.pos_space.dtype))

    def _run_block(self, block: DiTBlock, *args):
        if self.cfg.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    # --- input checks ------------------------------------------------------------------------

    def _check_inputs(self, x_t: Tensor, cond: Cond) -> None:
        """Shape checks with messages naming the config field to change."""
        cfg, s = self.cfg, self.cfg.latent_size
        frame = (cfg.latent_channels, s, s)
        _expect(x_t.dim() == 5 and tuple(x_t.shape[2:]) == frame,
                f"x_t must be [B, T, {cfg.latent_channels}, {s}, {s}], got {list(x_t.shape)}")
        b, t = x_t.shape[:2]
        _expect(t <= cfg.frames, f"x_t has {t} frames but the DiT was built for at most frames={cfg.frames}")
        _expect(tuple(cond.reference.shape) == (b, *frame),
                f"cond.reference must be [{b}, {cfg.latent_channels}, {s}, {s}], got {list(cond.reference.shape)}")
        audio = (b, t, cfg.audio_window, cfg.audio_dim)
        _expect(tuple(cond.audio.shape) == audio,
                f"cond.audio must be {list(audio)} (audio_window, audio_dim), got {list(cond.audio.shape)}")
        if cond.motion is not None:
            m = cond.motion.shape[1] if cond.motion.dim() == 5 else -1
            _expect(cond.motion.dim() == 5 and tuple(cond.motion.shape[2:]) == frame and cond.motion.shape[0] == b
                    and m <= cfg.motion_frames,
                    f"cond.motion must be [{b}, M<={cfg.motion_frames}, {cfg.latent_channels}, {s}, {s}], "
                    f"got {list(cond.motion.shape)}")
        if cfg.blink:
            _expect(cond.blink is not None and tuple(cond.blink.shape) == (b, t),
                    f"blink=True needs cond.blink [{b}, {t}] (eyelid closure per frame)")
        if cfg.use_visemes:
            _expect(cond.visemes is not None and tuple(cond.visemes.shape) == (b, t),
                    f"use_visemes=True needs cond.visemes [{b}, {t}]")


def _guidance_embedder(cfg: DiTConfig) -> nn.Module | None:
    """The module turning (cfg_a, cfg_r) into the CFG layers' context, per `cfg.cfg_layer`."""
    if cfg.cfg_layer == "tokens":
        return CFGTokens(cfg.cfg_tokens, cfg.width)
    if cfg.cfg_layer == "plain":
        return CFGScaleMLP(cfg.cfg_tokens, cfg.width)
    if cfg.cfg_layer == "time":
        return CFGTimeEmbed(cfg.width)
    return None


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"AvatarDiT: {message}")


__all__ = [
    "PRESETS",
    "AvatarDiT",
    "BlockFeatures",
    "CFGCrossAttention",
    "CFGScaleMLP",
    "CFGTokens",
    "CrossAttention",
    "DiTBlock",
    "DiTConfig",
    "FinalLayer",
    "MouthStateHead",
    "SelfAttention",
    "describe_presets",
    "forward_flops",
    "mouth_features",
    "param_count",
    "timestep_embedding",
]
