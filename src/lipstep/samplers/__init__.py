"""lipstep.samplers: stateless samplers ``(denoiser, noise, timesteps, cond, *, schedule, ...) -> x``.

``denoiser(x_t, t, cond)`` returns the native prediction of ``schedule`` (a `lipstep.diffusion.
denoiser.Denoiser`, possibly wrapped in guidance). No sampler keeps step state or touches torch's
global RNG. Each sampler owns its options and its time grid (`registry.SamplerKind`); a model
directory records ``sampler: {name, options, steps, cfg_audio, cfg_ref, guidance}`` (`SamplerInfo`),
and `chunks.ChunkSampler` runs any of them chunk by chunk without knowing which one it is.
"""

from lipstep.samplers.chunks import ChunkLayout, ChunkSampler, decode_frames, net_device, sample_chunks
from lipstep.samplers.ddim import DDIMOptions, sample_ddim
from lipstep.samplers.euler import EulerOptions, sample_euler
from lipstep.samplers.fewstep import FewStepOptions, sample_fewstep
from lipstep.samplers.perflow import PerflowOptions, sample_perflow
from lipstep.samplers.registry import SAMPLERS, SamplerInfo, SamplerKind, legacy_sampler

__all__ = ["SAMPLERS", "ChunkLayout", "ChunkSampler", "DDIMOptions", "EulerOptions", "FewStepOptions", "PerflowOptions", "SamplerInfo", "SamplerKind",
           "decode_frames", "legacy_sampler", "net_device", "sample_chunks", "sample_ddim", "sample_euler", "sample_fewstep",
           "sample_perflow"]
