"""`lipstep bench`: teacher and students side by side in one process, on the same inputs (metrics.md §4).

A timed run is the whole path a user pays for once the models are loaded: crop and encode the portrait,
encode the audio, denoise every chunk, decode, and mux an mp4 (into a temporary directory). The total
comes from an outer timer. The components come from `AvatarPipeline`'s own timings plus the mux timer,
so ``unaccounted_frac = 1 - component sum / total`` shows whether the breakdown explains the total.

Protocol:

* Threads are fixed with ``torch.set_num_threads`` (default: the physical cores, else 2). The CPU model,
  torch version, dtype, device and load average are recorded.
* All pipelines are loaded before anything is timed; ``load_s`` is reported and is not part of a total.
* ``warmup`` untimed runs, then ``repeats`` timed runs, round-robin over the models, so that drift
  from other processes on the machine is spread over every model. Each quantity gets its median and
  p90 (linear interpolation; with 3 repeats p90 is close to the maximum). Papers use >= 10 repeats
  after >= 3 warm-ups.
* CUDA: every timer reads the clock after ``torch.cuda.synchronize()`` (`AvatarPipeline.clock`).
* First-chunk latency: a separate run per repeat that makes the same pipeline call with an ``on_chunk``
  hook. When chunk 0 is sampled, the hook decodes its frames and stops the run. The latency is the time
  from the call (portrait and whole audio given) to those frames, so it includes cropping and encoding
  the portrait and the first chunk's audio features (the pipeline streams: features are made chunk by
  chunk). A live audio stream would also have to wait for the first chunk's audio (``chunk_seconds``)
  plus the audio windows' look-ahead (66 ms for log-mel; `AvatarStream.lookahead_seconds`).
* Peak memory (``peak_mem_mb``): on CUDA, ``torch.cuda.max_memory_allocated`` minus the allocation at
  the start of the run (the peak statistics are reset before each run). On CPU, the peak resident set
  size minus the RSS at the start of the run. On Linux the kernel's own peak (VmHWM, reset per run) is
  used, because sampling RSS every 2 ms in a Python thread (the fallback elsewhere, via psutil) made
  runs about 5% slower on a busy 2-core machine (GIL handoffs). Either way it is the working memory of
  a generation on top of the loaded models. ``weights_mb`` and ``peak_mem_total_mb`` (the whole
  process: allocator peak or RSS peak) are reported too; ``peak_mem_method`` names the method.
  ``peak_rss_mb`` is the process's peak resident set during the run (on CUDA: its lifetime peak): every
  benchmarked pipeline is loaded in this one process, so for a deployment figure bench one row alone.

Rows (edge runs): one per model × ``runtimes`` (``torch``, ``onnx``, ``onnx-int8``: ONNX Runtime sessions for
the denoiser, decoder and log-mel front end, `lipstep.runtime`) × ``threads`` (``torch.set_num_threads`` and the
sessions' intra-op threads) × ``emits`` (``frames``: the whole path; ``latents``: hybrid mode, denoise only,
no decode and no mux; `lipstep.hybrid`). A row's label is the model's, followed by whatever varies. Each
model also gets its FLOPs per network evaluation, and each row an estimate (not a measurement) of its speed
on slower devices from its FLOPs and measured latency (`lipstep.eval.edge`).
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import torch
from tqdm.auto import tqdm

try:  # resource is POSIX-only: the CUDA runs' RSS peak
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

from lipstep.checks import MAX_STEPS, check_device, check_threads
from lipstep.data.examples import example_inputs
from lipstep.data.media import SAMPLE_RATE, read_audio, read_image, write_video
from lipstep.diffusion.guidance import check_scale
from lipstep.errors import LipstepError
from lipstep.eval.edge import DEVICE_NOTES, decoder_flops_per_frame, denoiser_flops, estimate, host_gflops
from lipstep.eval.edge import parse_device_gflops as parse_devices
from lipstep.fsutil import atomic_path, write_json_atomic, write_text_atomic
from lipstep.hybrid import latent_bytes_per_second
from lipstep.modeldir import load_model, read_info, resolve_model
from lipstep.pipeline import AvatarPipeline
from lipstep.runtime import EXPORT_NAME, ONNX_DIR, check_runtime, read_export

COMPONENTS = ("crop_encode", "audio", "denoise", "decode", "mux")
EMITS = ("frames", "latents")
# Keys of a `lipstep eval` metrics.json that describe the run rather than its quality.
NOT_QUALITY = {"nfe", "nfe_total", "steps", "chunks", "frames", "clips", "seed", "seconds", "n", "count"}
MAX_PLOTTED_METRICS = 8
# what `lipstep eval` reports first, in this order, when present in every eval file (the default plot)
HEADLINE_METRICS = ("mouth_err", "mouth_corr", "sync_c", "sync_d", "fd", "fvd", "id_sim", "psnr_gt")


# ---------------------------------------------------------------------------------------------
# arguments


@dataclass
class ModelSpec:
    """One benchmarked model: ``DIR_OR_NAME[@STEPS]`` as given (the label), its directory, its steps."""

    label: str
    path: Path
    steps: int | None               # None = the model's default sampler steps


def parse_spec(text: str) -> ModelSpec:
    """``teacher``, ``teacher@8`` or ``runs/x/model@4`` -> `ModelSpec`; a one-line LipstepError otherwise."""
    base, steps = text, None
    if "@" in text and not Path(text).is_dir():
        base, _, raw = text.rpartition("@")
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_STEPS:
            raise LipstepError(f"model '{text}': the steps after '@' must be an integer in 1..{MAX_STEPS}, got '{raw}'")
        steps = int(raw)
    if not base:
        raise LipstepError(f"model '{text}': expected a directory or bundled name before '@'")
    path = resolve_model(base)
    read_info(path)  # a model directory, complete and valid
    return ModelSpec(label=text, path=path, steps=steps)


def parse_specs(texts: list[str]) -> list[ModelSpec]:
    if not texts:
        raise LipstepError("give at least one model (--models DIR_OR_NAME[@STEPS] ...)")
    seen = [t for i, t in enumerate(texts) if t in texts[:i]]
    if seen:
        raise LipstepError(f"model '{seen[0]}' is given twice")
    return [parse_spec(t) for t in texts]


def read_evals(items: list[str], labels: list[str]) -> dict[str, dict[str, float]]:
    """``LABEL=PATH`` items -> label -> the numeric entries of that `lipstep eval` metrics.json."""
    evals = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise LipstepError(f"--eval {item}: expected LABEL=PATH/metrics.json")
        if label not in labels:
            raise LipstepError(f"--eval {item}: '{label}' is not a benchmarked model ({', '.join(labels)})")
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LipstepError(f"--eval {item}: {path} not found") from None
        except (OSError, ValueError) as e:
            raise LipstepError(f"--eval {item}: cannot read {path} ({e})") from None
        if not isinstance(data, dict):
            raise LipstepError(f"--eval {item}: {path} is not a JSON object of metrics")
        evals[label] = {k: float(v) for k, v in data.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return evals


def quality_metrics(evals: dict[str, dict[str, float]], wanted: list[str] | None = None) -> list[str]:
    """The metrics to plot: `wanted` (each must be in some eval), else the numeric keys every eval has."""
    if wanted:
        missing = [m for m in wanted if not any(m in e for e in evals.values())]
        if missing:
            raise LipstepError(f"--metric {missing[0]}: no --eval file has it")
        return list(wanted)
    shared = set.intersection(*(set(e) for e in evals.values())) - NOT_QUALITY
    if not shared:
        raise LipstepError("the --eval files share no quality metric to plot; choose one with --metric")
    headline = [m for m in HEADLINE_METRICS if m in shared]
    if headline:  # eval's headline metrics, not ceilings (*_gt of another metric) or sample counts
        return headline[:MAX_PLOTTED_METRICS]
    return sorted(shared)[:MAX_PLOTTED_METRICS]


def default_threads() -> int:
    """Physical cores available to this process (2 when unknown)."""
    cores = psutil.cpu_count(logical=False) or 2
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(1, cores)


# ---------------------------------------------------------------------------------------------
# measurement


class PeakMemory:
    """Peak memory of a block above its start (see the module docstring): ``increase_mb``, ``total_mb``.

    ``method`` says how it was measured: ``cuda`` (allocator peak), ``vmhwm`` (Linux peak RSS, reset
    through /proc/self/clear_refs; exact and free) or ``psutil`` (RSS sampled every `interval` s in a
    background thread; used where VmHWM cannot be reset, or when asked for with ``method="psutil"``).
    """

    def __init__(self, device: torch.device, interval: float = 0.002, method: str | None = None):
        self.device, self.interval = torch.device(device), interval
        if method is None:
            method = "cuda" if self.device.type == "cuda" else "vmhwm" if _can_reset_hwm() else "psutil"
        self.method = method
        self.increase_mb = self.total_mb = self.rss_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method == "vmhwm":
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
            self._base = _proc_status_bytes("VmRSS")
        else:
            self._rss = psutil.Process().memory_info
            self._base = self._peak = self._rss().rss
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss().rss)

    def __exit__(self, *exc) -> None:
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "vmhwm":
            peak = _proc_status_bytes("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak = max(self._peak, self._rss().rss)
        self.increase_mb, self.total_mb = (peak - self._base) / 2**20, peak / 2**20
        self.rss_mb = self.total_mb if self.method != "cuda" else (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if resource is not None else 0.0)


PEAK_METHODS = {"cuda": "torch.cuda.max_memory_allocated (peak stats reset per run)",
                "vmhwm": "Linux VmHWM, reset per run through /proc/self/clear_refs",
                "psutil": "RSS sampled with psutil every 2 ms in a background thread"}


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise OSError(f"/proc/self/status has no {key}")


def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_bytes("VmHWM")
        return True
    except OSError:
        return False


@dataclass
class _Job:
    """One row: a loaded model on a runtime, thread count and emit mode, its inputs and its measurements."""

    spec: ModelSpec
    pipe: object                    # AvatarPipeline
    load_s: float
    audio: np.ndarray               # mono float32 at the model's sample rate
    label: str = ""                 # the row's label (the model's, + what varies)
    runtime: str = "torch"
    threads: int = 1
    emit: str = "frames"
    flops: dict = field(default_factory=dict)  # per_nfe, decode_per_frame (the model's, PyTorch)
    runs: list[dict] = field(default_factory=list)
    first_chunk: list[float] = field(default_factory=list)
    result: object = None           # the last Generation (frames) or StreamStats (latents)


class _FirstChunkDone(Exception):
    """Raised by the first-chunk hook to stop the run once chunk 0's frames exist."""


