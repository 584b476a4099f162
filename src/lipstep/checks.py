"""Checks of what a user asks for, made before any work: the torch device, thread and step counts, the
output paths.

A run that would fail after minutes of loading and generating (no such device, an ``--out`` that is
a file, a read-only folder, a full disk) fails here instead, in one line that names the option.
"""

from __future__ import annotations

import os
from pathlib import Path

from lipstep.errors import LipstepError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")   # devices lipstep runs on (torch knows more, e.g. meta)
MIN_FREE_BYTES = 2**20                          # less than this free on the output's filesystem: refused
MAX_THREADS = 256                               # more CPU threads than any machine lipstep runs on has
MAX_STEPS = 1000                                # sampler steps per chunk (the teacher's default is 25)


def check_threads(threads: int | None, option: str = "--threads") -> None:
    """A CPU thread count in 1..`MAX_THREADS` (None: the default); `LipstepError` naming `option` otherwise."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise LipstepError(f"{option} must be in 1..{MAX_THREADS}, got {threads}")


def check_steps(steps: int | None, option: str = "--steps") -> None:
    """Sampler steps per chunk in 1..`MAX_STEPS` (None: the model's); `LipstepError` naming `option` otherwise."""
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise LipstepError(f"{option} must be in 1..{MAX_STEPS}, got {steps}")


def check_device(name: str, option: str = "--device"):
    """`name` as a `torch.device` that exists on this machine; `LipstepError` naming `option` otherwise."""
    import torch  # here, not at module top: the CLI imports this module before it needs torch (seconds)

    try:
        device = torch.device(name)
    except RuntimeError:
        raise LipstepError(f"{option} {name!r}: not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type not in DEVICE_TYPES:
        raise LipstepError(f"{option} {name}: lipstep runs on {', '.join(DEVICE_TYPES)}, not {device.type}")
    if device.type == "cpu":
        return device
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type)
    if not backend.is_available():
        raise LipstepError(f"{option} {name}: {device.type.upper()} is not available on this machine "
                           "(this torch build or this machine has none); use --device cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise LipstepError(f"{option} {name}: this machine has {count} {device.type} device(s), "
                           f"numbered 0 to {count - 1}")
    return device


def _existing_ancestor(path: Path) -> Path:
    """`path` itself or its nearest ancestor that exists (the folder a new output will be made in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def missing_root(path: str | os.PathLike) -> Path | None:
    """The outermost folder that making `path` creates (`path` or an ancestor of it); None if it exists."""
    path = Path(path)
    if path.exists():
        return None
    while not path.parent.exists() and path.parent != path:
        path = path.parent
    return path


def check_output(path: str | os.PathLike, *, option: str = "--out", file: bool = False) -> Path:
    """Refuse an output that cannot be written: a directory output (``file=False``) that is an existing file,
    a file output that is an existing directory, a parent that is a file, a read-only folder or filesystem,
    or a full filesystem. Returns `path` as a Path."""
    path = Path(path)
    if file and path.is_dir():
        raise LipstepError(f"{option} {path}: is a directory; give a file name")
    if not file and path.exists() and not path.is_dir():
        raise LipstepError(f"{option} {path}: exists and is not a directory")
    where = _existing_ancestor(path if not file else path.parent)
    if not where.is_dir():
        raise LipstepError(f"{option} {path}: {where} is not a directory")
    stat = os.statvfs(where)
    if stat.f_flag & os.ST_RDONLY:
        raise LipstepError(f"{option} {path}: {where} is on a read-only filesystem")
    if not os.access(where, os.W_OK | os.X_OK):
        raise LipstepError(f"{option} {path}: {where} is not writable")
    if stat.f_bavail * stat.f_frsize < MIN_FREE_BYTES:
        raise LipstepError(f"{option} {path}: no space left on the filesystem of {where}")
    return path


__all__ = ["DEVICE_TYPES", "MIN_FREE_BYTES", "check_device", "check_output", "missing_root"]
