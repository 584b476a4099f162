"""FADA: PeRFlow step distillation + adaptive mixed supervision + multi-CFG token distillation.

A frozen multi-step teacher (DDIM, multi-condition CFG, FADA Eq. 9) becomes a few-step student
that starts from the teacher's weights (algorithms.md §2.9, §4). Per training sample:

1. **Window and time.** The time axis is cut into ``K`` equal windows (default 4); a window ``k`` and
   a time ``t`` inside it (``start_k ≥ t > end_k``) are drawn uniformly.
2. **Window endpoints.** ``z_start = a_start·x0 + s_start·eps`` (forward diffusion of the real
   latents, ``eps ~ N(0, I)``); ``z_end`` = the frozen teacher's DDIM solve from ``start`` to ``end`` in
   ``solver_steps`` steps (default 8) with multi-CFG at per-sample guidance scales ``(cfg_a, cfg_r)``
   drawn from ``cfg_audio_range`` × ``cfg_ref_range``; no gradient.
3. **Straight line.** ``z_t = z_start + (z_end − z_start)·(t − start)/(end − start)``.
4. **Target.** ``"ddim_eps"`` (default; keeps the teacher's parametrisation): with
   ``λ = sqrt(abar_end/abar_start)``, ``η = sqrt(1 − abar_end) − λ·sqrt(1 − abar_start)``, the constant
   ``eps* = (z_end − λ·z_start)/η``; the student's native output at ``(z_t, t)`` is read as a noise
   estimate (``schedule.to_eps``) and regressed on ``eps*``. ``"velocity"``: the output itself is
   regressed on ``(z_end − z_start)/(end − start)``. One step of the PeRFlow sampler
   (`lipstep.samplers.perflow`) from ``start`` with ``eps*`` lands exactly on ``z_end``.
5. **Guidance.** ``cfg_mode`` says how the sampled scales reach the student (its one forward pass):
   ``tokens`` (FADA: CFG cross-attention layers over Emb = cfg_a(γ_a − γ_r) + cfg_r(γ_r − γ_b) + γ_b),
   ``plain`` (the CFG layer over an MLP of the scales, no tokens), ``time`` (an MLP of the scales
   added to the timestep embedding), ``none`` (no scale input; the teacher target is then the
   conditional teacher, scales 1: "conditional only"). New layers are zero-initialised, so at step 0
   the student equals the teacher.
6. **Mixed supervision** (`lipstep.distill.losses`): ``L = L_distill + W(R)·L_gt`` per sample, with
   ``L_gt`` the student's ordinary eps-prediction loss on the real latents at the same t
   (``x_t = a_t·x0 + s_t·eps``, guidance scales (1, 1)), ``L_teacher`` the conditional teacher's loss
   on the same ``(x_t, eps)``, ``R = L_gt / L_teacher`` (stop-gradient). Modes: off | fixed:<w> |
   adaptive-unlimited | adaptive.

Both losses use the teacher's per-position motion weighting (`lipstep.distill.losses.motion_weights`),
so moving regions (the mouth) count as they did when the teacher was trained.

Roles: ``student`` (trainable) and ``teacher`` (frozen). `PerflowRecipe` builds a run for
`lipstep.train.runner.run_recipe` (``lipstep distill perflow``), which writes a self-contained student
directory whose ``lipstep.json`` records its sampler (``perflow``, steps, ``options: {windows, target}``,
embedded guidance scales).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from lipstep.codecs.cache import encode_prepared
from lipstep.config import check
from lipstep.data.dataset import WindowConfig, WindowDataset, batch_indices
from lipstep.diffusion.cond import Cond
from lipstep.diffusion.denoiser import Denoiser
from lipstep.diffusion.guidance import check_scale, multi_cfg
from lipstep.diffusion.schedules import Schedule, append_dims, ddim_step
from lipstep.distill.losses import (
    MixedConfig,
    batch_cond,
    mixed_weight,
    motion_weights,
    parse_mixed_mode,
    snr_weight,
)
from lipstep.distill.method import Built, Method, Role, TrainConfig, Validation
from lipstep.errors import IntegrityError, LipstepError
from lipstep.fsutil import (
    CHECKSUMS_NAME,
    atomic_path,
    read_checksums,
    sha256_file,
    verify_checksums,
    write_json_atomic,
)
from lipstep.modeldir import ModelInfo, check_data_size, load_eyes, load_model
from lipstep.nets.dit import AvatarDiT, param_count
from lipstep.samplers import SamplerInfo
from lipstep.samplers.perflow import TARGETS, ddim_eps_coeffs, window_bounds

CFG_MODES = ("none", "time", "plain", "tokens")


def check_guidance_settings(cfg) -> None:
    """The guidance fields a guided-copy student's config shares (PerflowConfig, DMDConfig): ``cfg_mode``,
    ``cfg_tokens``, the per-sample scale ranges and the student's default scales; raises ConfigError."""
    check(cfg.cfg_mode in CFG_MODES, f"cfg_mode must be one of {CFG_MODES}, got {cfg.cfg_mode!r}")
    check(cfg.cfg_tokens >= 1, "cfg_tokens must be >= 1")
    check_scale_ranges(cfg)
    for name in ("cfg_audio", "cfg_ref"):
        if (scale := getattr(cfg, name)) is not None:
            check_scale(scale, name)


