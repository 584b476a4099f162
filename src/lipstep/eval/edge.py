"""Edge feasibility for `lipstep bench`: FLOPs per network evaluation and an estimate for slower devices.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one denoiser call at batch 1 with the model's chunk
layout (one NFE) and one decoder call on one latent frame. It counts matrix products, convolutions and
attention (``scaled_dot_product_attention`` on the CPU dispatches to a kernel the counter does not know;
it is counted here with the counter's own attention formula); element-wise work (norms, activations,
softmax) is not counted, as is usual. A multiply-add is 2 FLOPs.

Estimate (**not a measurement**): a row's measured ms/frame scaled by how much slower the device is than
this machine at the same thread count,

    est_ms_per_frame = ms_per_frame × host_gflops / device_gflops

where ``host_gflops`` is measured here (fp32 matrix products of 512 × 512, the best of a few bursts) and
``device_gflops`` is an assumed sustained fp32 figure for the device (``--device-gflops NAME=VALUE``). It
assumes the pipeline reaches the same fraction of the machine's matrix throughput on the device as here
(``efficiency = flops_per_frame / ms_per_frame / host_gflops``, reported too), and that the non-arithmetic
overhead scales alike. For int8 rows it compares int8 work with fp32 throughput: optimistic for a device
without fast int8 dot products, pessimistic for one with them.

The default device: ``rpi5`` = 60 GFLOP/s, an assumption for a Raspberry Pi 5 (4 × Cortex-A76 at 2.4 GHz):
its fp32 NEON peak is 4 cores × 2.4 GHz × 16 FLOP/cycle (two 128-bit FMA pipes) = 154 GFLOP/s, and about
40 % of that (in line with published HPL results of about 30 GFLOP/s in fp64 on the Pi 5) is assumed
sustained. Measure on the device itself before relying on it.
"""

from __future__ import annotations

import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from lipstep.diffusion.cond import Cond
from lipstep.errors import LipstepError

DEFAULT_DEVICES = {"rpi5": 60.0}
DEVICE_NOTES = {"rpi5": "Raspberry Pi 5, 4x Cortex-A76 @ 2.4 GHz: fp32 peak 154 GFLOP/s, 60 assumed sustained "
                        "(not measured)"}
GEMM_SIZE = 512
TRIALS = 3


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def count_flops(fn, *args) -> int:
    """FLOPs of ``fn(*args)`` under `FlopCounterMode` (matmul, conv, attention; see the module docstring)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def denoiser_flops(net, info) -> int:
    """FLOPs of one network evaluation: the PyTorch net at batch 1 on the model's chunk layout."""
    cfg, s = net.cfg, net.cfg.latent_size
    C, T, M = cfg.latent_channels, info.frames, info.motion_frames
    cond = Cond(reference=torch.zeros(1, C, s, s), audio=torch.zeros(1, T, cfg.audio_window, cfg.audio_dim),
                motion=torch.zeros(1, M, C, s, s) if M else None,
                visemes=torch.zeros(1, T, dtype=torch.long) if cfg.use_visemes else None,
                blink=torch.zeros(1, T) if cfg.blink else None,
                cfg_scales=torch.ones(1, 2) if cfg.cfg_layer != "none" else None)
    return count_flops(net, torch.zeros(1, T, C, s, s), torch.full((1,), 500.0), cond)


def decoder_flops_per_frame(codec, info) -> int:
    """FLOPs of decoding one latent frame with the PyTorch codec."""
    s = info.image_size // codec.downsample
    return count_flops(codec.decode, torch.zeros(1, codec.latent_channels, s, s))


def host_gflops(threads: int, seconds: float = 0.3) -> float:
    """Sustained fp32 GFLOP/s of this machine at `threads` torch threads: 512 x 512 matrix products for `seconds`
    (the best of `TRIALS` bursts)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(GEMM_SIZE, GEMM_SIZE), torch.randn(GEMM_SIZE, GEMM_SIZE)
        torch.mm(a, b)  # warm-up
        best = 0.0
        for _ in range(TRIALS):  # the best of a few bursts: what the machine sustains, not a moment of contention
            n, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds / TRIALS or n < 2:
                torch.mm(a, b)
                n += 1
            best = max(best, 2 * GEMM_SIZE ** 3 * n / elapsed / 1e9)
        return best
    finally:
        torch.set_num_threads(previous)


def parse_device_gflops(items: list[str] | None) -> dict[str, float]:
    """``NAME=GFLOPS`` items -> {name: GFLOP/s}; `DEFAULT_DEVICES` when none; a one-line LipstepError otherwise."""
    if not items:
        return dict(DEFAULT_DEVICES)
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            gflops = float(value)
        except ValueError:
            gflops = math.nan
        if not sep or not name or not (math.isfinite(gflops) and gflops > 0):
            raise LipstepError(f"--device-gflops {item}: expected NAME=GFLOPS with a positive number, e.g. rpi5=60")
        out[name] = gflops
    return out


def estimate(ms_per_frame: float, flops_per_frame: float, host: float, devices: dict[str, float],
             fps: float) -> dict:
    """The estimate of the module docstring for one bench row: efficiency here and, per device, ms/frame, fps and
    real-time factor."""
    achieved = flops_per_frame / (ms_per_frame / 1000) / 1e9
    out = {"host_gflops": host, "achieved_gflops": achieved, "efficiency": achieved / host, "devices": {}}
    for name, gflops in devices.items():
        ms = ms_per_frame * host / gflops
        out["devices"][name] = {"assumed_gflops": gflops, "ms_per_frame": ms, "fps": 1000 / ms,
                                "rtf": ms / 1000 * fps}
    return out


__all__ = ["DEFAULT_DEVICES", "DEVICE_NOTES", "count_flops", "decoder_flops_per_frame", "denoiser_flops",
           "estimate", "host_gflops", "parse_device_gflops"]
