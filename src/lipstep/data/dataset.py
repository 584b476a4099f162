"""Fixed-length training windows over a prepared directory (``lipstep prepare`` output).

**Axis order (fixed here, once, for the whole project):** video is ``[T, C, H, W]`` per item, so a
batch is ``[B, T, C, H, W]``; a single image (the reference) is ``[C, H, W]``; motion frames are
``[M, C, H, W]``; audio features are ``[T, K, D]`` (K mel frames around each video frame, see
`lipstep.data.features`), batched ``[B, T, K, D]``.

Item ``i`` is window ``(clip, start)`` of the index: every start in ``[M, n - T]`` stepping by
``stride`` for each clip with ``n >= T + M`` frames, clips in manifest order. It holds:

- ``frames`` float32 [T, 3, H, W] in [-1, 1]: frames ``start .. start + T - 1``;
- ``motion`` float32 [M, 3, H, W]: frames ``start - M .. start - 1`` (the ones just before);
- ``reference`` float32 [3, H, W]: one frame of the same clip outside the window, between
  ``min_ref_distance`` and ``max_ref_distance`` frames away from it (0 = any distance) when the
  clip allows (else any frame outside the window; else any frame), drawn from
  ``np.random.default_rng((seed, epoch, i))``;
- ``audio`` float32 [T, K, D]: the mel windows of the window's frames;
- ``visemes`` int64 [T], ``mouth`` float32 [T, 3] and ``blink`` float32 [T] (eyelid closure) when the
  shard has them (synthetic world);
- ``clip_index``, ``start``, ``reference_index`` int64 scalars.

With ``latents=CACHE`` (a latent cache, `lipstep.data.latents`), items also hold
the same window as codec latents: ``latents`` float32 [T, C, h, w], ``reference_latent`` [C, h, w]
and ``motion_latents`` [M, C, h, w]; ``pixels=False`` then leaves the pixel frames out (what the
teacher trains on: no decoding of 64 px frames per step). With ``residual=s > 0`` the window and
motion latents are offsets from the reference latent, ``(z - reference_latent) · s`` (the reference
stays absolute): the space of a model whose ``ModelInfo.residual`` is ``s``.

Determinism: an item depends only on (files, seed, epoch, i): no global RNG, so any number of
DataLoader workers yields identical batches. `set_epoch` changes only the reference draws; call it
before iterating (workers copy the dataset when an iterator starts, so with
``persistent_workers=True`` a later `set_epoch` would not reach them).

Memory: the constructor reads only the manifest. Shards are opened lazily, in whichever process
asks, and their arrays are memory-mapped (shards are uncompressed ``.npz``, so each array is a
plain ``.npy`` inside the zip; `open_shard`), with a small LRU of open shards (``cache_size`` per
process). An item copies only its window; the OS page cache, shared by all workers, holds the
rest, so even hour-long 256 px clips cost no resident memory per worker. Pickling the dataset
(DataLoader workers under spawn) drops the cache.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipstep.config import check
from lipstep.data.latents import clip_id_of, is_plain_name, load_latents, read_cache_info
from lipstep.errors import ConfigError, DataError

_LOADED_KEYS = ("frames", "mel", "visemes", "mouth", "blink")


@dataclass
class WindowConfig:
    frames: int = 8                 # T: frames per training window
    motion_frames: int = 2          # M: frames before the window given as motion context
    stride: int = 4                 # step between window starts within a clip
    seed: int = 0                   # seeds the reference-frame draws
    min_ref_distance: int = 2       # reference frame at least this far from the window if possible
    max_ref_distance: int = 6       # ... and at most this far (0 = anywhere in the clip): a near reference keeps
    #   the offsets a residual model learns to the mouth, blinks and small head motion; references from
    #   anywhere in a clip make it learn large pose changes it cannot predict (experiments/teacher/, v7)

    def validate(self) -> None:
        check(self.frames >= 1, f"frames must be >= 1, got {self.frames}")
        check(self.motion_frames >= 0, f"motion_frames must be >= 0, got {self.motion_frames}")
        check(self.stride >= 1, f"stride must be >= 1, got {self.stride}")
        check(self.min_ref_distance >= 1, f"min_ref_distance must be >= 1, got {self.min_ref_distance}")
        check(self.max_ref_distance == 0 or self.max_ref_distance >= self.min_ref_distance,
              f"max_ref_distance must be 0 (anywhere) or >= min_ref_distance ({self.min_ref_distance}), "
              f"got {self.max_ref_distance}")


def read_manifest(root: str | os.PathLike) -> list[dict]:
    """Rows of ``ROOT/manifest.jsonl`` of a prepared directory; `DataError` if missing or malformed."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"prepared directory {root} does not exist (run `lipstep prepare` first)")
    path = root / "manifest.jsonl"
    if not path.is_file():
        raise DataError(f"{root} has no manifest.jsonl; is it a prepared directory (`lipstep prepare`)?")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({type(e).__name__})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or not {"shard", "split", "frames"} <= set(row):
                raise DataError(f"{path}:{n}: a prepared manifest row needs shard, split and frames")
            if not (isinstance(row["shard"], str) and isinstance(row["split"], str)
                    and isinstance(row["frames"], int)):
                raise DataError(f"{path}:{n}: shard and split must be strings and frames an integer")
            if not is_plain_name(clip_id_of(row)):
                raise DataError(f"{path}:{n}: clip id {clip_id_of(row)!r} is not a plain file name (no '/', "
                                "'\\' or '..'); ids name output files")
            rows.append(row)
    return rows