def _generate(job: _Job, image: np.ndarray, call: dict, **extra):
    """The row's pipeline call: a `Generation` (frames), or the latents' `StreamStats` (hybrid: nothing decoded)."""
    torch.set_num_threads(job.threads)
    if job.emit == "latents":
        return _emit_latents(job, image, call, **extra)
    return job.pipe(image, job.audio, steps=job.spec.steps, **call, **extra)


def _emit_latents(job: _Job, image: np.ndarray, call: dict, on_chunk=None):
    """Hybrid mode: the stream path with the whole audio, latents out, no decode."""
    stream = job.pipe.open_stream(image, steps=job.spec.steps, on_chunk=on_chunk, **call)
    stream.push_latents(job.audio)
    stream.finish_latents()
    return stream.stats()


def timed_run(job: _Job, image: np.ndarray, video: Path, call: dict) -> dict:
    """One end-to-end run (generate + mux; latents: denoise only): outer total, components, peak memory."""
    pipe = job.pipe
    gc.collect()
    with PeakMemory(pipe.device) as mem:
        t0 = pipe.clock()
        res = _generate(job, image, call)
        t1 = pipe.clock()
        if job.emit == "frames":
            write_video(video, res.frames, res.fps, audio=job.audio, sample_rate=res.sample_rate)
        t2 = time.perf_counter()
    job.result = res
    components = {k: res.timings.get(k, 0.0) for k in COMPONENTS if k != "mux"} | {"mux": t2 - t1}
    return {"seconds_total": t2 - t0, "components": components, "peak_mem_mb": mem.increase_mb,
            "peak_mem_total_mb": mem.total_mb, "peak_rss_mb": mem.rss_mb, "peak_mem_method": mem.method}


