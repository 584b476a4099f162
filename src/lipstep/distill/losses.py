"""Loss math shared by the distillation recipes.

FADA's adaptive mixed supervision (algorithms.md §4.1): ``L = L_distill + W(R)·L_gt`` with the
per-sample ratio ``R = L_gt / L_teacher`` (stop-gradient) and ::

    W(R) = W0·R^s                               R < R_p
         = W0·R_p^s·(R_d − R)/(R_d − R_p)         R_p ≤ R < R_d
         = 0                                     R ≥ R_d

(s = 0.25, W0 = 0.2, R_p = 30, R_d = 100). Both branches equal ``W0·R_p^s`` at ``R_p``, so W is
continuous; a sample whose ground-truth loss is far above the teacher's (a low-quality or
mismatched clip) gets no ground-truth weight. ``adaptive-unlimited`` keeps ``W0·R^s`` for every R
(the ablation without the fall-off); ``fixed:<w>`` is a constant weight; ``off`` is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lipstep.config import check

MIXED_MODES = ("off", "fixed", "adaptive-unlimited", "adaptive")


@dataclass
class MixedConfig:
    """How the ground-truth loss is mixed in: ``mode`` is off | fixed:<w> | adaptive-unlimited | adaptive."""

    mode: str = "adaptive"
    w0: float = 0.2
    s: float = 0.25
    r_p: float = 30.0
    r_d: float = 100.0

    def validate(self) -> None:
        parse_mixed_mode(self.mode)
        check(self.w0 >= 0 and self.s >= 0, "mixed.w0 and mixed.s must be >= 0")
        check(0 < self.r_p < self.r_d, f"mixed: need 0 < r_p < r_d, got r_p={self.r_p}, r_d={self.r_d}")


def parse_mixed_mode(mode: str) -> tuple[str, float]:
    """``"fixed:0.2"`` -> ("fixed", 0.2); other modes -> (mode, 0.0). ConfigError-style ValueError otherwise."""
    from lipstep.errors import ConfigError

    name, _, value = str(mode).partition(":")
    if name not in MIXED_MODES:
        raise ConfigError(f"mixed.mode must be off, fixed:<w>, adaptive-unlimited or adaptive, got {mode!r}")
    if name == "fixed":
        try:
            w = float(value)
        except ValueError:
            raise ConfigError(f"mixed.mode fixed needs a weight, e.g. fixed:0.2; got {mode!r}") from None
        if w < 0:
            raise ConfigError(f"mixed.mode fixed weight must be >= 0, got {w}")
        return name, w
    if value:
        raise ConfigError(f"mixed.mode {name} takes no value, got {mode!r}")
    return name, 0.0


def adaptive_weight(r: Tensor, w0: float = 0.2, s: float = 0.25, r_p: float = 30.0, r_d: float = 100.0,
                    *, limited: bool = True) -> Tensor:
    """FADA's W(R) per sample (module docstring); ``limited=False`` is ``W0·R^s`` everywhere."""
    r = torch.as_tensor(r).clamp_min(0)
    rising = w0 * r.pow(s)
    if not limited:
        return rising
    peak = w0 * r_p ** s
    falling = peak * (r_d - r) / (r_d - r_p)
    return torch.where(r < r_p, rising, torch.where(r < r_d, falling, torch.zeros_like(r)))


def mixed_weight(cfg: MixedConfig, r: Tensor) -> Tensor:
    """The ground-truth weight per sample for ``cfg.mode`` (R is only used by the adaptive modes)."""
    name, w = parse_mixed_mode(cfg.mode)
    if name == "off":
        return torch.zeros_like(r)
    if name == "fixed":
        return torch.full_like(r, w)
    return adaptive_weight(r, cfg.w0, cfg.s, cfg.r_p, cfg.r_d, limited=name == "adaptive")


__all__ = ["MIXED_MODES", "MixedConfig", "adaptive_weight", "mixed_weight", "parse_mixed_mode"]
