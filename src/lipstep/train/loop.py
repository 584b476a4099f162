"""THE training loop: method-agnostic, one optimizer per role, exact resume.

A *method* (the teacher's denoising objective, or a distillation recipe) is a small object with
``roles`` (names), ``trainable() -> {role: module}``, ``phase(step) -> role`` (which role this step
updates) and ``loss(batch, step, generator) -> (loss, logs)``. It never calls ``backward()``, an
optimizer, ``.cuda()`` or the logger: this loop owns those, plus warm-up, gradient clipping, EMA,
mixed precision, TensorBoard scalars, periodic validation, checkpoints and resume.

Runs under accelerate: CPU (``Accelerator(cpu=True)``), one GPU, DDP, and FSDP / DeepSpeed ZeRO-3
through the accelerate config files in ``configs/accelerate/``.

Checkpoint directory (written atomically: a temporary directory renamed into place)::

    OUT/checkpoints/step_000500/<role>/model.safetensors   weights of each role
    OUT/checkpoints/step_000500/<role>/ema.safetensors     EMA weights (when EMA is on)
    OUT/checkpoints/step_000500/train_state.pt             optimizer, LR schedule, RNG, step
    OUT/checkpoints/latest                                 name of the newest complete checkpoint

Exact resume: data order depends only on (seed, epoch), every random draw of a step comes from a
generator seeded by (seed, rank, step), so a resumed run repeats the uninterrupted run's losses.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol

import torch
from torch import Tensor, nn

from lipstep.config import check, save_config
from lipstep.errors import LipstepError
from lipstep.fsutil import write_text_atomic


class Method(Protocol):
    roles: tuple[str, ...]

    def trainable(self) -> dict[str, nn.Module]: ...

    def phase(self, step: int) -> str: ...

    def loss(self, batch: dict, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]: ...


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one training run (shared by the teacher and every recipe)."""

    steps: int = 1000
    batch_size: int = 8                 # per process
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 50              # linear warm-up from 0
    grad_clip: float = 1.0              # max global grad norm (0 = off)
    ema_decay: float = 0.999            # 0 = no EMA
    ema_warmup: bool = True             # decay ramps up as min(decay, (1 + n) / (10 + n))
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto: bf16 on CUDA with bf16 support
    log_every: int = 10
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


