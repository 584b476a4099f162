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

from lipstep.checks import check_device
from lipstep.data.examples import example_inputs
from lipstep.data.media import SAMPLE_RATE, read_audio, read_image, write_video
from lipstep.diffusion.guidance import check_scale
from lipstep.errors import LipstepError
from lipstep.fsutil import atomic_path, write_json_atomic, write_text_atomic
from lipstep.modeldir import read_info, resolve_model
from lipstep.pipeline import AvatarPipeline

COMPONENTS = ("crop_encode", "audio", "denoise", "decode", "mux")
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
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            raise LipstepError(f"model '{text}': the steps after '@' must be a positive integer, got '{raw}'")
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
        self.increase_mb = self.total_mb = 0.0

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
    """A loaded model with its inputs and the measurements collected so far."""

    spec: ModelSpec
    pipe: object                    # AvatarPipeline
    load_s: float
    audio: np.ndarray               # mono float32 at the model's sample rate
    runs: list[dict] = field(default_factory=list)
    first_chunk: list[float] = field(default_factory=list)
    result: object = None           # the last Generation


class _FirstChunkDone(Exception):
    """Raised by the first-chunk hook to stop the run once chunk 0's frames exist."""


def _generate(job: _Job, image: np.ndarray, call: dict, **extra):
    return job.pipe(image, job.audio, steps=job.spec.steps, **call, **extra)


def timed_run(job: _Job, image: np.ndarray, video: Path, call: dict) -> dict:
    """One end-to-end run (generate + mux): outer total, components, peak memory."""
    pipe = job.pipe
    gc.collect()
    with PeakMemory(pipe.device) as mem:
        t0 = pipe.clock()
        res = _generate(job, image, call)
        t1 = pipe.clock()
        write_video(video, res.frames, res.fps, audio=job.audio, sample_rate=res.sample_rate)
        t2 = time.perf_counter()
    job.result = res
    components = {k: res.timings[k] for k in COMPONENTS if k != "mux"} | {"mux": t2 - t1}
    return {"seconds_total": t2 - t0, "components": components,
            "peak_mem_mb": mem.increase_mb, "peak_mem_total_mb": mem.total_mb, "peak_mem_method": mem.method}


def first_chunk_run(job: _Job, image: np.ndarray, call: dict) -> float:
    """Seconds from the pipeline call to chunk 0's frames decoded (the rest of the run is skipped)."""
    pipe = job.pipe

    def hook(k: int, latents: torch.Tensor) -> None:
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
    """Per-model entry of bench.json: medians at the top level, p90s next to them, raw runs last."""
    res, info = job.result, job.pipe.info
    frames, audio_s = len(res.frames), len(job.audio) / info.sample_rate
    totals = [r["seconds_total"] for r in job.runs]
    sums = [sum(r["components"].values()) for r in job.runs]
    total, total_p90 = _median_p90(totals)
    first, first_p90 = _median_p90(job.first_chunk)
    comps = {k: _median_p90([r["components"][k] for r in job.runs]) for k in COMPONENTS}
    tensors = [t for m in _modules(job.pipe) for t in (*m.parameters(), *m.buffers())]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    return {
        "model": str(job.spec.path), "kind": info.kind, "recipe": info.recipe,
        "steps": res.steps, "nfe": res.nfe // res.chunks, "nfe_total": res.nfe, "chunks": res.chunks,
        "chunk_seconds": info.frames / info.fps, "frames": frames, "audio_seconds": audio_s,
        "seconds_total": total, "seconds_total_p90": total_p90,
        "ms_per_frame": 1000 * total / frames, "ms_per_frame_p90": 1000 * total_p90 / frames,
        "fps": frames / total, "rtf": total / audio_s, "rtf_p90": total_p90 / audio_s,
        "first_chunk_s": first, "first_chunk_s_p90": first_p90,
        "peak_mem_mb": max(r["peak_mem_mb"] for r in job.runs),
        "peak_mem_total_mb": max(r["peak_mem_total_mb"] for r in job.runs),
        "peak_mem_method": PEAK_METHODS[job.runs[0]["peak_mem_method"]],
        "weights_mb": weights / 2**20,
        "dtype": str(next(job.pipe.denoiser.parameters()).dtype).removeprefix("torch."),
        "components": {k: v[0] for k, v in comps.items()},
        "components_p90": {k: v[1] for k, v in comps.items()},
        "component_sum_s": float(np.median(sums)),
        "unaccounted_frac": float(np.median([(t - s) / t for t, s in zip(totals, sums, strict=True)])),
        "load_s": job.load_s, "repeats": len(job.runs),
        "runs": [{**r, "first_chunk_s": f} for r, f in zip(job.runs, job.first_chunk, strict=True)],
    }