def first_chunk_run(job: _Job, image: np.ndarray, call: dict) -> float:
    """Seconds from the pipeline call to chunk 0's frames decoded (the rest of the run is skipped)."""
    pipe = job.pipe

    def hook(k: int, latents: torch.Tensor) -> None:
        if job.emit == "frames":
            pipe.decode(latents)
        raise _FirstChunkDone(pipe.clock())

    gc.collect()
    t0 = pipe.clock()
    try:
        _generate(job, image, call, on_chunk=hook)
    except _FirstChunkDone as done:
        return done.args[0] - t0
    raise RuntimeError("the pipeline never reported its first chunk")


def _median_p90(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(np.median(v)), float(np.percentile(v, 90))


def summarize(job: _Job) -> dict:
    """Per-row entry of bench.json: medians at the top level, p90s next to them, raw runs last."""
    res, info, pipe = job.result, job.pipe.info, job.pipe
    frames = res.frames if isinstance(res.frames, int) else len(res.frames)
    audio_s = len(job.audio) / info.sample_rate
    totals = [r["seconds_total"] for r in job.runs]
    sums = [sum(r["components"].values()) for r in job.runs]
    total, total_p90 = _median_p90(totals)
    first, first_p90 = _median_p90(job.first_chunk)
    comps = {k: _median_p90([r["components"][k] for r in job.runs]) for k in COMPONENTS}
    nfe = res.nfe // res.chunks
    decode_flops = job.flops["decode_per_frame"] if job.emit == "frames" else 0
    latent = [pipe.codec.latent_channels] + [info.image_size // pipe.codec.downsample] * 2
    return {
        "model": str(job.spec.path), "kind": info.kind, "recipe": info.recipe,
        "runtime": job.runtime, "threads": job.threads, "emit": job.emit,
        "steps": res.steps, "nfe": nfe, "nfe_total": res.nfe, "chunks": res.chunks,
        "chunk_seconds": info.frames / info.fps, "frames": frames, "audio_seconds": audio_s,
        "seconds_total": total, "seconds_total_p90": total_p90,
        "ms_per_frame": 1000 * total / frames, "ms_per_frame_p90": 1000 * total_p90 / frames,
        "fps": frames / total, "rtf": total / audio_s, "rtf_p90": total_p90 / audio_s,
        "first_chunk_s": first, "first_chunk_s_p90": first_p90, "first_frame_s": first,
        "peak_mem_mb": max(r["peak_mem_mb"] for r in job.runs),
        "peak_mem_total_mb": max(r["peak_mem_total_mb"] for r in job.runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in job.runs),
        "peak_mem_method": PEAK_METHODS[job.runs[0]["peak_mem_method"]],
        "weights_mb": _weights_bytes(pipe) / 2**20,
        "dtype": _dtype(pipe),
        "flops_per_nfe": job.flops["per_nfe"],
        "gflops_per_frame": (job.flops["per_nfe"] * res.nfe / frames + decode_flops) / 1e9,
        "latent_shape": latent, "latent_kb_per_s": latent_bytes_per_second(latent, info.fps) / 1024,
        "components": {k: v[0] for k, v in comps.items()},
        "components_p90": {k: v[1] for k, v in comps.items()},
        "component_sum_s": float(np.median(sums)),
        "unaccounted_frac": float(np.median([(t - s) / t for t, s in zip(totals, sums, strict=True)])),
        "load_s": job.load_s, "repeats": len(job.runs),
        "runs": [{**r, "first_chunk_s": f} for r, f in zip(job.runs, job.first_chunk, strict=True)],
    }


def _modules(pipe) -> list[torch.nn.Module]:
    mods = [m for m in (pipe.denoiser, pipe.codec) if isinstance(m, torch.nn.Module)]
    return mods + [m for m in vars(pipe.audio_encoder).values() if isinstance(m, torch.nn.Module)]


def _weights_bytes(pipe) -> int:
    """Bytes of the networks' weights: tensors of the PyTorch modules, file sizes of the ONNX graphs."""
    tensors = [t for m in _modules(pipe) for t in (*m.parameters(), *m.buffers())]
    graphs = (pipe.denoiser, pipe.codec, getattr(pipe.audio_encoder, "log_mel", None))
    return sum(t.numel() * t.element_size() for t in tensors) + sum(getattr(g, "nbytes", 0) for g in graphs)


def _dtype(pipe) -> str:
    if pipe.runtime == "onnx-int8":
        return "int8 MatMul/Gemm (dynamic quantisation), fp32 elsewhere"
    if pipe.runtime == "onnx":
        return "float32"
    return str(next(pipe.denoiser.parameters()).dtype).removeprefix("torch.")


def machine_info(device: torch.device) -> dict:
    """What the numbers depend on: CPU/GPU model, threads, torch, load average."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"device": str(device), "cpu": cpu, "cores_physical": psutil.cpu_count(logical=False),
            "cores_logical": psutil.cpu_count(), "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
            "torch": torch.__version__, "python": platform.python_version(), "compile": False,
            "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver = Path("/proc/driver/nvidia/version")
        info["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                       "cuda": torch.version.cuda,
                       "driver": driver.read_text().splitlines()[0] if driver.is_file() else None}
    return info


# ---------------------------------------------------------------------------------------------
# the benchmark


def run_bench(models: list[str], out: str | os.PathLike, *, image: str | os.PathLike | None = None,
              audio: str | os.PathLike | None = None, seconds: float = 4.0, warmup: int = 1, repeats: int = 3,
              threads: int | list[int] | None = None, seed: int = 0, cfg_audio: float | None = None,
              cfg_ref: float | None = None, device: str = "cpu", evals: list[str] = (),
              metrics: list[str] | None = None, progress: bool = True, runtimes: list[str] | None = None,
              emits: list[str] | None = None, device_gflops: list[str] | None = None) -> dict:
    """Benchmark `models` (``DIR_OR_NAME[@STEPS]``) on one portrait + audio; write OUT/bench.{json,md,png}.

    Args:
        models: model directories or bundled names, each optionally with ``@STEPS``; the text is the label.
        out: output directory (``bench.json``, ``bench.md``, ``bench.png`` with evals, ``inputs/``).
        image, audio: inputs (any format the media layer reads); default: the example portrait and
            speech of `lipstep.data.examples`, made once in ``OUT/inputs``.
        seconds: the audio is cut to at most this length.
        warmup, repeats: untimed and timed runs per row.
        threads: one or several thread counts (a row each): ``torch.set_num_threads`` and the ONNX Runtime
            sessions' intra-op threads (default `default_threads`).
        seed, cfg_audio, cfg_ref: the same for every model (None = each model's default scales).
        device: torch device (the onnx runtimes run on the CPU).
        evals: ``LABEL=PATH/metrics.json`` items from `lipstep eval`; with any, ``bench.png`` is drawn.
        metrics: quality metrics to plot (default: every numeric key the eval files share).
        runtimes: ``torch`` (default), ``onnx``, ``onnx-int8``: a row each (the onnx ones need the model's export).
        emits: ``frames`` (default: the whole path) and/or ``latents`` (hybrid: denoise only): a row each.
        device_gflops: ``NAME=GFLOPS`` of slower devices for the estimate (`lipstep.eval.edge`).

    Returns:
        The contents of ``bench.json``: ``models`` holds one entry per row.
    """
    thread_counts = [threads] if isinstance(threads, int) else list(threads or [default_threads()])
    runtimes, emits = list(runtimes or ["torch"]), list(emits or ["frames"])
    _check_settings(seconds, warmup, repeats, thread_counts, cfg_audio, cfg_ref)
    if metrics and not evals:
        raise LipstepError("--metric needs --eval LABEL=PATH/metrics.json (the metrics are read from lipstep eval's "
                           "outputs; without one there is nothing to plot)")
    _check_rows(runtimes, emits, device)
    devices = parse_devices(device_gflops)
    dev = check_device(device)
    specs = parse_specs(list(models))
    _check_exports(specs, runtimes)
    quality = read_evals(list(evals), [s.label for s in specs])
    plotted = quality_metrics(quality, metrics) if quality else []
    out = Path(out)
    picture = read_image(image) if image is not None else None   # fail on a bad input before making anything
    wavs = {SAMPLE_RATE: read_audio(audio, SAMPLE_RATE)} if audio is not None else {}
    if picture is None or audio is None:
        made = example_inputs(out / "inputs", portrait=picture is None, speech=audio is None)
        picture = read_image(made[0]) if picture is None else picture
        audio = made[1] if audio is None else audio

    previous = torch.get_num_threads()
    torch.set_num_threads(thread_counts[0])
    try:
        jobs = _load_rows(specs, runtimes, thread_counts, emits, dev, audio, wavs, seconds)
        machine = machine_info(dev)
        call = {"cfg_audio": cfg_audio, "cfg_ref": cfg_ref, "seed": seed,
                "source": str(image or "the example portrait")}
        _measure(jobs, picture, call, warmup, repeats, progress, tqdm)
        machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        host = {n: host_gflops(n) for n in thread_counts} if dev.type == "cpu" else {}
    finally:
        torch.set_num_threads(previous)

    rows = {job.label: summarize(job) for job in jobs}
    for job in jobs:
        row = rows[job.label]
        if job.threads in host:
            row["estimate"] = estimate(row["ms_per_frame"], row["gflops_per_frame"] * 1e9, host[job.threads], devices,
                                       job.pipe.info.fps)
    report = {
        "lipstep_bench": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **machine,
        "settings": {"warmup": warmup, "repeats": repeats, "seed": seed, "seconds_limit": seconds,
                     "cfg_audio": cfg_audio, "cfg_ref": cfg_ref,
                     "image": str(image or out / "inputs" / "portrait.png"),
                     "image_shape": list(picture.shape), "audio": str(audio),
                     "threads": thread_counts, "runtimes": runtimes, "emits": emits, "device_gflops": devices},
        "definitions": DEFINITIONS,
        "models": {label: _rounded(row) for label, row in rows.items()},
    }
    write_text_atomic(out / "bench.md", format_table(report))
    if quality:
        row_quality = {job.label: quality[job.spec.label] for job in jobs if job.spec.label in quality}
        plot_quality_vs_speed(report["models"], row_quality, out / "bench.png", plotted)
    write_json_atomic(out / "bench.json", report)  # last: its presence means the benchmark completed
    return report


def _check_rows(runtimes: list[str], emits: list[str], device: str) -> None:
    for name in runtimes:
        check_runtime(name)
    bad = [e for e in emits if e not in EMITS]
    if bad:
        raise LipstepError(f"--emit must be frames or latents, got {bad[0]!r}")
    for option, values in (("--runtime", runtimes), ("--emit", emits)):
        if len(set(values)) < len(values):
            raise LipstepError(f"{option}: {values} names a value twice")
    if any(r != "torch" for r in runtimes) and device != "cpu":
        raise LipstepError(f"--runtime onnx runs on the CPU; use --device cpu (got {device})")


def _has_runtime(spec: ModelSpec, runtime: str) -> bool:
    """Whether the model can run under ``runtime`` (torch always; the onnx ones with their export)."""
    if runtime == "torch":
        return True
    if not (Path(spec.path) / ONNX_DIR / EXPORT_NAME).is_file():
        return False
    return bool(read_export(spec.path)["runtimes"].get(runtime))  # a damaged export is a one-line error


def _check_exports(specs: list[ModelSpec], runtimes: list[str]) -> None:
    """Each requested runtime can run at least one model (before anything is made); a model without a runtime's
    export gets no row for it (a teacher next to an exported student: the teacher's torch rows only)."""
    for runtime in runtimes:
        if not any(_has_runtime(spec, runtime) for spec in specs):
            path = specs[0].path
            raise LipstepError(f"no model has an {runtime} export; run lipstep export {path} OUT --onnx"
                               f"{' --int8' if runtime == 'onnx-int8' else ''} and bench OUT")
        for spec in specs:
            if not _has_runtime(spec, runtime):
                print(f"bench: {spec.label} has no {runtime} export: no {runtime} row for it", flush=True)


def _row_label(spec: ModelSpec, runtime: str, threads: int, emit: str, runtimes, thread_counts, emits) -> str:
    """The model's label, followed by the runtime, thread count and emit mode where they vary or differ from
    the defaults (so a plain benchmark keeps the plain labels)."""
    parts = [spec.label]
    if runtimes != ["torch"]:
        parts.append(runtime)
    if len(thread_counts) > 1:
        parts.append(f"{threads}t")
    if emits != ["frames"]:
        parts.append(emit)
    return " ".join(parts)


def _load_rows(specs, runtimes, thread_counts, emits, dev, audio, wavs, seconds) -> list[_Job]:
    """One `_Job` per model x runtime x threads x emit; pipelines are shared where they can be (PyTorch ones
    across thread counts and emits, ONNX ones across emits: their sessions' thread counts are fixed)."""
    pipes, flops, jobs = {}, {}, []
    for spec in specs:
        if spec.path not in flops:
            _, info, codec, _, net = load_model(spec.path)
            flops[spec.path] = {"per_nfe": denoiser_flops(net, info), "decode_per_frame": decoder_flops_per_frame(codec, info)}
        for runtime in runtimes:
            if not _has_runtime(spec, runtime):
                continue
            for n in thread_counts:
                key = (spec.path, runtime, None if runtime == "torch" else n)
                if key not in pipes:
                    torch.set_num_threads(n)
                    t0 = time.perf_counter()
                    pipe = AvatarPipeline.from_pretrained(spec.path, device=dev, runtime=runtime, threads=n)
                    pipes[key] = (pipe, pipe.clock() - t0)
                pipe, load_s = pipes[key]
                sr = pipe.info.sample_rate
                if sr not in wavs:
                    wavs[sr] = read_audio(audio, sr)
                wav = wavs[sr][: round(seconds * sr)]
                if wav.size == 0:
                    raise LipstepError(f"{audio}: the audio is empty")
                for emit in emits:
                    label = _row_label(spec, runtime, n, emit, runtimes, thread_counts, emits)
                    jobs.append(_Job(spec, pipe, load_s, wav, label=label, runtime=runtime, threads=n, emit=emit,
                                     flops=flops[spec.path]))
    torch.set_num_threads(thread_counts[0])
    return jobs


DEFINITIONS = {
    "nfe": "denoiser forward passes per chunk (CFG passes counted; codec and audio encoder excluded)",
    "seconds_total": "median over repeats of one end-to-end run after loading: crop+encode, audio, denoise, "
                     "decode, mux to mp4 (outer timer)",
    "ms_per_frame": "1000 * seconds_total / frames", "fps": "frames / seconds_total",
    "rtf": "seconds_total / audio_seconds (< 1 is faster than real time)",
    "first_chunk_s": "call start (portrait + whole audio given) to chunk 0's frames decoded; separate run",
    "first_frame_s": "= first_chunk_s: a chunk's frames leave together (emit latents: to chunk 0's latents)",
    "peak_rss_mb": "peak resident set of the whole process during a run, max over repeats (every benchmarked "
                   "pipeline is loaded in it; CUDA: the process's lifetime peak)",
    "flops_per_nfe": "FLOPs of one denoiser evaluation at batch 1 (FlopCounterMode: matmul, conv, attention; "
                     "a multiply-add is 2), the PyTorch net, whatever the runtime",
    "gflops_per_frame": "flops_per_nfe * NFE per frame (+ the decoder's FLOPs per frame when frames are emitted)",
    "latent_kb_per_s": "float32 latents per second of video: what hybrid mode (emit latents) sends",
    "estimate": "NOT a measurement: ms_per_frame * host_gflops / device's assumed GFLOP/s (lipstep.eval.edge); "
                "host_gflops = this machine's measured fp32 matmul rate at the row's threads",
    "runtime/threads/emit": "torch | onnx | onnx-int8; torch.set_num_threads and ONNX Runtime intra-op threads; "
                            "frames (whole path) | latents (denoise only, no decode, no mux)",
    "peak_mem_mb": "peak working memory of a run above the loaded state, max over repeats (CUDA: "
                   "max_memory_allocated; CPU: peak RSS; see peak_mem_method)",
    "unaccounted_frac": "1 - component_sum_s / seconds_total (median over repeats)",
    "statistics": "top-level values are medians; *_p90 are 90th percentiles (linear interpolation)",
}


def _check_settings(seconds: float, warmup: int, repeats: int, threads: list[int], cfg_audio: float | None,
                    cfg_ref: float | None) -> None:
    if not (math.isfinite(seconds) and seconds > 0):
        raise LipstepError(f"--seconds must be a positive number, got {seconds:g}")
    if warmup < 0 or repeats < 1:
        raise LipstepError(f"need --warmup >= 0 and --repeats >= 1, got {warmup} and {repeats}")
    for n in threads:
        check_threads(n)
    if len(set(threads)) < len(threads):
        raise LipstepError(f"--threads: {threads} names a thread count twice")
    for name, scale in (("--cfg-audio", cfg_audio), ("--cfg-ref", cfg_ref)):
        if scale is not None:
            check_scale(scale, name)


def _measure(jobs: list[_Job], image: np.ndarray, call: dict, warmup: int, repeats: int, progress: bool,
             tqdm) -> None:
    """Warm-up then timed runs, round-robin over the models; fills each job's runs and first_chunk."""
    bar = tqdm(total=len(jobs) * (warmup + repeats), desc="bench", unit="run", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    with tempfile.TemporaryDirectory(prefix="lipstep-bench-") as tmp:
        video = Path(tmp) / "bench.mp4"
        for r in range(warmup + repeats):
            for job in jobs:
                bar.set_postfix_str(f"{job.label} {'warm-up' if r < warmup else 'timed'}")
                run = timed_run(job, image, video, call)
                if r >= warmup:
                    job.runs.append(run)
                    job.first_chunk.append(first_chunk_run(job, image, call))
                bar.update(1)
    bar.close()


def _rounded(x):
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------
# reporting


def format_table(report: dict) -> str:
    """Markdown: one header line of machine/settings, one row per model (or row), then the edge estimate."""
    s = report["settings"]
    counts = s.get("threads") or [report["threads"]]
    threads = f"{counts[0]} threads" if len(counts) == 1 else f"threads {', '.join(map(str, counts))} (per row)"
    head = (f"device {report['device']} ({report.get('gpu', {}).get('name') or report['cpu']}), "
            f"{threads}, torch {report['torch']}; "
            f"{s['warmup']} warm-up + {s['repeats']} timed runs per model; "
            f"load avg {report['load_avg_start'][0]:.2f} -> {report['load_avg_end'][0]:.2f}")
    cols = ["model", "NFE", "frames", "total s (med / p90)", "ms/frame", "fps", "RTF", "first frame s",
            "peak MB", "peak RSS MB", "GFLOP/NFE", "latent KB/s", *(f"{k} s" for k in COMPONENTS), "unacc."]
    rows = []
    for label, m in report["models"].items():
        c = m["components"]
        rows.append([label, str(m["nfe"]), str(m["frames"]),
                     f"{m['seconds_total']:.3f} / {m['seconds_total_p90']:.3f}", f"{m['ms_per_frame']:.1f}",
                     f"{m['fps']:.2f}", f"{m['rtf']:.3f}", f"{m['first_chunk_s']:.3f}",
                     f"{m['peak_mem_mb']:.1f}", f"{m['peak_rss_mb']:.0f}", f"{m['flops_per_nfe'] / 1e9:.2f}",
                     f"{m['latent_kb_per_s']:.0f}", *(f"{c[k]:.3f}" for k in COMPONENTS),
                     f"{100 * m['unaccounted_frac']:.1f}%"])
    body = [_md_row(cols), _md_row(["---"] * len(cols)), *map(_md_row, rows)]
    return "\n".join([head, "", *body, *format_estimates(report)]) + "\n"


def format_estimates(report: dict) -> list[str]:
    """The feasibility estimate for slower devices as Markdown bullets (empty without estimates)."""
    rows = {label: m["estimate"] for label, m in report["models"].items() if "estimate" in m}
    if not rows:
        return []
    devices = report["settings"].get("device_gflops") or {}
    assumed = "; ".join(f"{name} = {g:g} GFLOP/s" + (f" ({DEVICE_NOTES[name]})" if name in DEVICE_NOTES else "")
                        for name, g in devices.items())
    note = ("Edge feasibility, an ESTIMATE, not a measurement: ms/frame here x (this machine's measured fp32 "
            f"matmul GFLOP/s at the row's threads / the device's assumed GFLOP/s). Assumed: {assumed}.")
    lines = ["", note, ""]
    for label, e in rows.items():
        m = report["models"][label]
        per_device = "; ".join(f"{name} ~{d['ms_per_frame']:.0f} ms/frame, ~{d['fps']:.1f} fps, RTF ~{d['rtf']:.2f}"
                               f" ({'real time' if d['rtf'] < 1 else 'slower than real time'})"
                               for name, d in e["devices"].items())
        lines.append(f"- {label}: {m['gflops_per_frame']:.2f} GFLOP/frame; here {e['achieved_gflops']:.1f} GFLOP/s of "
                     f"{e['host_gflops']:.1f} measured ({100 * e['efficiency']:.0f}%); {per_device}")
    return lines


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def plot_quality_vs_speed(models: dict[str, dict], evals: dict[str, dict[str, float]], out: str | os.PathLike,
                          metrics: list[str] | None = None) -> Path:
    """PNG: each quality metric against NFE per chunk (left) and seconds per frame (right); a point per model.

    `models` maps label -> a bench.json model entry (``nfe``, ``ms_per_frame``); `evals` maps label ->
    metrics; models without an eval are left out.
    """
    # matplotlib here, not at module top: about 1 s of start-up that only this plot needs
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    metrics = quality_metrics(evals, metrics)
    labels = [k for k in models if k in evals]
    if not labels:
        raise LipstepError("no benchmarked model has eval results to plot")
    fig = Figure(figsize=(10, 3.2 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), 2, squeeze=False)
    for row, metric in zip(axes, metrics, strict=True):
        pts = [(lab, models[lab]["nfe"], models[lab]["ms_per_frame"] / 1000, evals[lab][metric])
               for lab in labels if metric in evals[lab]]
        for ax, idx, xlabel in ((row[0], 1, "NFE per chunk"), (row[1], 2, "seconds per frame")):
            ax.scatter([p[idx] for p in pts], [p[3] for p in pts], zorder=2)
            for p in pts:
                ax.annotate(p[0], (p[idx], p[3]), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xscale("log")
            # a tick per model: a log axis spanning less than a decade has no labelled tick
            ax.set_xticks(sorted({p[idx] for p in pts}))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.margins(x=0.25, y=0.15)  # room for the labels
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric)
            ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("quality against speed (lipstep bench)")
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


__all__ = ["COMPONENTS", "EMITS", "ModelSpec", "PeakMemory", "default_threads", "format_estimates", "format_table",
           "parse_spec", "parse_specs", "plot_quality_vs_speed", "quality_metrics", "read_evals", "run_bench"]
