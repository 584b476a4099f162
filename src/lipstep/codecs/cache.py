"""Latent cache, encoding side: every prepared clip's frames encoded once by a codec.

The layout, and its readers (`load_latents`, `read_cache_info`), are in `lipstep.data.latents`: reading
needs no codec. The identity (`Codec.identity`) hashes the codec's kind, scaling and every weight, so a
retrained or rescaled codec gets a new default directory, and a directory written by another codec is
refused. `encode_prepared` is resumable: a clip whose file exists with this identity and the
manifest's frame count is skipped; files are written atomically, so an interrupted run leaves no
partial file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from lipstep.codecs.vae import Codec
from lipstep.config import to_dict
from lipstep.data.dataset import check_shard, open_shard, read_manifest
from lipstep.data.latents import INFO_NAME, clip_id_of, read_cache_info
from lipstep.errors import DataError, LipstepError
from lipstep.fsutil import atomic_path, write_json_atomic


def default_cache_dir(prepared_dir: str | os.PathLike, codec: Codec, identity: str | None = None) -> Path:
    """``prepared_dir/latents/<codec.name>-<identity[:12]>``."""
    identity = identity or codec.identity()
    return Path(prepared_dir) / "latents" / f"{codec.name}-{identity[:12]}"


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
    write_json_atomic(cache / INFO_NAME, {
        "name": codec.name, "identity": identity, "kind": codec.kind, "latent_channels": codec.latent_channels,
        "downsample": codec.downsample, "scaling_factor": codec.scaling_factor,
        "shift_factor": codec.shift_factor, "config": to_dict(codec.cfg)})


def _is_current(path: Path, identity: str, frames: int) -> bool:
    """Whether `path` is a complete latent file of this codec for a clip of `frames` frames."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            names = set(f.keys())
    except (OSError, SafetensorError):  # unreadable or partial: encode again
        return False
    return meta.get("codec") == identity and meta.get("frames") == str(frames) and "latents" in names


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
        The cache directory; read clips back with `lipstep.data.latents.load_latents`.
    """
    root = Path(prepared_dir)
    rows = read_manifest(root)
    identity = codec.identity()
    cache = Path(out_dir) if out_dir is not None else default_cache_dir(root, codec, identity)
    todo = [r for r in rows if not _is_current(cache / f"{clip_id_of(r)}.safetensors", identity, int(r["frames"]))]
    for row in todo:  # a missing or damaged shard before anything is written or the bar starts
        check_shard(root / row["shard"])
    _claim(cache, codec, identity)
    bar = tqdm(total=sum(int(r["frames"]) for r in todo), desc=f"encode {codec.name}", unit="frame",
               disable=not progress or not todo, dynamic_ncols=True)
    for row in todo:
        frames = open_shard(root / row["shard"], ("frames",)).get("frames")
        if frames is None or frames.ndim != 4 or len(frames) != int(row["frames"]):
            raise DataError(f"shard {root / row['shard']} has no frames [T, S, S, 3] with T = {row['frames']}")
        if frames.shape[1] % codec.downsample or frames.shape[2] % codec.downsample:
            raise DataError(f"{root / row['shard']}: {frames.shape[1]}x{frames.shape[2]} frames are not a "
                            f"multiple of the codec's downsample factor {codec.downsample}")
        latents = _encode_frames(codec, frames, batch).contiguous()  # [T, C, h, w]
        with atomic_path(cache / f"{clip_id_of(row)}.safetensors") as tmp:
            save_file({"latents": latents}, str(tmp), metadata={"codec": identity, "frames": str(len(frames))})
        bar.update(len(frames))
    bar.close()
    return cache


__all__ = ["default_cache_dir", "encode_prepared"]
