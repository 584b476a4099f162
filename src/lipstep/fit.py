"""`fit`: the one small optimisation loop of lipstep's little trained parts.

The denoiser and the distilled students train in `lipstep.train.loop` (accelerate, roles, EMA,
checkpoints). Everything small that lipstep trains outside that loop (the codec, the evaluators'
networks: mouth reader, SyncNet, frame features, identity encoder, and the teacher's mouth-state head)
trains with `fit`: plain AdamW on one device, with the caller's loss.

Each of the ``steps`` steps k = 0 .. steps - 1:

1. the learning rate is set to ``lr * lr_factor(k, ...)`` (the schedule below);
2. ``step(k)`` draws its own batch and returns the loss, a scalar tensor, or ``(loss, scalars)`` with a
   dict of numbers to log; a non-finite loss stops the fit with a one-line `LipstepError`;
3. backward, gradient-norm clipping to ``grad_clip`` (0: none), one AdamW step;
4. every ``eval_every`` steps, ``evaluate(k + 1)`` runs under ``torch.no_grad()`` and its dict is recorded.

Schedule (`lr_factor`): a linear warm-up, factor ``(k + 1) / warmup_steps`` for k < ``warmup_steps``;
then ``"constant"`` (1) or ``"cosine"``: ``floor + (1 - floor) * 0.5 * (1 + cos(pi * p))`` with
``p = min(1, (k - warmup_steps) / max(1, steps - warmup_steps))``, a half cosine from 1 towards ``floor``
(a fraction of ``lr``).

`fit` draws no random numbers of its own, so a step function that draws from seeded generators makes a
fit reproducible bit for bit. Gradients are cleared (set to None) when it returns, so a part that is
frozen afterwards keeps no stale ``.grad``. The per-step losses, logged scalars and evaluations come back
as a `FitHistory`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from lipstep.errors import LipstepError

StepFn = Callable[[int], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]


@dataclass
class FitHistory:
    """What `fit` returns."""

    losses: list[float] = field(default_factory=list)                 # the loss of every step
    scalars: dict[str, list[float]] = field(default_factory=dict)     # name -> value per step it was logged
    evals: list[tuple[int, dict]] = field(default_factory=list)       # (steps done, evaluate()'s dict)
    seconds: float = 0.0                                              # wall time of the fit


def lr_factor(k: int, *, steps: int, schedule: Literal["constant", "cosine"] = "constant", warmup_steps: int = 0,
              floor: float = 0.0) -> float:
    """The learning-rate factor of step k (0-based) of a fit of `steps` steps (formula in the module docstring)."""
    if k < warmup_steps:
        return (k + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (k - warmup_steps) / max(1, steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_args(steps: int, lr: float, schedule: str, warmup_steps: int, floor: float, grad_clip: float,
                eval_every: int) -> None:
    if steps < 1 or lr <= 0:
        raise ValueError(f"fit needs steps >= 1 and lr > 0, got {steps}, {lr}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"fit: schedule must be 'constant' or 'cosine', got {schedule!r}")
    if warmup_steps < 0 or not 0.0 <= floor <= 1.0 or grad_clip < 0 or eval_every < 0:
        raise ValueError(f"fit needs warmup_steps >= 0, 0 <= floor <= 1, grad_clip >= 0 and eval_every >= 0, got "
                         f"{warmup_steps}, {floor}, {grad_clip}, {eval_every}")


def fit(params: Iterable[torch.Tensor], step: StepFn, *, steps: int, lr: float, weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999), schedule: Literal["constant", "cosine"] = "constant",
        warmup_steps: int = 0, floor: float = 0.0, grad_clip: float = 0.0,
        evaluate: Callable[[int], dict] | None = None, eval_every: int = 0, progress: bool = True,
        desc: str = "fit", hint: str = "lower the learning rate") -> FitHistory:
    """Minimise ``step(k)``'s loss over `params` with AdamW for `steps` steps (see the module docstring).

    Args:
        params: the tensors to train (each with ``requires_grad``); nothing else is touched.
        step: ``k -> loss`` or ``k -> (loss, {name: number})``: draws a batch and computes a scalar loss.
        steps: optimizer steps.
        lr, weight_decay, betas: AdamW's settings (``weight_decay`` and ``betas`` default to torch's).
        schedule, warmup_steps, floor: the learning-rate schedule (`lr_factor`).
        grad_clip: maximum gradient norm over `params`; 0 disables clipping.
        evaluate: ``steps done -> dict``, called every `eval_every` steps (0: never) without gradients.
        progress: show a tqdm bar with the loss.
        desc: names the fit in the bar and in the error of a non-finite loss; `hint` ends that error.

    Returns:
        A `FitHistory`.
    """
    _check_args(steps, lr, schedule, warmup_steps, floor, grad_clip, eval_every)
    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    history = FitHistory()
    started = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True)
    for k in bar:
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(k, steps=steps, schedule=schedule, warmup_steps=warmup_steps, floor=floor)
        opt.zero_grad(set_to_none=True)
        out = step(k)
        loss, scalars = out if isinstance(out, tuple) else (out, {})
        value = loss.detach().item()
        if not math.isfinite(value):
            raise LipstepError(f"{desc}: the loss became {value} at step {k + 1} of {steps}; {hint}")
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        history.losses.append(value)
        for name, v in scalars.items():
            history.scalars.setdefault(name, []).append(float(v))
        if evaluate is not None and eval_every and (k + 1) % eval_every == 0:
            with torch.no_grad():
                history.evals.append((k + 1, evaluate(k + 1)))
        bar.set_postfix(loss=f"{value:.4g}", refresh=False)
    bar.close()
    opt.zero_grad(set_to_none=True)
    history.seconds = time.perf_counter() - started
    return history


def pearson(a, b) -> float:
    """Pearson correlation of two equally long series (how well a fitted reader follows its labels); 0 when
    either is constant."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


__all__ = ["FitHistory", "fit", "lr_factor", "pearson"]