def _modules(pipe) -> list[torch.nn.Module]:
    mods = [pipe.denoiser, pipe.codec]
    return mods + [m for m in vars(pipe.audio_encoder).values() if isinstance(m, torch.nn.Module)]


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
              threads: int | None = None, seed: int = 0, cfg_audio: float | None = None,
              cfg_ref: float | None = None, device: str = "cpu", evals: list[str] = (),
              metrics: list[str] | None = None, progress: bool = True) -> dict:
    """Benchmark `models` (``DIR_OR_NAME[@STEPS]``) on one portrait + audio; write OUT/bench.{json,md,png}.

    Args:
        models: model directories or bundled names, each optionally with ``@STEPS``; the text is the label.
        out: output directory (``bench.json``, ``bench.md``, ``bench.png`` with evals, ``inputs/``).
        image, audio: inputs (any format the media layer reads); default: the example portrait and
            speech of `lipstep.data.examples`, made once in ``OUT/inputs``.
        seconds: the audio is cut to at most this length.
        warmup, repeats: untimed and timed runs per model.
        threads: ``torch.set_num_threads`` for the benchmark (default `default_threads`).
        seed, cfg_audio, cfg_ref: the same for every model (None = each model's default scales).
        device: torch device.
        evals: ``LABEL=PATH/metrics.json`` items from `lipstep eval`; with any, ``bench.png`` is drawn.
        metrics: quality metrics to plot (default: every numeric key the eval files share).

    Returns:
        The contents of ``bench.json``.
    """
    _check_settings(seconds, warmup, repeats, threads, cfg_audio, cfg_ref)
    dev = check_device(device)
    specs = parse_specs(list(models))
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
    torch.set_num_threads(threads or default_threads())
    try:
        jobs = []
        for spec in specs:
            t0 = time.perf_counter()
            pipe = AvatarPipeline.from_pretrained(spec.path, device=dev)
            load_s = pipe.clock() - t0
            sr = pipe.info.sample_rate
            if sr not in wavs:
                wavs[sr] = read_audio(audio, sr)
            wav = wavs[sr][: round(seconds * sr)]
            if wav.size == 0:
                raise LipstepError(f"{audio}: the audio is empty")
            jobs.append(_Job(spec, pipe, load_s, wav))
        machine = machine_info(dev)
        call = {"cfg_audio": cfg_audio, "cfg_ref": cfg_ref, "seed": seed,
                "source": str(image or "the example portrait")}
        _measure(jobs, picture, call, warmup, repeats, progress, tqdm)
        machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        torch.set_num_threads(previous)

    report = {
        "lipstep_bench": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **machine,
        "settings": {"warmup": warmup, "repeats": repeats, "seed": seed, "seconds_limit": seconds,
                     "cfg_audio": cfg_audio, "cfg_ref": cfg_ref,
                     "image": str(image or out / "inputs" / "portrait.png"),
                     "image_shape": list(picture.shape), "audio": str(audio)},
        "definitions": DEFINITIONS,
        "models": {job.spec.label: _rounded(summarize(job)) for job in jobs},
    }
    write_text_atomic(out / "bench.md", format_table(report))
    if quality:
        plot_quality_vs_speed(report["models"], quality, out / "bench.png", plotted)
    write_json_atomic(out / "bench.json", report)  # last: its presence means the benchmark completed
    return report


DEFINITIONS = {
    "nfe": "denoiser forward passes per chunk (CFG passes counted; codec and audio encoder excluded)",
    "seconds_total": "median over repeats of one end-to-end run after loading: crop+encode, audio, denoise, "
                     "decode, mux to mp4 (outer timer)",
    "ms_per_frame": "1000 * seconds_total / frames", "fps": "frames / seconds_total",
    "rtf": "seconds_total / audio_seconds (< 1 is faster than real time)",
    "first_chunk_s": "call start (portrait + whole audio given) to chunk 0's frames decoded; separate run",
    "peak_mem_mb": "peak working memory of a run above the loaded state, max over repeats (CUDA: "
                   "max_memory_allocated; CPU: peak RSS; see peak_mem_method)",
    "unaccounted_frac": "1 - component_sum_s / seconds_total (median over repeats)",
    "statistics": "top-level values are medians; *_p90 are 90th percentiles (linear interpolation)",
}


def _check_settings(seconds: float, warmup: int, repeats: int, threads: int | None, cfg_audio: float | None,
                    cfg_ref: float | None) -> None:
    if not (math.isfinite(seconds) and seconds > 0):
        raise LipstepError(f"--seconds must be a positive number, got {seconds:g}")
    if warmup < 0 or repeats < 1:
        raise LipstepError(f"need --warmup >= 0 and --repeats >= 1, got {warmup} and {repeats}")
    if threads is not None and threads < 1:
        raise LipstepError(f"--threads must be at least 1, got {threads}")
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
                bar.set_postfix_str(f"{job.spec.label} {'warm-up' if r < warmup else 'timed'}")
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
    """Markdown: one header line of machine/settings, then one row per model."""
    s = report["settings"]
    head = (f"device {report['device']} ({report.get('gpu', {}).get('name') or report['cpu']}), "
            f"{report['threads']} threads, torch {report['torch']}; "
            f"{s['warmup']} warm-up + {s['repeats']} timed runs per model; "
            f"load avg {report['load_avg_start'][0]:.2f} -> {report['load_avg_end'][0]:.2f}")
    cols = ["model", "NFE", "frames", "total s (med / p90)", "ms/frame", "fps", "RTF", "first chunk s",
            "peak MB", *(f"{k} s" for k in COMPONENTS), "unacc."]
    rows = []
    for label, m in report["models"].items():
        c = m["components"]
        rows.append([label, str(m["nfe"]), str(m["frames"]),
                     f"{m['seconds_total']:.3f} / {m['seconds_total_p90']:.3f}", f"{m['ms_per_frame']:.1f}",
                     f"{m['fps']:.2f}", f"{m['rtf']:.3f}", f"{m['first_chunk_s']:.3f}",
                     f"{m['peak_mem_mb']:.1f}", *(f"{c[k]:.3f}" for k in COMPONENTS),
                     f"{100 * m['unaccounted_frac']:.1f}%"])
    body = [_md_row(cols), _md_row(["---"] * len(cols)), *map(_md_row, rows)]
    return "\n".join([head, "", *body]) + "\n"


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


__all__ = ["COMPONENTS", "ModelSpec", "PeakMemory", "default_threads", "format_table",
           "parse_spec", "parse_specs", "plot_quality_vs_speed", "quality_metrics", "read_evals", "run_bench"]
