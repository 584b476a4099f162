"""Latent cache: every prepared clip's frames encoded once by a codec, stored next to the shards.

Layout (default ``PREPARED/latents/<codec.name>-<identity[:12]>/``)::

    codec.json             {"name", "identity", "kind", "latent_channels", "downsample",
                            "scaling_factor", "shift_factor", "config"} of the codec that wrote it
    <clip id>.safetensors  tensor ``latents`` float16 [T, C, h, w] (scaled, as `Codec.encode` returns:
                            posterior mean); metadata ``codec`` (identity) and ``frames`` (T)

The identity (`Codec.identity`) hashes the codec's kind, scaling and every weight, so a retrained or
rescaled codec gets a new default directory, and a directory written by another codec is refused.
`encode_prepared` is resumable: a clip whose file exists with this identity and the manifest's frame
count is skipped; files are written atomically, so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from lipstep.codecs.vae import Codec
from lipstep.errors import DataError, LipstepError
from lipstep.fsutil import atomic_path, write_json_atomic

INFO_NAME = "codec.json"


def default_cache_dir(prepared_dir: str | os.PathLike, codec: Codec, identity: str | None = None) -> Path:
    """``prepared_dir/latents/<codec.name>-<identity[:12]>``."""
    identity = identity or codec.identity()
    return Path(prepared_dir) / "latents" / f"{codec.name}-{identity[:12]}"


def read_cache_info(cache_dir: str | os.PathLike) -> dict:
    """The ``codec.json`` of a latent cache; `DataError` if there is none."""
    path = Path(cache_dir) / INFO_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{cache_dir} is not a latent cache (no {INFO_NAME}); run encode_prepared first") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from None


def _claim(cache: Path, codec: Codec, identity: str) -> None:
    """Write ``codec.json`` into a new cache dir, or check an existing one belongs to this codec."""
    if (cache / INFO_NAME).is_file():
        info = read_cache_info(cache)
        if info.get("identity") != identity:
            raise LipstepError(
                f"{cache} holds latents of another codec ({info.get('name')} {str(info.get('identity'))[:12]}), "
                f"not of {codec.name} {identity[:12]}; choose another directory or delete it")
        return
    if cache.is_dir() and any(p.suffix == ".safetensors" for p in cache.iterdir()):
        raise LipstepError(f"{cache} has latent files but no {INFO_NAME}; choose another directory or delete it")
    from lipstep.config import to_dict

    write_json_atomic(cache / INFO_NAME, {
        "name": codec.name, "identity": identity, "kind": codec.kind, "latent_channels": codec.latent_channels,
        "downsample": codec.downsample, "scaling_factor": codec.scaling_factor,
        "shift_factor": codec.shift_factor, "config": to_dict(codec.cfg)})


def _is_current(path: Path, identity: str, frames: int) -> bool:
    """Whether `path` is a complete latent file of this codec for a clip of `frames` frames."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
    except (OSError, SafetensorError):  # unreadable or partial: encode again
        return False
    return meta.get("codec") == identity and meta.get("frames") == str(frames) and "latents" in names


def _clip_id(row: dict) -> str:
    return str(row.get("id") or Path(row["shard"]).stem)


@torch.no_grad()
def _encode_frames(codec: Codec, frames: np.ndarray, batch: int) -> torch.Tensor:
    """uint8 [T, S, S, 3] -> float16 [T, C, h, w] on the CPU, `batch` frames per forward."""
    out = []
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(np.asarray(frames[i:i + batch], dtype=np.float32))
        x = x.div_(127.5).sub_(1.0).permute(0, 3, 1, 2).to(codec.device)  # [b, 3, S, S] in [-1, 1]
        out.append(codec.encode(x).to(torch.float16).cpu())
    return torch.cat(out)


def encode_prepared(prepared_dir: str | os.PathLike, codec: Codec, out_dir: str | os.PathLike | None = None,
                    *, batch: int = 64, progress: bool = True) -> Path:
    """Encode the frames of every clip of a prepared directory to latents; resumable; returns the cache dir.

    Args:
        prepared_dir: output of ``lipstep prepare``.
        codec: the codec (on any device; fp32 or lower).
        out_dir: cache directory; None = `default_cache_dir` (``prepared_dir/latents/<name>-<hash>``).
            A directory written by another codec is refused with a `LipstepError`.
        batch: frames per encoder forward.
        progress: show a tqdm bar (frames).

    Returns:
        The cache directory; read clips back with `load_latents`.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from lipstep.data.dataset import open_shard, read_manifest

    root = Path(prepared_dir)
    rows = read_manifest(root)
    identity = codec.identity()
    cache = Path(out_dir) if out_dir is not None else default_cache_dir(root, codec, identity)
    _claim(cache, codec, identity)
    todo = [r for r in rows if not _is_current(cache / f"{_clip_id(r)}.safetensors", identity, int(r["frames"]))]
    bar = tqdm(total=sum(int(r["frames"]) for r in todo), desc=f"encode {codec.name}", unit="frame",
               disable=not progress, dynamic_ncols=True)
    for row in todo:
        frames = open_shard(root / row["shard"], ("frames",)).get("frames")
        if frames is None or frames.ndim != 4 or len(frames) != int(row["frames"]):
            raise DataError(f"shard {root / row['shard']} has no frames [T, S, S, 3] with T = {row['frames']}")
        if frames.shape[1] % codec.downsample or frames.shape[2] % codec.downsample:
            raise DataError(f"{root / row['shard']}: {frames.shape[1]}x{frames.shape[2]} frames are not a "
                            f"multiple of the codec's downsample factor {codec.downsample}")
        latents = _encode_frames(codec, frames, batch).contiguous()  # [T, C, h, w]
        with atomic_path(cache / f"{_clip_id(row)}.safetensors") as tmp:
            save_file({"latents": latents}, str(tmp), metadata={"codec": identity, "frames": str(len(frames))})
        bar.update(len(frames))
    bar.close()
    return cache


def load_latents(cache_dir: str | os.PathLike, clip_id: str) -> np.ndarray:
    """Cached latents of one clip: float16 [T, C, h, w]."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(cache_dir) / f"{clip_id}.safetensors"
    if not path.is_file():
        raise DataError(f"{path}: no cached latents for clip '{clip_id}' (run encode_prepared)")
    try:
        return load_file(str(path))["latents"]
    except (OSError, SafetensorError, KeyError) as e:
        raise DataError(f"{path}: cannot read cached latents ({e})") from None


__all__ = ["INFO_NAME", "default_cache_dir", "encode_prepared", "load_latents", "read_cache_info"]