def split_track(root: str | os.PathLike, key: str, split: str = "train") -> list[tuple[Path, np.ndarray | None]]:
    """(shard path, its ``key`` array or None when the shard has none) for every clip of a split, in manifest
    order: one member of each shard is read (a label track: ``mouth``, ``blink``, ...)."""
    root = Path(root)
    return [(root / r["shard"], open_shard(root / r["shard"], keys=(key,)).get(key))
            for r in read_manifest(root) if r["split"] == split]


def _member_memmap(path: Path, fh, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map one stored (uncompressed) ``.npy`` member of a zip; None if it is compressed."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    fh.seek(info.header_offset)
    local = fh.read(30)  # the local header's name/extra lengths can differ from the central directory's
    if local[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local header for {info.filename}")
    fh.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
            + int.from_bytes(local[28:30], "little"))
    version = np.lib.format.read_magic(fh)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        return None
    shape, fortran, dtype = read_header(fh)
    if dtype.hasobject:
        raise ValueError(f"{info.filename} holds Python objects")
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape, order="F" if fortran else "C")


def check_shard(path: str | os.PathLike) -> None:
    """A `DataError` unless `path` is a readable shard archive (its index only is read: cheap)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path):
            pass
    except FileNotFoundError:
        raise DataError(f"shard {path} listed in the manifest is missing") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read shard {path} ({e})") from None


def open_shard(path: str | os.PathLike, keys=None) -> dict[str, np.ndarray]:
    """The arrays of a prepared shard (all, or those in `keys`), memory-mapped and read-only.

    Arrays stored compressed (not what `prepare` writes) are read into memory instead.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
            arrays = {}
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                if keys is not None and name not in keys:
                    continue
                arr = _member_memmap(path, fh, info)
                if arr is None:
                    with zf.open(info) as member:
                        arr = np.lib.format.read_array(member, allow_pickle=False)
                arrays[name] = arr
    except FileNotFoundError:
        raise DataError(f"shard {path} listed in the manifest is missing") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read shard {path} ({e})") from None
    return arrays