def check_scale_ranges(cfg) -> None:
    """``cfg_audio_range`` and ``cfg_ref_range``, the per-sample guidance scales a recipe draws: (lo, hi) with
    0 <= lo <= hi and hi a valid scale; raises ConfigError."""
    for name in ("cfg_audio_range", "cfg_ref_range"):
        lo, hi = getattr(cfg, name)
        check(0 <= lo <= hi, f"{name} must be (lo, hi) with 0 <= lo <= hi, got ({lo}, {hi})")
        check_scale(hi, f"{name}[1]")


@dataclass
class PerflowConfig:
    """`lipstep distill perflow`: windows, teacher solve, target, guidance, mixed supervision, training."""

    windows: int = 4                        # K equal time windows
    solver_steps: int = 8                   # teacher DDIM steps inside one window (M)
    target: Literal["ddim_eps", "velocity"] = "ddim_eps"
    cfg_mode: Literal["none", "time", "plain", "tokens"] = "tokens"
    cfg_tokens: int = 4                     # tokens per guidance embedding (tokens / plain)
    cfg_audio_range: tuple[float, float] = (1.0, 5.0)   # cfg_a ~ U(range) per sample
    cfg_ref_range: tuple[float, float] = (1.0, 3.0)     # cfg_r ~ U(range) per sample
    mixed: MixedConfig = field(default_factory=MixedConfig)
    motion_weight: float = 1.0              # extra weight on moving positions (as the teacher's loss)
    p_motion_ref: float = 0.5               # first-chunk training (motion = reference), as the teacher
    student_steps: int = 6                  # the student's default sampler steps (6 over 4 = 2, 2, 1, 1)
    cfg_audio: float | None = None          # the student's default scales; None = the teacher's defaults
    cfg_ref: float | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=600, batch_size=4, lr=1e-4, warmup_steps=50, ema_decay=0.99, checkpoint_every=100,
        validate_every=0, log_every=10))
    pairs: int = 0                          # 0 = the teacher solves its window online every step; N > 0 =
    #                                         solve N (window start, window end) pairs once into a pair bank
    #                                         and train on it (t is still drawn fresh inside each window)
    pairs_dir: str = ""                     # the pair bank's directory ("" = OUT/pairs); an existing bank
    #                                         made with the same teacher, data and pair settings is reused
    val_clips: int = 2                      # held-out clips rendered as validation videos at the end
    val_seconds: float = 2.0

    def validate(self) -> None:
        check(self.windows >= 1, f"windows must be >= 1, got {self.windows}")
        check(self.solver_steps >= 1, f"solver_steps must be >= 1, got {self.solver_steps}")
        check(self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}")
        check_guidance_settings(self)
        check(self.motion_weight >= 0 and 0 <= self.p_motion_ref <= 1,
              "motion_weight must be >= 0 and p_motion_ref in [0, 1]")
        check(self.student_steps >= self.windows,
              f"student_steps ({self.student_steps}) must be >= windows ({self.windows}): one step per window at least")
        self.mixed.validate()
        check(parse_mixed_mode(self.mixed.mode)[0] == "off" or self.target == "ddim_eps",
              "mixed supervision needs target=ddim_eps (its ground-truth loss is an eps loss)")
        check(self.val_clips >= 0 and self.val_seconds > 0, "val_clips >= 0 and val_seconds > 0 required")
        check(self.pairs >= 0, f"pairs must be >= 0, got {self.pairs}")


