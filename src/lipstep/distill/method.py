"""The recipe interface: what a method declares, and the options of the loop that trains it.

A method (the teacher's denoising objective, or a distillation recipe) is one small class on the
shared loop (`lipstep.train.loop.train`), as NVIDIA FastGen's methods are. It declares:

- ``roles() -> {name: Role}``: every network it uses. A *trainable* role gets its own optimizer with
  its own settings (lr, betas, weight decay; ``None`` = the run's `TrainConfig`; ``lr_scale`` multiplies the lr
  of named tensors, e.g. the zero-initialised ones a fine-tune adds), an EMA if asked, and
  ``updates`` consecutive steps per cycle (two-time-scale updates: a fake score 5, a generator 1). A
  *frozen* role (a teacher, a frozen reference) is placed on the device and kept in eval mode by the
  loop and never given to an optimizer; it is not checkpointed (it comes from its own directory).
- ``bind(modules)``: the loop hands back every role's module as placed (on the device; trainable ones
  possibly wrapped for DDP / FSDP). The default stores them in ``self.modules``.
- ``phase(step) -> role``: which trainable role this step updates. The default cycles through the
  trainable roles in declaration order, each ``updates`` times.
- ``loss(role, batch, step, generator) -> (loss, {name: float})``: the scalar to minimise for ``role``
  and the numbers to log. Every random draw comes from ``generator`` (seeded per step by the loop).

A *recipe* (`Recipe`) builds a run: the method, its data and the model it exports (`Built`);
`lipstep.train.runner.run_recipe` runs every recipe the same way.

A method never calls ``backward()``, an optimizer, ``.to(device)`` / ``.cuda()`` or the logger: the loop
owns those, and checkpoints, resume, EMA, mixed precision, gradient clipping and validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from lipstep.config import check
from lipstep.errors import LipstepError
from lipstep.modeldir import ModelInfo


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one training run (shared by the teacher and every recipe)."""

    steps: int = 1000
    batch_size: int = 8                 # per process
    lr: float = 2e-4                    # every trainable role's, unless its Role says otherwise
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 50              # linear warm-up from 0
    grad_clip: float = 1.0              # max global grad norm (0 = off)
    ema_decay: float = 0.999            # 0 = no EMA
    ema_warmup: bool = True             # decay ramps up as min(decay, (1 + n) / (10 + n))
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto: bf16 on CUDA with bf16 support
    log_every: int = 10                 # each role's scalars every log_every of its own updates
    checkpoint_every: int = 250
    keep_checkpoints: int = 2           # older checkpoints are deleted
    validate_every: int = 0             # 0 = only at the end
    num_workers: int = 0                # DataLoader workers
    seed: int = 0

    def validate(self):
        check(self.steps >= 1, "train.steps must be at least 1")
        check(self.batch_size >= 1, "train.batch_size must be at least 1")
        check(self.lr > 0, "train.lr must be positive")
        check(0 <= self.ema_decay < 1, "train.ema_decay must be in [0, 1)")
        check(self.checkpoint_every >= 1, "train.checkpoint_every must be at least 1")
        check(self.keep_checkpoints >= 1, "train.keep_checkpoints must be at least 1")
        check(self.grad_clip >= 0 and self.warmup_steps >= 0, "train.grad_clip and warmup_steps must be >= 0")


@dataclass
class Role:
    """One network of a method: trainable (with its optimizer settings) or frozen."""

    module: nn.Module
    trainable: bool = True
    lr: float | None = None                         # None = TrainConfig.lr
    betas: tuple[float, float] | None = None        # None = TrainConfig.betas
    weight_decay: float | None = None               # None = TrainConfig.weight_decay
    lr_scale: dict[str, float] = field(default_factory=dict)  # parameter name -> lr multiplier (others: 1)
    updates: int = 1                                # consecutive steps of this role per cycle (`Method.phase`)
    ema: bool = True                                # keep an EMA of it (when TrainConfig.ema_decay > 0)

    def validate(self, name: str) -> None:
        if not isinstance(self.module, nn.Module):
            raise LipstepError(f"role '{name}': module must be a torch.nn.Module, got {type(self.module).__name__}")
        check(self.lr is None or self.lr > 0, f"role '{name}': lr must be > 0")
        check(self.weight_decay is None or self.weight_decay >= 0, f"role '{name}': weight_decay must be >= 0")
        check(self.updates >= 1, f"role '{name}': updates must be >= 1")
        check(all(v > 0 for v in self.lr_scale.values()), f"role '{name}': lr_scale values must be > 0")
        names = {n for n, _ in self.module.named_parameters()}
        unknown = sorted(set(self.lr_scale) - names)
        check(not unknown, f"role '{name}': lr_scale names tensors the module lacks: {', '.join(unknown[:3])}")


class Method:
    """Base class of every recipe's method (see the module docstring for the hooks)."""

    modules: dict[str, nn.Module]

    def roles(self) -> dict[str, Role]:
        raise NotImplementedError

    def bind(self, modules: dict[str, nn.Module]) -> None:
        self.modules = dict(modules)

    def phase(self, step: int) -> str:
        cycle = [name for name, role in self.roles().items() if role.trainable for _ in range(role.updates)]
        if not cycle:
            raise LipstepError(f"{type(self).__name__} declares no trainable role")
        return cycle[step % len(cycle)]

    def loss(self, role: str, batch: dict, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError


@dataclass
class Validation:
    """Validation videos rendered by the runner (0 clips = none)."""

    clips: int = 2                  # held-out clips (val split, else test, else train)
    steps: int = 10                 # sampler steps (cheaper than the model's default)
    seconds: float = 2.0            # length of each video


@dataclass
class Built:
    """What a recipe hands the runner."""

    method: Method
    dataset: torch.utils.data.Dataset
    train: TrainConfig
    info: ModelInfo                 # of the exported model (its `trained` is filled in by the runner)
    codec: object
    audio: object                   # the audio encoder
    export_role: str                # the role whose (EMA) weights become MODEL/denoiser
    latents: Path | None = None     # the latent cache of the prepared data (validation)
    validation: Validation = field(default_factory=Validation)
    provenance: dict = field(default_factory=dict)  # merged into info.trained
    record: str | None = None       # also write info.trained to OUT/<record> (e.g. distill.json)
    run_config: object = None       # saved as OUT/config.json
    eyes: object = None             # an eye net the exported model keeps (its source's: a student of a model that
    #   blinks with one blinks too); without one, and a net that does not read blinks, the model draws none


class Recipe(Protocol):
    """A recipe for `lipstep.train.runner.run_recipe`: a name and how to build its run."""

    name: str

    def build(self, prepared: Path, out: Path, *, resume: bool, progress: bool) -> Built: ...


__all__ = ["Built", "Method", "Recipe", "Role", "TrainConfig", "Validation"]