def _to_image(x: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]."""
    t = torch.from_numpy(np.array(x, dtype=np.float32)).div_(127.5).sub_(1.0)  # a copy, off the memmap
    return t.movedim(-1, -3).contiguous()


def _latent(z: np.ndarray) -> torch.Tensor:
    """float16 cached latents -> float32 tensor (a copy)."""
    return torch.from_numpy(np.array(z, dtype=np.float32))


class WindowDataset(torch.utils.data.Dataset):
    """Training windows of one split of a prepared directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", cfg: WindowConfig | None = None, *,
                 cache_size: int = 8, latents: str | os.PathLike | None = None, pixels: bool = True,
                 residual: float = 0.0, blink_repeat: int = 0):
        self.root, self.split = Path(root), split
        if blink_repeat < 0:
            raise ConfigError(f"blink_repeat must be >= 0, got {blink_repeat}")
        self.blink_repeat = int(blink_repeat)  # windows holding a blink (a frame of eyelid closure >= 0.5 in the
        #   blink labels) appear 1 + blink_repeat times per epoch: blinks cover ~4 % of the frames
        self.residual = float(residual)  # > 0: latents / motion_latents become (z - reference_latent) · residual
        self.latents = Path(latents) if latents is not None else None
        self.pixels = pixels or self.latents is None
        if self.latents is not None:
            read_cache_info(self.latents)  # DataError when it is not a latent cache
        self.cfg = cfg or WindowConfig()
        self.cfg.validate()
        self.cache_size = max(1, cache_size)
        self.epoch = 0
        rows = read_manifest(self.root)
        present = sorted({r["split"] for r in rows})
        if split not in present:
            raise DataError(f"split '{split}' is not in {self.root / 'manifest.jsonl'} "
                            f"(it has: {', '.join(present) or 'no clips'})")
        self.clips = [r for r in rows if r["split"] == split]
        for row in self.clips:  # a missing or damaged shard now, not after minutes of encoding and training
            check_shard(self.root / row["shard"])
        need = self.cfg.frames + self.cfg.motion_frames
        clip_idx, starts = [], []
        for c, row in enumerate(self.clips):
            s = np.arange(self.cfg.motion_frames, int(row["frames"]) - self.cfg.frames + 1, self.cfg.stride)
            clip_idx.append(np.full(len(s), c, np.int64))
            starts.append(s.astype(np.int64))
        self._clip = np.concatenate(clip_idx) if clip_idx else np.zeros(0, np.int64)
        self._start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        if len(self._clip) == 0:
            raise DataError(f"no clip in split '{split}' has at least {need} frames "
                            f"(frames {self.cfg.frames} + motion_frames {self.cfg.motion_frames})")
        self.blink_windows = 0  # distinct windows repeated by blink_repeat
        if self.blink_repeat:
            self._repeat_blink_windows()
        self._cache: OrderedDict[int, dict] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clip)

    def _repeat_blink_windows(self) -> None:
        """Append ``blink_repeat`` more copies of every window that holds a blink."""
        tracks = [blink for _, blink in split_track(self.root, "blink", self.split)]  # in self.clips' order
        if all(b is None for b in tracks):
            raise DataError(f"blink_repeat: the '{self.split}' clips of {self.root} have no blink labels")
        t = self.cfg.frames
        hold = np.array([tracks[c] is not None and float(np.max(tracks[c][s:s + t])) >= 0.5
                         for c, s in zip(self._clip, self._start)], bool)
        k = self.blink_repeat
        self._clip = np.concatenate([self._clip, *[self._clip[hold]] * k])
        self._start = np.concatenate([self._start, *[self._start[hold]] * k])
        self.blink_windows = int(hold.sum())

    @property
    def blink_note(self) -> str:
        """A training log line's note on repeated blink windows, e.g. ' (294 holding a blink, each 4x)'; '' without."""
        return (f" ({self.blink_windows} holding a blink, each {1 + self.blink_repeat}x)"
                if self.blink_repeat and self.blink_windows else "")

    def set_epoch(self, epoch: int) -> None:
        """Select the reference draws of `epoch` (frames, audio and motion do not change)."""
        self.epoch = int(epoch)

    def window(self, i: int) -> tuple[int, int]:
        """(clip index, start frame) of item i."""
        return int(self._clip[i]), int(self._start[i])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # each worker process loads its own shards
        return state

    def _load(self, c: int) -> dict:
        """The decoded arrays of clip c, through the per-process LRU cache."""
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        path = self.root / self.clips[c]["shard"]
        arrays = open_shard(path, _LOADED_KEYS)
        if "frames" not in arrays or "mel" not in arrays:
            raise DataError(f"shard {path} lacks frames or mel")
        if self.latents is not None:
            row = self.clips[c]
            z = load_latents(self.latents, clip_id_of(row))
            if len(z) != len(arrays["frames"]):
                raise DataError(f"{self.latents}: {len(z)} latent frames for clip {row.get('id')} but its shard "
                                f"has {len(arrays['frames'])}; re-encode the cache")
            arrays = {**arrays, "latents": z}
        self._cache[c] = arrays
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return arrays

    def reference_index(self, i: int, n_frames: int) -> int:
        """The reference frame of item i for the current epoch (see the module docstring)."""
        _, s = self.window(i)
        t, d, far = self.cfg.frames, self.cfg.min_ref_distance, self.cfg.max_ref_distance
        far = far or n_frames
        rng = np.random.default_rng((self.cfg.seed, self.epoch, i))
        low = list(range(max(0, s - far), max(0, s - d + 1)))                       # d <= s - f <= far
        last = s + t - 1
        high = list(range(min(n_frames, last + d), min(n_frames, last + far + 1)))  # d <= f - last <= far
        if low or high:
            return int(rng.choice(low + high))
        outside = [f for f in range(n_frames) if not s <= f < s + t]
        return int(rng.choice(outside)) if outside else int(rng.integers(n_frames))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} windows")
        i = int(i) % len(self)
        c, s = self.window(i)
        data = self._load(c)
        frames = data["frames"]
        t, m = self.cfg.frames, self.cfg.motion_frames
        ref = self.reference_index(i, len(frames))
        item = {}
        if self.pixels:
            item.update(frames=_to_image(frames[s:s + t]), reference=_to_image(frames[ref]),
                        motion=_to_image(frames[s - m:s]))
        if "latents" in data:
            z = data["latents"]
            item.update(latents=_latent(z[s:s + t]), reference_latent=_latent(z[ref]),
                        motion_latents=_latent(z[s - m:s]))
            if self.residual > 0:  # the model's space: offsets from the reference (ModelInfo.residual)
                r = item["reference_latent"]
                item.update(latents=(item["latents"] - r) * self.residual,
                            motion_latents=(item["motion_latents"] - r) * self.residual)
        item.update({
            "audio": torch.from_numpy(data["mel"][s:s + t].astype(np.float32)),
            "clip_index": torch.tensor(c, dtype=torch.int64),
            "start": torch.tensor(s, dtype=torch.int64),
            "reference_index": torch.tensor(ref, dtype=torch.int64),
        })
        if "visemes" in data:
            item["visemes"] = torch.from_numpy(data["visemes"][s:s + t].astype(np.int64))
        if "mouth" in data:
            item["mouth"] = torch.from_numpy(data["mouth"][s:s + t].astype(np.float32))
        if "blink" in data:
            item["blink"] = torch.from_numpy(data["blink"][s:s + t].astype(np.float32))
        return item


def batch_indices(n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                  start_step: int = 0) -> Iterator[list[int]]:
    """Endless batches of dataset indices: a fresh permutation per epoch from (seed, epoch),
    sharded across ranks, starting at `start_step` (so resuming continues the same sequence)."""
    per_rank = batch_size
    global_batch = per_rank * world
    steps_per_epoch = max(1, n // global_batch) if n >= global_batch else 1
    step = start_step
    while True:
        epoch, offset = divmod(step, steps_per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        if n < global_batch:  # tiny data sets: repeat the permutation to fill a batch
            perm = (perm * math.ceil(global_batch / n))[:global_batch]
        base = offset * global_batch + rank * per_rank
        yield perm[base:base + per_rank]
        step += 1


__all__ = ["WindowConfig", "WindowDataset", "batch_indices", "check_shard", "open_shard", "read_manifest", "split_track"]