# ---------------------------------------------------------------------------------------------
# the pieces


def sample_windows(n: int, windows: int, generator: torch.Generator, device) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample: window (start, end) and a time inside it, start ≥ t > end (float64 [n] each)."""
    k = torch.randint(windows, (n,), generator=generator, device=generator.device)
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    start, end = window_bounds(k.cpu(), windows)
    start, end, u = start.to(device), end.to(device), u.to(device)
    return start, end, start - (start - end) * u


def sample_scales(n: int, cfg: PerflowConfig, generator: torch.Generator, device) -> Tensor:
    """Guidance scales [n, 2] = (cfg_a, cfg_r) per sample; all ones for cfg_mode "none"."""
    if cfg.cfg_mode == "none":
        return torch.ones(n, 2, device=device)
    u = torch.rand(n, 2, generator=generator, device=generator.device).to(device)
    lo = torch.tensor([cfg.cfg_audio_range[0], cfg.cfg_ref_range[0]], device=device)
    hi = torch.tensor([cfg.cfg_audio_range[1], cfg.cfg_ref_range[1]], device=device)
    return lo + (hi - lo) * u


@torch.no_grad()
def teacher_window_solve(teacher: Denoiser, z_start: Tensor, start: Tensor, end: Tensor, cond: Cond,
                         scales: Tensor, steps: int) -> Tensor:
    """DDIM from ``start`` to ``end`` (per-sample [B] times) in ``steps`` steps with multi-CFG at ``scales``."""
    schedule = teacher.schedule
    fn = multi_cfg(teacher, scales[:, 0], scales[:, 1])
    z = z_start.float()
    for j in range(steps):
        t = (start - (start - end) * (j / steps)).float()
        t_next = (start - (start - end) * ((j + 1) / steps)).float()
        pred = fn(z, t, cond)
        z = ddim_step(schedule, z, t, t_next, schedule.to_x0(pred, z, t), schedule.to_eps(pred, z, t)).float()
    return z


def perflow_targets(schedule: Schedule, z_start: Tensor, z_end: Tensor, start: Tensor, end: Tensor,
                    target: str) -> Tensor:
    """The regression target: constant ``eps*`` ("ddim_eps") or straight-line velocity ("velocity")."""
    if target == "velocity":
        return (z_end - z_start) / append_dims((end - start).to(z_start.dtype), z_start.ndim)
    lam, eta = ddim_eps_coeffs(schedule, start, end, z_start)
    return (z_end - lam * z_start) / eta


def build_student(teacher, cfg: PerflowConfig):
    """A copy of the teacher's AvatarDiT with the guidance input of ``cfg.cfg_mode`` (zero-initialised)."""
    return guided_copy(teacher, cfg.cfg_mode, cfg.cfg_tokens, cfg.train.seed)


