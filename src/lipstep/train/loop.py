"""THE training loop: method-agnostic, one optimizer per trainable role, exact resume.

A *method* (`lipstep.distill.method.Method`: the teacher's denoising objective or a distillation
recipe) declares its roles and losses; this loop owns everything else: placing the roles on the
device (frozen ones in eval mode, never given to an optimizer), one AdamW per trainable role with the
role's own settings, ``backward()``, warm-up, gradient clipping, EMA, mixed precision, TensorBoard
scalars, periodic validation, checkpoints and resume. The only hooks it calls are the method's
``roles()``, ``bind()``, ``phase()`` and ``loss()``.

Runs under accelerate: CPU (``Accelerator(cpu=True)``), one GPU, DDP, and FSDP / DeepSpeed ZeRO-3
through the accelerate config files in ``configs/accelerate/``. Under DDP each trainable role is wrapped on
its own (frozen ones are not) without unused-parameter detection, which would cost a graph walk per step: a
role's step must give every one of its trainable parameters a gradient, or the role's next forward fails.

Checkpoint directory (written to a temporary directory, fsynced, renamed into place)::

    OUT/checkpoints/step_000500/<role>/model.safetensors   weights of each trainable role
    OUT/checkpoints/step_000500/<role>/ema.safetensors     EMA weights (when EMA is on)
    OUT/checkpoints/step_000500/train_state.pt             optimizer, LR schedule, RNG, step: tensors and
                                                           plain data only, read with weights_only=True
    OUT/checkpoints/step_000500/checksums.json             sha256 of the files above
    OUT/checkpoints/latest                                 name of the newest complete checkpoint

Exact resume: data order depends only on (seed, epoch), every random draw of a step comes from a
generator seeded by (seed, rank, step), so a resumed run repeats the uninterrupted run's losses, also
after a ``kill -9`` at any moment. Resume follows ``latest`` only to a ``step_NNNNNN`` directory of
``OUT/checkpoints`` and checks every file against ``checksums.json``; when that checkpoint is damaged
it continues from the newest intact one, with a one-line warning. A start or resume first removes
the temporaries of interrupted checkpoint writes.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import time
import uuid
import warnings
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
from lipstep.errors import IntegrityError, LipstepError, UnsafeFile
from lipstep.fsutil import (
    apply_umask,
    fsync_path,
    fsync_tree,
    verify_checksums,
    write_checksums,
    write_text_atomic,
)

log = logging.getLogger(__name__)

STATE_NAME = "train_state.pt"
STATE_KEYS = {"step", "optimizers", "schedulers", "ema_updates", "rng"}
CHECKPOINT_NAME = re.compile(r"step_\d{6,}")
STALE_NAME = re.compile(r"\.(step_\d{6,}|latest)\..+")  # temporaries of save_checkpoint and its pointer


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


def _read_weights(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a bad file
        raise IntegrityError(f"{path} is damaged or truncated ({' '.join(str(e).split())[:120]})") from None


def _load_module(module: nn.Module, path: Path, state: dict[str, Tensor]):
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape: a checkpoint of a differently configured run
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
        raise LipstepError(f"{path}: weights do not match the model ({first[:160]})") from None
    if missing or unexpected:
        raise LipstepError(f"{path}: weights do not match the model (missing {len(missing)} keys, e.g. "
                           f"{missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})")


def _check_plain(obj, where: str = "train state") -> None:
    """Refuse to save anything `torch.load(weights_only=True)` could not read back (a bug, not bad input)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not (obj is None or isinstance(obj, (Tensor, bool, int, float, str))):
        raise TypeError(f"{where} is a {type(obj).__name__}; a checkpoint holds only tensors and plain data")


def _read_train_state(path: Path) -> dict:
    """The train state, unpickled with ``weights_only=True``: tensors and plain data, never code."""
    if not path.is_file():
        raise IntegrityError(f"{path} is missing")
    try:
        with warnings.catch_warnings():  # torch warns in two lines about foreign pickle protocols
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip, garbage bytes, a pickle with code, ...
        text = " ".join(str(e).split())
        code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if code:  # weights_only refuses to import anything: a crafted or foreign pickle
            raise UnsafeFile(f"{path} is refused: it holds more than tensors and plain data (it would call "
                             f"{code[1]})") from None
        reason = re.search(r"WeightsUnpickler error: ([^.]+)", text)
        raise IntegrityError(f"{path} is damaged or truncated ({(reason[1] if reason else text)[:120]})") from None
    if not (isinstance(saved, dict) and STATE_KEYS <= saved.keys() and isinstance(saved["step"], int)
            and saved["step"] >= 0 and isinstance(saved["rng"], Tensor) and saved["rng"].dtype == torch.uint8):
        raise IntegrityError(f"{path} is damaged (not a lipstep train state)")
    return saved


def _checkpoint_dirs(root: Path) -> list[Path]:
    """The ``step_NNNNNN`` directories of ``root``, newest first (symbolic links are never followed)."""
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and not p.is_symlink() and p.is_dir()]
    return sorted(dirs, key=lambda p: int(p.name[5:]), reverse=True)