class NonFiniteLoss(LipstepError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------
# data order


def batch_indices(n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                  start_step: int = 0) -> Iterator[list[int]]:
    """Endless batches of dataset indices: a fresh permutation per epoch from (seed, epoch),
    sharded across ranks, starting at `start_step` (so resuming continues the same sequence)."""
    per_rank = batch_size
    global_batch = per_rank * world
    steps_per_epoch = max(1, n // global_batch) if n >= global_batch else 1
    step = start_step
    while True:
        epoch, offset = divmod(step, steps_per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        if n < global_batch:  # tiny data sets: repeat the permutation to fill a batch
            perm = (perm * math.ceil(global_batch / n))[:global_batch]
        base = offset * global_batch + rank * per_rank
        yield perm[base:base + per_rank]
        step += 1


class _Batches:
    """Iterates a dataset in the order of `batch_indices` with DataLoader workers."""

    def __init__(self, dataset, cfg: TrainConfig, rank: int, world: int, start_step: int, collate=None):
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=_Resumable(len(dataset), cfg, rank, world, start_step),
            num_workers=cfg.num_workers, collate_fn=collate, persistent_workers=False)

    def __iter__(self):
        return iter(self.loader)


class _Resumable(torch.utils.data.Sampler):
    def __init__(self, n, cfg: TrainConfig, rank, world, start_step):
        self.n, self.cfg, self.rank, self.world, self.start = n, cfg, rank, world, start_step

    def __iter__(self):
        return batch_indices(self.n, self.cfg.batch_size, self.cfg.seed, self.rank, self.world, self.start)

    def __len__(self):  # endless; DataLoader only needs this for len(loader)
        return 2**31


# ---------------------------------------------------------------------------------------------
# EMA, precision, schedules


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied)."""

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.lerp_(p.detach().to(s.dtype), 1 - d)
        for s, b in zip(self.shadow.buffers(), module.buffers()):
            s.copy_(b)


def pick_precision(setting: str) -> tuple[str, str]:
    """(accelerate mixed_precision, reason): bf16 only where the hardware runs it natively."""
    if setting != "auto":
        return setting, "requested"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16", "CUDA device supports bf16"
    return "no", "no CUDA device with bf16 (on CPU, fp32 is the safe default)"


def warmup_lambda(warmup: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def adamw_cosine(params, lr: float, steps: int, weight_decay: float = 1e-4):
    """(AdamW, a per-step scheduler decaying its lr along a cosine to 5 % over ``steps``) for small
    regressors fitted outside this loop (the teacher's mouth-state head, `lipstep.train.mouth_head`)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    return opt, sched


# ---------------------------------------------------------------------------------------------
# checkpoints


def _save_module(module: nn.Module, path: Path):
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def _load_module(module: nn.Module, path: Path):
    from safetensors.torch import load_file

    missing, unexpected = module.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise LipstepError(f"{path}: weights do not match the model (missing {len(missing)} keys, e.g. "
                           f"{missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})")


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = out / "checkpoints" / pointer.read_text().strip()
    return path if (path / "train_state.pt").is_file() else None


@dataclass
class State:
    """Everything that changes during training (what a checkpoint captures)."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    emas: dict[str, EMA]
    step: int = 0


def save_checkpoint(out: Path, state: State, unwrap: Callable[[nn.Module], nn.Module], keep: int) -> Path:
    """Write a checkpoint directory atomically and move the `latest` pointer to it."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{state.step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        for role, module in state.modules.items():
            (tmp / role).mkdir()
            _save_module(unwrap(module), tmp / role / "model.safetensors")
            if role in state.emas:
                _save_module(state.emas[role].shadow, tmp / role / "ema.safetensors")
        torch.save({
            "step": state.step,
            "optimizers": {r: o.state_dict() for r, o in state.optimizers.items()},
            "schedulers": {r: s.state_dict() for r, s in state.schedulers.items()},
            "ema_updates": {r: e.updates for r, e in state.emas.items()},
            "rng": torch.get_rng_state(),
        }, tmp / "train_state.pt")
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    write_text_atomic(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: Path, state: State, unwrap: Callable[[nn.Module], nn.Module]) -> None:
    """Restore `state` in place from a checkpoint directory."""
    for role, module in state.modules.items():
        if not (path / role / "model.safetensors").is_file():
            raise LipstepError(f"{path}: checkpoint has no weights for role '{role}' (a different recipe?)")
        _load_module(unwrap(module), path / role / "model.safetensors")
        if role in state.emas:
            _load_module(state.emas[role].shadow, path / role / "ema.safetensors")
    saved = torch.load(path / "train_state.pt", map_location="cpu", weights_only=False)
    for role, opt in state.optimizers.items():
        opt.load_state_dict(saved["optimizers"][role])
    for role, sched in state.schedulers.items():
        sched.load_state_dict(saved["schedulers"][role])
    for role, ema in state.emas.items():
        ema.updates = saved["ema_updates"][role]
    torch.set_rng_state(saved["rng"])
    state.step = saved["step"]


# ---------------------------------------------------------------------------------------------
# the loop


def step_generator(seed: int, rank: int, step: int, device) -> torch.Generator:
    """The generator for every random draw of one training step (noise, t, dropout)."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63))
    return gen


def _to_device(batch, device):
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def train(method: Method, dataset, cfg: TrainConfig, out, *, resume: bool = False, run_config=None,
          validate: Callable[[int, dict[str, nn.Module]], dict] | None = None, ema_roles: tuple[str, ...] | None = None,
          progress: bool = True, accelerator=None) -> State:
    """Train `method` on `dataset` for `cfg.steps` steps, writing checkpoints and logs under `out`.

    ``validate(step, models)`` runs on the main process every ``cfg.validate_every`` steps and at the
    end; ``models`` maps each role to its EMA weights (or the raw module without EMA). It returns
    scalars logged as ``val/<name>``; it must leave the modules as it found them.
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    out = Path(out)
    precision, reason = pick_precision(cfg.mixed_precision)
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if run_config is not None:
            save_config(run_config, out)
    modules = method.trainable()
    ema_roles = tuple(modules) if ema_roles is None else ema_roles
    optimizers = {r: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=cfg.lr,
                                       betas=cfg.betas, weight_decay=cfg.weight_decay)
                  for r, m in modules.items()}
    prepared = acc.prepare(*modules.values(), *optimizers.values())
    modules = dict(zip(modules, prepared[: len(modules)]))
    optimizers = dict(zip(optimizers, prepared[len(modules):]))
    schedulers = {r: torch.optim.lr_scheduler.LambdaLR(o, warmup_lambda(cfg.warmup_steps))
                  for r, o in optimizers.items()}
    emas = {r: EMA(acc.unwrap_model(modules[r]), cfg.ema_decay, cfg.ema_warmup)
            for r in ema_roles if cfg.ema_decay > 0}
    state = State(modules, optimizers, schedulers, emas)
    _bind_modules(method, modules)
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise LipstepError(f"--resume: no complete checkpoint in {out / 'checkpoints'}")
        load_checkpoint(ckpt, state, acc.unwrap_model)
        acc.print(f"resumed from {ckpt} at step {state.step}")
    acc.print(f"precision: {precision} ({reason}); processes: {acc.num_processes}; device: {acc.device}")
    writer = _tensorboard(out) if acc.is_main_process else None
    batches = iter(_Batches(dataset, cfg, acc.process_index, acc.num_processes, state.step))
    bar = tqdm(total=cfg.steps, initial=state.step, desc="train", unit="step",
               disable=not (progress and acc.is_main_process), dynamic_ncols=True)
    last_good = latest_checkpoint(out)
    t0, seen = time.perf_counter(), 0
    while state.step < cfg.steps:
        batch = _to_device(next(batches), acc.device)
        role = method.phase(state.step)
        gen = step_generator(cfg.seed, acc.process_index, state.step, acc.device)
        with acc.autocast():
            loss, logs = method.loss(batch, state.step, gen)
        if not torch.isfinite(loss.detach()).all():
            bar.close()
            where = f"; the last good checkpoint is {last_good}" if last_good else ""
            raise NonFiniteLoss(f"loss is {loss.item()} at step {state.step} (role {role}); training stopped{where}")
        opt = optimizers[role]
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if cfg.grad_clip > 0:
            logs["grad_norm"] = float(acc.clip_grad_norm_(modules[role].parameters(), cfg.grad_clip))
        opt.step()
        schedulers[role].step()
        if role in emas:
            emas[role].update(acc.unwrap_model(modules[role]))
        state.step += 1
        seen += len(next(iter(batch.values()))) if isinstance(batch, dict) else cfg.batch_size
        logs = {"loss": float(loss.detach()), **logs}
        _log(bar, writer, state.step, role, logs, seen / (time.perf_counter() - t0), cfg.log_every)
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                last_good = save_checkpoint(out, state, acc.unwrap_model, cfg.keep_checkpoints)
        if validate is not None and acc.is_main_process and (
                (cfg.validate_every and state.step % cfg.validate_every == 0) or state.step == cfg.steps):
            models = {r: (emas[r].shadow if r in emas else acc.unwrap_model(m)) for r, m in modules.items()}
            for k, v in validate(state.step, models).items():
                if writer is not None:
                    writer.add_scalar(f"val/{k}", v, state.step)
    bar.close()
    if writer is not None:
        writer.close()
    return state


def _bind_modules(method, modules: dict[str, nn.Module]) -> None:
    """Give the method its (possibly wrapped, e.g. DDP) modules back, if it wants them."""
    bind = getattr(method, "bind", None)
    if callable(bind):
        bind(modules)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: logging to the progress bar only
        return None
    return SummaryWriter(str(out / "logs"))


def _log(bar, writer, step: int, role: str, logs: dict, samples_per_s: float, every: int) -> None:
    bar.update(1)
    if step % every and step != 1:
        return
    bar.set_postfix({"role": role, "loss": f"{logs['loss']:.4f}", "samples/s": f"{samples_per_s:.1f}"})
    if writer is not None:
        for k, v in logs.items():
            writer.add_scalar(f"{role}/{k}", v, step)
        writer.add_scalar("throughput/samples_per_s", samples_per_s, step)