def guided_copy(teacher, cfg_layer: str, cfg_tokens: int, seed: int):
    """A trainable copy of the teacher's AvatarDiT with the guidance input ``cfg_layer`` (`CFG_MODES`); its new
    layers are zero-initialised, so at the start it computes exactly what the conditional teacher does."""
    dit = dataclasses.replace(teacher.cfg, cfg_layer=cfg_layer, cfg_tokens=cfg_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = AvatarDiT(dit)
    result = student.load_state_dict(teacher.state_dict(), strict=False)
    bad = [k for k in result.missing_keys if not k.startswith("cfg_embed") and ".cfg_attn." not in k]
    if bad or result.unexpected_keys:
        raise LipstepError(f"the student cannot start from the teacher's weights (missing {bad[:2]}, "
                           f"unexpected {result.unexpected_keys[:2]})")
    student.train().requires_grad_(True)
    if student.mouth_head is not None:  # the teacher's fitted audio -> mouth-state head stays as it is
        student.mouth_head.requires_grad_(False)
    return student


X0_EPS_GAMMA = 5.0  # γ of the eps-error weight for x0-predicting nets (`PerflowMethod._student_eps_err`)


class PerflowMethod(Method):
    """The FADA objective (module docstring): roles ``student`` (trained) and ``teacher`` (frozen)."""

    def __init__(self, student, teacher, schedule: Schedule, cfg: PerflowConfig, *, residual: bool = False):
        cfg.validate()
        self.student, self.teacher, self.schedule, self.cfg = student, teacher, schedule, cfg
        self.residual = residual  # batches hold offsets from the reference (the teacher's ModelInfo.residual)
        self.bind({"student": student, "teacher": teacher})

    def roles(self) -> dict[str, Role]:
        return {"student": Role(self.student), "teacher": Role(self.teacher, trainable=False)}

    def bind(self, modules) -> None:
        super().bind(modules)
        self.student_fn = Denoiser(self.modules["student"], self.schedule)
        self.teacher_fn = Denoiser(self.modules["teacher"].eval().requires_grad_(False), self.schedule)

    def _student_eps_err(self, pred: Tensor, z: Tensor, t: Tensor, target: Tensor) -> Tensor:
        out = self.schedule.to_eps(pred, z, t) if self.cfg.target == "ddim_eps" else pred.float()
        err = (out.float() - target.float()).square()
        if self.schedule.prediction == "x0" and self.cfg.target == "ddim_eps":
            # eps = (z - a·x0) / s multiplies an x0 error by a / s (an x0 error weight of SNR): near t = 0 one
            # sample would dominate the batch, near t = 1 none would count. The teacher's x0 weight in eps
            # units, min(SNR + 1, γ) / SNR (`snr_weight`), bounds both ends.
            snr = self.schedule.snr(t).float().clamp(max=1e8)
            err = err * append_dims(snr_weight(self.schedule, t, X0_EPS_GAMMA) / snr, err.ndim)
        return err

    def loss(self, role: str, batch: dict, step: int, generator: torch.Generator):
        cfg, schedule = self.cfg, self.schedule
        x0 = batch["latents"].float()
        b, dev = x0.shape[0], x0.device
        if "z_end" in batch:  # a pair bank item: window, noise, scales and the teacher's solve are stored
            cond = batch_cond(batch)
            start, end = (v.to(dev) for v in window_bounds(batch["window"].cpu(), cfg.windows))
            u = torch.rand(b, generator=generator, device=generator.device, dtype=torch.float64).to(dev)
            t = start - (start - end) * u
            eps, scales, z_end = batch["eps"].float(), batch["scales"].float(), batch["z_end"].float()
            z_start = schedule.add_noise(x0, eps, start).float()
        else:
            cond = batch_cond(batch, generator, cfg.p_motion_ref, residual=self.residual)
            start, end, t = sample_windows(b, cfg.windows, generator, dev)
            eps = torch.randn(x0.shape, generator=generator, device=generator.device).to(dev)
            scales = sample_scales(b, cfg, generator, dev)
            z_start = schedule.add_noise(x0, eps, start).float()
            z_end = teacher_window_solve(self.teacher_fn, z_start, start, end, cond, scales, cfg.solver_steps)
        frac = append_dims(((t - start) / (end - start)).float(), x0.ndim)
        z_t = z_start + (z_end - z_start) * frac
        target = perflow_targets(schedule, z_start, z_end, start, end, cfg.target)
        weight = motion_weights(x0, cfg.motion_weight)
        use_scales = cfg.cfg_mode != "none"
        s_cond = dataclasses.replace(cond, cfg_scales=scales if use_scales else None)
        mixed_on = parse_mixed_mode(cfg.mixed.mode)[0] != "off"
        t32 = t.float()
        if not mixed_on:
            pred = self.student_fn(z_t, t32, s_cond)
            l_distill = (self._student_eps_err(pred, z_t, t32, target) * weight).flatten(1).mean(1)
            return l_distill.mean(), {"l_distill": float(l_distill.detach().mean())}
        # mixed supervision: the ground-truth branch rides in the same student forward (batch 2B)
        x_t = schedule.add_noise(x0, eps, t32).float()
        gt_cond = dataclasses.replace(cond, cfg_scales=torch.ones_like(scales) if use_scales else None)
        both = self.student_fn(torch.cat([z_t, x_t]), torch.cat([t32, t32]), Cond.cat([s_cond, gt_cond]))
        pred, pred_gt = both.chunk(2)
        l_distill = (self._student_eps_err(pred, z_t, t32, target) * weight).flatten(1).mean(1)
        l_gt = (self._student_eps_err(pred_gt, x_t, t32, eps) * weight).flatten(1).mean(1)
        with torch.no_grad():
            p_teacher = self.teacher_fn(x_t, t32, cond)
            l_teacher = (self._student_eps_err(p_teacher, x_t, t32, eps) * weight).flatten(1).mean(1)
            r = l_gt.detach() / l_teacher.clamp_min(1e-8)
            w = mixed_weight(cfg.mixed, r)
        loss = (l_distill + w * l_gt).mean()
        return loss, {"l_distill": float(l_distill.detach().mean()), "l_gt": float(l_gt.detach().mean()),
                      "ratio": float(r.median()), "w_gt": float(w.mean())}


# ---------------------------------------------------------------------------------------------
# the pair bank: teacher window solves computed once, reused by every epoch (and by other runs)

PAIR_KEYS = ("latents", "reference_latent", "motion_latents", "audio", "eps", "window", "scales", "z_end")
OPTIONAL_PAIR_KEYS = ("blink",)  # stored when the data has them (eyelid closure, for a teacher conditioned on it)
PART_SIZE = 64  # pairs per bank file


def pair_settings(cfg: PerflowConfig, teacher_path, prepared) -> dict:
    """What a pair bank depends on; a bank is reused only when all of it matches."""
    return {"teacher": str(Path(teacher_path).resolve()), "data": str(Path(prepared).resolve()),
            "windows": cfg.windows, "solver_steps": cfg.solver_steps, "guided": cfg.cfg_mode != "none",
            "cfg_audio_range": list(cfg.cfg_audio_range), "cfg_ref_range": list(cfg.cfg_ref_range),
            "p_motion_ref": cfg.p_motion_ref, "seed": cfg.train.seed}


def build_pair_bank(method: PerflowMethod, dataset, n_pairs: int, directory: Path, settings: dict, *,
                    batch_size: int = 8, progress: bool = True) -> Path:
    """Solve ``n_pairs`` teacher windows into ``directory`` (parts of `PART_SIZE`, resumable, atomic)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / "bank.json"
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise IntegrityError(f"{meta_path} is damaged ({' '.join(str(e).split())[:80]}); remove the pair bank "
                                 "or choose another pairs_dir") from None
        if not isinstance(old, dict) or not isinstance(old.get("settings", {}), dict):
            raise IntegrityError(f"{meta_path} is damaged (not a pair bank index); remove the pair bank or choose "
                                 "another pairs_dir")
        if old.get("settings") != settings:
            diff = sorted(k for k in settings if old.get("settings", {}).get(k) != settings[k])
            raise LipstepError(f"{directory}: pair bank made with other settings ({', '.join(diff)}); "
                               f"choose another pairs_dir or remove it")
    write_json_atomic(meta_path, {"settings": settings, "pairs": n_pairs, "part_size": PART_SIZE})
    cfg, schedule = method.cfg, method.schedule
    parts = -(-n_pairs // PART_SIZE)
    dev = next(method.teacher.parameters()).device
    done = sum((directory / f"part_{p:05d}.safetensors").is_file() for p in range(parts))
    bar = tqdm(total=n_pairs, initial=min(n_pairs, done * PART_SIZE), desc="teacher pairs", unit="pair",
               disable=not progress, dynamic_ncols=True)
    for p in range(parts):
        path = directory / f"part_{p:05d}.safetensors"
        if path.is_file():
            continue
        count = min(PART_SIZE, n_pairs - p * PART_SIZE)
        order = batch_indices(len(dataset), count, settings["seed"] + 7919, start_step=p)
        items = [dataset[i] for i in next(order)]
        batch = {k: torch.stack([it[k] for it in items]).to(dev) for k in items[0] if torch.is_tensor(items[0][k])}
        gen = torch.Generator(device="cpu").manual_seed(settings["seed"] * 1000003 + p)
        out = {k: [] for k in (*PAIR_KEYS, *(k for k in OPTIONAL_PAIR_KEYS if k in batch))}
        for lo in range(0, count, batch_size):
            sub = {k: v[lo:lo + batch_size] for k, v in batch.items()}
            b = len(sub["latents"])
            cond = batch_cond(sub, gen, cfg.p_motion_ref, residual=method.residual)
            k = torch.randint(cfg.windows, (b,), generator=gen)
            start, end = (v.to(dev) for v in window_bounds(k, cfg.windows))
            eps = torch.randn(sub["latents"].shape, generator=gen).to(dev)
            scales = sample_scales(b, cfg, gen, dev)
            z_start = schedule.add_noise(sub["latents"].float(), eps, start).float()
            z_end = teacher_window_solve(method.teacher_fn, z_start, start, end, cond, scales, cfg.solver_steps)
            motion = cond.motion if cond.motion is not None else sub["latents"][:, :0]
            for key, v in (("latents", sub["latents"]), ("reference_latent", cond.reference), ("motion_latents", motion),
                           ("audio", cond.audio), ("eps", eps), ("window", k), ("scales", scales), ("z_end", z_end),
                           *((key, sub[key]) for key in OPTIONAL_PAIR_KEYS if key in out)):
                out[key].append(v.detach().cpu())
            bar.update(b)
        with atomic_path(path) as tmp:
            save_file({k: torch.cat(v).contiguous() for k, v in out.items()}, str(tmp))
            digest = sha256_file(tmp)
        write_json_atomic(directory / CHECKSUMS_NAME, {"sha256": {**(read_checksums(directory) or {}), path.name: digest}})
    bar.close()
    return directory


def _read_part(path: Path) -> dict[str, Tensor]:
    try:
        part = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a damaged file
        raise IntegrityError(f"{path} is damaged or truncated ({' '.join(str(e).split())[:80]}); remove it and "
                             "run again to solve it anew") from None
    missing = [k for k in PAIR_KEYS if k not in part]
    if missing:
        raise IntegrityError(f"{path} is not a pair bank part (no {', '.join(missing)})")
    return part


class PairBank(torch.utils.data.Dataset):
    """The pairs of a bank directory as dataset items (all in memory)."""

    def __init__(self, directory: Path, n_pairs: int):
        parts = sorted(Path(directory).glob("part_*.safetensors"))
        if not parts:
            raise LipstepError(f"{directory}: no pair bank files")
        verify_checksums(directory)
        data = [_read_part(p) for p in parts]
        keys = [*PAIR_KEYS, *(k for k in OPTIONAL_PAIR_KEYS if all(k in d for d in data))]
        self.data = {k: torch.cat([d[k] for d in data])[:n_pairs] for k in keys}
        if len(self.data["latents"]) < n_pairs:
            raise LipstepError(f"{directory}: the pair bank holds {len(self.data['latents'])} pairs, {n_pairs} asked")

    def __len__(self) -> int:
        return len(self.data["latents"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.data.items()}


# ---------------------------------------------------------------------------------------------
# running it


def student_info(teacher_info: ModelInfo, cfg: PerflowConfig) -> ModelInfo:
    """The student's ModelInfo: the teacher's schedule and chunk layout, the PeRFlow sampler as its default."""
    t = teacher_info.sampler
    cfg_audio = t.cfg_audio if cfg.cfg_audio is None else cfg.cfg_audio
    cfg_ref = t.cfg_ref if cfg.cfg_ref is None else cfg.cfg_ref
    if cfg.cfg_mode == "none":
        cfg_audio = cfg_ref = 1.0  # trained on the conditional teacher: no guidance input, one pass
    sampler = SamplerInfo(name="perflow", steps=cfg.student_steps, cfg_audio=cfg_audio, cfg_ref=cfg_ref,
                          guidance="embedded" if cfg.cfg_mode != "none" else "cfg",
                          options={"windows": cfg.windows, "target": cfg.target})
    return dataclasses.replace(teacher_info, kind="student", recipe="perflow", sampler=sampler, trained={})


@dataclass
class TeacherRun:
    """A distillation run's teacher (loaded on the GPU when there is one) and its training data."""

    root: Path                      # the teacher's model directory
    info: ModelInfo
    codec: object
    audio: object                   # the audio encoder
    net: AvatarDiT
    latents: Path                   # the latent cache of the prepared data
    dataset: WindowDataset          # training windows (offsets from the reference for a residual teacher)
    eyes: object = None             # the teacher's eye net (`lipstep.nets.eyes`), which its students keep


def open_teacher(teacher: str | Path, prepared: Path, command: str, *, progress: bool,
                 blink_repeat: int = 0) -> TeacherRun:
    """Load a teacher for ``command`` (e.g. "distill perflow") and its windows of ``prepared``, encoded with the
    teacher's codec (cached); one-line errors when the model is not a teacher or the data does not fit it.
    ``blink_repeat``: windows holding a blink appear 1 + k times per epoch (`WindowDataset`) when the teacher
    reads blinks (ignored otherwise)."""
    root, tinfo, codec, audio, net = load_model(teacher, device="cuda" if torch.cuda.is_available() else "cpu")
    if tinfo.kind != "teacher":
        raise LipstepError(f"{root}: is a {tinfo.kind} ({tinfo.recipe}); {command} needs a teacher")
    if audio.cfg.kind != "mel" or (audio.window, audio.feature_dim) != (16, 80):
        raise LipstepError(f"{command} trains on the shards' log-mel windows: the teacher's audio encoder must "
                           "be mel with window 16 and 80 mels")
    size = check_data_size(codec, prepared)
    if size != tinfo.image_size:
        raise LipstepError(f"{prepared}: {size}px frames, but the teacher works on {tinfo.image_size}px; "
                           f"prepare the data with --size {tinfo.image_size}")
    cache = encode_prepared(prepared, codec, progress=progress)
    window = WindowConfig(frames=tinfo.frames, motion_frames=tinfo.motion_frames)
    dataset = WindowDataset(prepared, "train", window, latents=cache, pixels=False, residual=tinfo.residual,
                            blink_repeat=blink_repeat if net.cfg.blink else 0)
    return TeacherRun(root, tinfo, codec, audio, net, cache, dataset, load_eyes(root, tinfo, codec, net.cfg))


class PerflowRecipe:
    """`lipstep distill perflow` for `lipstep.train.runner.run_recipe`: a teacher (model directory or bundled
    name) + a `PerflowConfig`."""

    name = "perflow"

    def __init__(self, teacher: str | Path, cfg: PerflowConfig | None = None):
        self.teacher, self.cfg = teacher, cfg or PerflowConfig()
        self.cfg.validate()

    def build(self, prepared: Path, out: Path, *, resume: bool, progress: bool):
        cfg = self.cfg
        src = open_teacher(self.teacher, prepared, "distill perflow", progress=progress)
        root, tinfo, codec, audio, teacher = src.root, src.info, src.codec, src.audio, src.net
        cache, dataset = src.latents, src.dataset
        student = build_student(teacher, cfg).cpu()
        method = PerflowMethod(student, teacher, tinfo.make_schedule(), cfg, residual=tinfo.residual > 0)
        if cfg.pairs:
            bank = Path(cfg.pairs_dir) if cfg.pairs_dir else out / "pairs"
            build_pair_bank(method, dataset, cfg.pairs, bank, pair_settings(cfg, root, prepared), progress=progress)
            dataset = PairBank(bank, cfg.pairs)
        print(f"perflow: student AvatarDiT ({param_count(student.cfg) / 1e6:.2f} M parameters, cfg_mode "
              f"{cfg.cfg_mode}) from the teacher {root}; {cfg.windows} windows, {cfg.solver_steps} teacher steps "
              f"per window, target {cfg.target}, mixed {cfg.mixed.mode}; {len(dataset)} "
              f"{'teacher pairs from ' + str(bank) if cfg.pairs else 'training windows (teacher solved online)'}",
              flush=True)
        provenance = {"teacher": str(root), "data": str(prepared.resolve()), "windows": cfg.windows,
                      "solver_steps": cfg.solver_steps, "cfg_mode": cfg.cfg_mode, "mixed": cfg.mixed.mode,
                      "target": cfg.target}
        return Built(method=method, dataset=dataset, train=cfg.train, info=student_info(tinfo, cfg), codec=codec,
                     audio=audio, export_role="student", latents=cache,
                     validation=Validation(cfg.val_clips, cfg.student_steps, cfg.val_seconds),
                     provenance=provenance, record="distill.json", run_config=cfg, eyes=src.eyes)


__all__ = ["CFG_MODES", "PairBank", "PerflowConfig", "PerflowMethod", "PerflowRecipe", "TeacherRun", "build_pair_bank",
           "build_student", "check_guidance_settings", "check_scale_ranges", "guided_copy", "open_teacher",
           "pair_settings", "perflow_targets", "sample_scales", "sample_windows", "student_info",
           "teacher_window_solve"]