def _pointed(out: Path) -> Path | None:
    """The checkpoint ``OUT/checkpoints/latest`` names (None without a pointer). `UnsafeFile` when the pointer
    is not a plain file or names anything but a ``step_NNNNNN`` directory inside ``OUT/checkpoints/``."""
    root = out / "checkpoints"
    pointer = root / "latest"
    if not pointer.exists() and not pointer.is_symlink():
        return None
    if pointer.is_symlink() or not pointer.is_file():
        raise UnsafeFile(f"{pointer} is not a plain file; refusing to follow it")
    with open(pointer, "rb") as f:
        raw = f.read(64)
    name = raw.decode("utf-8", "replace").strip()
    path = root / name
    if not CHECKPOINT_NAME.fullmatch(name) or path.is_symlink() or path.resolve().parent != root.resolve():
        raise UnsafeFile(f"{pointer} names {name[:40]!r}, not a step_NNNNNN directory of {root}; refusing to follow "
                         f"it (remove it to resume from the newest intact checkpoint)")
    return path


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint: the one ``latest`` names, else the newest with a train state (files unchecked)."""
    out = Path(out)
    pointed = _pointed(out)
    if pointed is not None and (pointed / STATE_NAME).is_file():
        return pointed
    return next((p for p in _checkpoint_dirs(out / "checkpoints") if (p / STATE_NAME).is_file()), None)


def clean_stale(out: Path) -> list[Path]:
    """Remove what interrupted checkpoint writes left in ``OUT/checkpoints`` (dot-named temporaries)."""
    root = Path(out) / "checkpoints"
    stale = [p for p in root.iterdir() if STALE_NAME.fullmatch(p.name)] if root.is_dir() else []
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


@dataclass
class State:
    """Everything that changes during training (what a checkpoint captures)."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    emas: dict[str, EMA]
    step: int = 0


def _discard(path: Path) -> None:
    """Delete a checkpoint directory so that it disappears at once (renamed aside first, then removed)."""
    aside = path.parent / f".{path.name}.del-{uuid.uuid4().hex[:8]}"
    os.rename(path, aside)
    shutil.rmtree(aside)


