"""The sampler registry and a model's sampler record (`SamplerInfo`).

Every sampler is a `SamplerKind`: its stateless function and its options dataclass. The options own
what differs between samplers (the time grid, the extra keyword arguments of the function, the
smallest step count), so nothing outside this package branches on a sampler's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

from torch import Tensor

from lipstep.checks import MAX_STEPS
from lipstep.config import check, from_dict
from lipstep.diffusion.guidance import check_scale
from lipstep.diffusion.schedules import Schedule
from lipstep.errors import ConfigError
from lipstep.samplers.ddim import DDIMOptions, sample_ddim
from lipstep.samplers.euler import EulerOptions, sample_euler
from lipstep.samplers.fewstep import FewStepOptions, sample_fewstep
from lipstep.samplers.perflow import PerflowOptions, sample_perflow


@dataclass(frozen=True)
class SamplerKind:
    """A sampler: ``fn(denoiser, noise, timesteps, cond, *, schedule, generator, callback, **options.kwargs())``
    and its options dataclass (``validate()``, ``timesteps(schedule, steps)``, ``kwargs()``)."""

    fn: Callable
    options: type

    def __call__(self, *args, **kwargs) -> Tensor:
        return self.fn(*args, **kwargs)


SAMPLERS: dict[str, SamplerKind] = {
    "ddim": SamplerKind(sample_ddim, DDIMOptions),
    "euler": SamplerKind(sample_euler, EulerOptions),
    "fewstep": SamplerKind(sample_fewstep, FewStepOptions),
    "perflow": SamplerKind(sample_perflow, PerflowOptions),
}

GUIDANCE = ("cfg", "embedded")


@dataclass
class SamplerInfo:
    """A model's default sampler (what `generate` uses when no option overrides it)."""

    name: str = "ddim"              # a key of SAMPLERS
    steps: int = 25                 # sampler steps per chunk
    cfg_audio: float = 3.0          # FADA Eq. 9 audio scale (1 = no audio guidance)
    cfg_ref: float = 1.5            # FADA Eq. 9 reference scale (1 = no reference guidance)
    guidance: str = "cfg"           # cfg: FADA Eq. 9, three condition patterns per step (one pass at
    #                                 scales 1); embedded: the scales are a network input (CFG tokens), one pass
    options: dict = field(default_factory=dict)  # the sampler's own options (its Options dataclass; {} = defaults)

    @staticmethod
    def upgrade(data: dict) -> dict:
        """Stored records of lipstep.json format 1 (and run configs of that time) to today's form."""
        return legacy_sampler(data)

    def validate(self) -> None:
        check(self.name in SAMPLERS, f"sampler.name must be one of {sorted(SAMPLERS)}, got '{self.name}'")
        check(1 <= self.steps <= MAX_STEPS, f"sampler.steps must be in 1..{MAX_STEPS}, got {self.steps}")
        check_scale(self.cfg_audio, "sampler.cfg_audio")
        check_scale(self.cfg_ref, "sampler.cfg_ref")
        check(self.guidance in GUIDANCE, f"sampler.guidance must be cfg or embedded, got '{self.guidance}'")
        self.sampler_options()

    @property
    def kind(self) -> SamplerKind:
        return SAMPLERS[self.name]

    def sampler_options(self):
        """The typed, validated options of this sampler (unknown keys are errors)."""
        opts = from_dict(self.kind.options, dict(self.options), prefix="sampler.options.")
        opts.validate()
        return opts

    def timesteps(self, schedule: Schedule, steps: int | None = None) -> Tensor:
        """The grid [steps + 1] this sampler integrates along."""
        return self.sampler_options().timesteps(schedule, steps or self.steps)


def legacy_sampler(data: dict) -> dict:
    """A ``sampler`` record of lipstep.json format 1 (every sampler's fields flat: spacing, eta, windows,
    target) in today's form: the fields of its own sampler move into ``options``, the others are dropped."""
    data = dict(data)
    flat = {k: data.pop(k) for k in ("spacing", "eta", "windows", "target") if k in data}
    if not flat:
        return data
    kind = SAMPLERS.get(data.get("name", "ddim"))
    if kind is None:
        raise ConfigError(f"sampler.name must be one of {sorted(SAMPLERS)}, got '{data.get('name')}'")
    own = {f.name for f in fields(kind.options)}
    options = {k: v for k, v in flat.items() if k in own}
    data["options"] = {**options, **data.get("options", {})}
    return data


__all__ = ["GUIDANCE", "SAMPLERS", "SamplerInfo", "SamplerKind", "legacy_sampler"]
