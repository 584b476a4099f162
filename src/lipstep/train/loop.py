"""THE training loop: method-agnostic, one optimizer per trainable role, exact resume.

A *method* (`lipstep.distill.method.Method`: the teacher's denoising objective or a distillation
recipe) declares its roles and losses; this loop owns everything else: placing the roles on the
device (frozen ones in eval mode, never given to an optimizer), one AdamW per trainable role with the
role's own settings, ``backward()``, warm-up, gradient clipping, EMA, mixed precision, TensorBoard
scalars, periodic validation, checkpoints and resume. The only hooks it calls are the method's
``roles()``, ``bind()``, ``phase()`` and ``loss()``.

Runs under accelerate: CPU (``Accelerator(cpu=True)``), one GPU, DDP, and FSDP / DeepSpeed ZeRO-3
through the accelerate config files in ``configs/accelerate/``.

Checkpoint directory (written atomically: a temporary directory renamed into place)::

    OUT/checkpoints/step_000500/<role>/model.safetensors   weights of each trainable role
    OUT/checkpoints/step_000500/<role>/ema.safetensors     EMA weights (when EMA is on)
    OUT/checkpoints/step_000500/train_state.pt             optimizer, LR schedule, RNG, step
    OUT/checkpoints/latest                                 name of the newest complete checkpoint

Exact resume: data order depends only on (seed, epoch), every random draw of a step comes from a
generator seeded by (seed, rank, step), so a resumed run repeats the uninterrupted run's losses.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from lipstep.config import save_config
from lipstep.data.dataset import batch_indices
from lipstep.distill.method import Method, Role, TrainConfig
from lipstep.errors import LipstepError
from lipstep.fsutil import write_text_atomic


class NonFiniteLoss(LipstepError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------
# data order


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


# ---------------------------------------------------------------------------------------------
# checkpoints


def _save_module(module: nn.Module, path: Path):
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def _load_module(module: nn.Module, path: Path):
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


def _declared_roles(method: Method) -> dict[str, Role]:
    roles = method.roles()
    if not isinstance(roles, dict) or not roles:
        raise LipstepError(f"{type(method).__name__}.roles() must return a non-empty {{name: Role}} dict")
    for name, role in roles.items():
        if not isinstance(role, Role):
            raise LipstepError(f"{type(method).__name__}: role '{name}' is a {type(role).__name__}, not a Role")
        role.validate(name)
    if not any(r.trainable for r in roles.values()):
        raise LipstepError(f"{type(method).__name__} declares no trainable role")
    return roles


def train(method: Method, dataset, cfg: TrainConfig, out, *, resume: bool = False, run_config=None,
          validate: Callable[[int, dict[str, nn.Module]], dict] | None = None,
          progress: bool = True, accelerator=None) -> State:
    """Train `method` on `dataset` for `cfg.steps` steps, writing checkpoints and logs under `out`.

    ``validate(step, models)`` runs on the main process every ``cfg.validate_every`` steps and at the
    end; ``models`` maps each trainable role to its EMA weights (or the raw module without EMA). It
    returns scalars logged as ``val/<name>``; it must leave the modules as it found them.
    """
    out = Path(out)
    precision, reason = pick_precision(cfg.mixed_precision)
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if run_config is not None:
            save_config(run_config, out)
    roles = _declared_roles(method)
    frozen = {r: role.module.to(acc.device).eval().requires_grad_(False)
              for r, role in roles.items() if not role.trainable}
    modules = {r: role.module for r, role in roles.items() if role.trainable}
    optimizers = {r: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad],
                                       lr=roles[r].lr if roles[r].lr is not None else cfg.lr,
                                       betas=roles[r].betas if roles[r].betas is not None else cfg.betas,
                                       weight_decay=roles[r].weight_decay if roles[r].weight_decay is not None
                                       else cfg.weight_decay)
                  for r, m in modules.items()}
    prepared = acc.prepare(*modules.values(), *optimizers.values())
    modules = dict(zip(modules, prepared[: len(modules)]))
    optimizers = dict(zip(optimizers, prepared[len(modules):]))
    schedulers = {r: torch.optim.lr_scheduler.LambdaLR(o, warmup_lambda(cfg.warmup_steps))
                  for r, o in optimizers.items()}
    emas = {r: EMA(acc.unwrap_model(modules[r]), cfg.ema_decay, cfg.ema_warmup)
            for r in modules if roles[r].ema and cfg.ema_decay > 0}
    state = State(modules, optimizers, schedulers, emas)
    method.bind({r: modules[r] if r in modules else frozen[r] for r in roles})
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
        if role not in optimizers:
            bar.close()
            raise LipstepError(f"{type(method).__name__}.phase({state.step}) named '{role}', which is not a trainable "
                               f"role ({', '.join(optimizers)})")
        for m in frozen.values():  # a validation callback or the method may have switched them
            if m.training:
                m.eval()
        gen = step_generator(cfg.seed, acc.process_index, state.step, acc.device)
        with acc.autocast():
            loss, logs = method.loss(role, batch, state.step, gen)
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


__all__ = ["EMA", "Method", "NonFiniteLoss", "Role", "State", "TrainConfig", "batch_indices", "latest_checkpoint",
           "load_checkpoint", "pick_precision", "save_checkpoint", "step_generator", "train", "warmup_lambda"]