def save_checkpoint(out: Path, state: State, unwrap: Callable[[nn.Module], nn.Module], keep: int) -> Path:
    """Write a checkpoint directory (with ``checksums.json``), fsync it, rename it into place, then move the
    `latest` pointer to it and prune all but the newest ``keep`` up to it. A kill at any moment leaves the
    previous checkpoint and pointer intact, plus at most a dot-named temporary (`clean_stale`)."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{state.step:06d}"
    tmp = root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    final = root / name
    try:
        files = []
        for role, module in state.modules.items():
            (tmp / role).mkdir()
            _save_module(unwrap(module), tmp / role / "model.safetensors")
            files.append(f"{role}/model.safetensors")
            if role in state.emas:
                _save_module(state.emas[role].shadow, tmp / role / "ema.safetensors")
                files.append(f"{role}/ema.safetensors")
        train_state = {
            "step": state.step,
            "optimizers": {r: o.state_dict() for r, o in state.optimizers.items()},
            "schedulers": {r: s.state_dict() for r, s in state.schedulers.items()},
            "ema_updates": {r: e.updates for r, e in state.emas.items()},
            "rng": torch.get_rng_state(),
        }
        _check_plain(train_state)
        torch.save(train_state, tmp / STATE_NAME)
        write_checksums(tmp, files + [STATE_NAME])
        apply_umask(tmp)
        fsync_tree(tmp)
        if final.exists() or final.is_symlink():  # a checkpoint of an abandoned run past this step
            _discard(final)
        os.rename(tmp, final)
        fsync_path(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    write_text_atomic(root / "latest", name + "\n", durable=True)
    older = [p for p in _checkpoint_dirs(root) if int(p.name[5:]) < state.step]
    for old in older[keep - 1:]:
        _discard(old)
    return final


def load_checkpoint(path: Path, state: State, unwrap: Callable[[nn.Module], nn.Module]) -> None:
    """Restore `state` in place from a checkpoint directory. Every file is checked and read before anything
    is restored: a damaged checkpoint (`IntegrityError`) or a refused train state (`UnsafeFile`) leaves
    `state` as it was."""
    if not path.is_dir():
        raise IntegrityError(f"{path} is missing")
    verify_checksums(path)
    if not (path / STATE_NAME).is_file():
        raise IntegrityError(f"{path / STATE_NAME} is missing")
    weights = {}
    for role in state.modules:
        if not (path / role / "model.safetensors").is_file():
            raise LipstepError(f"{path}: checkpoint has no weights for role '{role}' (a different recipe?)")
        weights[role, "model"] = _read_weights(path / role / "model.safetensors")
        if role in state.emas:
            weights[role, "ema"] = _read_weights(path / role / "ema.safetensors")
    saved = _read_train_state(path / STATE_NAME)
    for role, module in state.modules.items():
        _load_module(unwrap(module), path / role / "model.safetensors", weights[role, "model"])
        if role in state.emas:
            _load_module(state.emas[role].shadow, path / role / "ema.safetensors", weights[role, "ema"])
    try:
        for role, opt in state.optimizers.items():
            opt.load_state_dict(saved["optimizers"][role])
        for role, sched in state.schedulers.items():
            sched.load_state_dict(saved["schedulers"][role])
        for role, ema in state.emas.items():
            ema.updates = int(saved["ema_updates"][role])
        torch.set_rng_state(saved["rng"])
        state.step = int(saved["step"])
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as e:
        what = f"no entry {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:120]
        raise LipstepError(f"{path / STATE_NAME}: the train state does not match this run ({what}); "
                           "resume with the run's own settings") from None


def _quiet(message: str) -> None:
    pass


def _resume(out: Path, state: State, unwrap: Callable[[nn.Module], nn.Module], warn: Callable[[str], None]) -> Path:
    """Load the checkpoint ``latest`` names into `state`; when it is damaged, truncated, missing or refused,
    the newest intact other one, with a one-line ``warn``. Returns the checkpoint loaded."""
    root = out / "checkpoints"
    pointed = _pointed(out)
    candidates = ([pointed] if pointed is not None else []) + [p for p in _checkpoint_dirs(root) if p != pointed]
    if not candidates:
        raise LipstepError(f"--resume: no complete checkpoint in {root}")
    problems = []
    for path in candidates:
        try:
            load_checkpoint(path, state, unwrap)
        except (IntegrityError, UnsafeFile) as e:
            problems.append(e)
            continue
        if problems:
            warn(f"resume: {problems[0]}{_more(problems)}; resuming from {path} instead")
        return path
    if len(candidates) == 1:
        raise problems[0]
    raise type(problems[0])(f"--resume: no intact checkpoint in {root}: {problems[0]}{_more(problems)}")


def _more(problems: list) -> str:
    return f" ({len(problems) - 1} more damaged)" if len(problems) > 1 else ""


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


def _param_groups(role: Role, lr: float) -> list[dict]:
    """The role's trainable tensors as AdamW groups: one at its lr, one more per distinct ``lr_scale`` value (in
    first-seen order, so a resumed run builds the same groups)."""
    base = role.lr if role.lr is not None else lr
    groups: dict[float, list] = {1.0: []}
    for name, p in role.module.named_parameters():
        if p.requires_grad:
            groups.setdefault(float(role.lr_scale.get(name, 1.0)), []).append(p)
    return [{"params": ps, "lr": base * k} for k, ps in groups.items() if ps]


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
    if resume and latest_checkpoint(out) is None:  # before writing anything into `out`
        raise LipstepError(f"--resume: no complete checkpoint in {out / 'checkpoints'}")
    if acc.is_main_process:
        clean_stale(out)
    roles = _declared_roles(method)
    frozen = {r: role.module.to(acc.device).eval().requires_grad_(False)
              for r, role in roles.items() if not role.trainable}
    modules = {r: role.module for r, role in roles.items() if role.trainable}
    optimizers = {r: torch.optim.AdamW(_param_groups(roles[r], cfg.lr),
                                       betas=roles[r].betas if roles[r].betas is not None else cfg.betas,
                                       weight_decay=roles[r].weight_decay if roles[r].weight_decay is not None
                                       else cfg.weight_decay)
                  for r in modules}
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
        ckpt = _resume(out, state, acc.unwrap_model, log.warning if acc.is_main_process else _quiet)
        acc.print(f"resumed from {ckpt} at step {state.step}")
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if run_config is not None:
            save_config(run_config, out)
    acc.print(f"precision: {precision} ({reason}); processes: {acc.num_processes}; device: {acc.device}")
    # purge_step: TensorBoard hides the events a killed run logged past the resumed step (no doubled curves)
    writer = _tensorboard(out, purge_step=state.step if resume else None) if acc.is_main_process else None
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
        _log(bar, writer, state.step, role, logs, seen / (time.perf_counter() - t0), cfg.log_every,
             schedulers[role].last_epoch)
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


def _tensorboard(out: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: logging to the progress bar only
        return None
    return SummaryWriter(str(out / "logs"), purge_step=purge_step)


def _log(bar, writer, step: int, role: str, logs: dict, samples_per_s: float, every: int, updates: int) -> None:
    """Every ``every``-th update *of this role* (``updates`` counts them), so that each role of a multi-role
    method is logged at its own cadence (a 5 : 1 cycle with every=12 would otherwise only ever log one role)."""
    bar.update(1)
    if updates % every and updates != 1:
        return
    bar.set_postfix({"role": role, "loss": f"{logs['loss']:.4f}", "samples/s": f"{samples_per_s:.1f}"})
    if writer is not None:
        for k, v in logs.items():
            writer.add_scalar(f"{role}/{k}", v, step)
        writer.add_scalar("throughput/samples_per_s", samples_per_s, step)


__all__ = ["EMA", "Method", "NonFiniteLoss", "Role", "State", "TrainConfig", "batch_indices", "clean_stale",
           "latest_checkpoint", "load_checkpoint", "pick_precision", "save_checkpoint", "step_generator", "train",
           "warmup_lambda"]
