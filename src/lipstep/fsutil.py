"""Atomic file writes, fsync and sha256 checksums.

Writes: a reader never sees a half-written output, a crash leaves no partial file (only a dot-named
temporary that the next run of the same writer may clean). What is renamed into place has the
ordinary modes (``0o666`` / ``0o777`` less the umask), also where a writer made its file 0600.

Checksums: a directory of weights may hold ``checksums.json`` (``{"sha256": {relative path: hex}}``),
written with the weights; `verify_checksums` checks it on load. A directory without one (written
before checksums existed) is not checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from lipstep.errors import IntegrityError

CHECKSUMS_NAME = "checksums.json"


def _tmp_name(name: str, suffix: str = "") -> str:
    return f".{name}.{uuid.uuid4().hex[:8]}{suffix}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the final suffix (PyAV and soundfile pick the format from it).
    ``durable=True`` fsyncs the file before the rename and the directory after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / _tmp_name(path.stem, suffix or path.suffix)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # unlike mkstemp's 0600: the umask applies
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        os.chmod(tmp, mode)  # writers that replace the file (safetensors' save_file) leave it 0600
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to `out`; if the block succeeds it replaces `out`
    (an existing `out` is moved aside first and deleted after the swap). Callers check beforehand
    that an existing `out` may be replaced."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        apply_umask(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = False) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows))


def remove_made(paths: Iterable[str | os.PathLike]) -> None:
    """Remove what a failed run made, last made first: folders with all in them, files, symlinks (never
    followed). Missing paths are skipped."""
    for path in reversed([Path(p) for p in paths]):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def apply_umask(tree: str | os.PathLike) -> None:
    """Give everything under `tree`, a directory this process just made with ``mkdir`` (so its mode is the
    umask's), the umask's modes: some writers (safetensors' ``save_file``, ``mkstemp``) make files 0600."""
    tree = Path(tree)
    dir_mode = tree.stat().st_mode & 0o777
    for parent, dirs, files in os.walk(tree):
        for name in dirs:
            os.chmod(os.path.join(parent, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(parent, name), dir_mode & 0o666)


# ---------------------------------------------------------------------------------------------
# fsync


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's data to the disk (directories: not on Windows, which cannot open them)."""
    if os.name == "nt" and Path(path).is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file under `root`, then its directories deepest first, so that renaming `root` into
    place afterwards publishes complete contents even across a power loss."""
    for parent, _, files in sorted(os.walk(root), key=lambda w: -w[0].count(os.sep)):
        for name in files:
            fsync_path(os.path.join(parent, name))
        fsync_path(parent)


# ---------------------------------------------------------------------------------------------
# checksums


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: str | os.PathLike, names: Iterable[str] | None = None) -> Path | None:
    """Record the sha256 of `names` (paths relative to `directory`; default: its ``*.safetensors``) in
    ``directory/checksums.json``; returns that file, or None when there is nothing to record."""
    directory = Path(directory)
    names = sorted(names if names is not None else (p.name for p in directory.glob("*.safetensors")))
    if not names:
        return None
    write_json_atomic(directory / CHECKSUMS_NAME, {"sha256": {n: sha256_file(directory / n) for n in names}})
    return directory / CHECKSUMS_NAME


def read_checksums(directory: str | os.PathLike) -> dict[str, str] | None:
    """{relative path: sha256} of ``directory/checksums.json``; None without one; `IntegrityError` when it
    is unreadable or names a path outside `directory`."""
    path = Path(directory) / CHECKSUMS_NAME
    if not path.is_file():
        return None
    try:
        sums = json.loads(path.read_text(encoding="utf-8"))["sha256"]
        ok = isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values())
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise IntegrityError(f"{path} is damaged (not a checksum list)")
    for name in sums:
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
            raise IntegrityError(f"{path} is damaged (it lists '{name}', which is not inside {directory})")
    return sums


def verify_checksums(directory: str | os.PathLike) -> bool:
    """Check every file listed in ``directory/checksums.json``: `IntegrityError` naming the first one that is
    missing or whose sha256 differs. False when the directory has no checksum list (nothing was checked)."""
    sums = read_checksums(directory)
    if sums is None:
        return False
    for name, want in sums.items():
        path = Path(directory) / name
        if not path.is_file():
            raise IntegrityError(f"{path} is missing (listed in {CHECKSUMS_NAME})")
        if sha256_file(path) != want:
            raise IntegrityError(f"{path} is damaged (sha256 mismatch)")
    return True


__all__ = ["CHECKSUMS_NAME", "apply_umask", "atomic_dir", "atomic_path", "fsync_path", "fsync_tree", "read_checksums",
           "remove_made", "sha256_file", "verify_checksums", "write_checksums", "write_json_atomic",
           "write_jsonl_atomic", "write_text_atomic"]
