"""Reading a latent cache: every prepared clip's frames encoded once by a codec, stored next to the shards.

Layout (written by `lipstep.codecs.cache.encode_prepared`; default
``PREPARED/latents/<codec.name>-<identity[:12]>/``)::

    codec.json             {"name", "identity", "kind", "latent_channels", "downsample",
                            "scaling_factor", "shift_factor", "config"} of the codec that wrote it
    <clip id>.safetensors  tensor ``latents`` float16 [T, C, h, w] (scaled, as `Codec.encode` returns:
                            posterior mean); metadata ``codec`` (identity) and ``frames`` (T)

Reading needs no codec, so this sits in the data layer beside `lipstep.data.dataset`; the encoding
side (which needs one) is `lipstep.codecs.cache`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from lipstep.errors import DataError

INFO_NAME = "codec.json"


def clip_id_of(row: dict) -> str:
    """The name a manifest row's latents are stored under: its ``id``, else its shard's stem."""
    return str(row.get("id") or Path(row["shard"]).stem)


def is_plain_name(text: str) -> bool:
    """True if `text` names a file inside a folder, not a path: not empty, ``.`` or ``..``, no ``/``,
    ``\\`` or control character. Clip ids name files (latents, eval videos); a path-like id would write
    outside their folder."""
    return text not in ("", ".", "..") and not any(c in text for c in "/\\") and text.isprintable()


def safe_name(text: str, default: str = "clip") -> str:
    """`text` as a plain file name: runs of characters other than letters, digits, ``.``, ``_`` and ``-``
    become ``_``; `default` if nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or default


def read_cache_info(cache_dir: str | os.PathLike) -> dict:
    """The ``codec.json`` of a latent cache; `DataError` if there is none."""
    path = Path(cache_dir) / INFO_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{cache_dir} is not a latent cache (no {INFO_NAME}); run encode_prepared first") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from None


def load_latents(cache_dir: str | os.PathLike, clip_id: str) -> np.ndarray:
    """Cached latents of one clip: float16 [T, C, h, w]."""
    path = Path(cache_dir) / f"{clip_id}.safetensors"
    if not path.is_file():
        raise DataError(f"{path}: no cached latents for clip '{clip_id}' (run encode_prepared)")
    try:
        return load_file(str(path))["latents"]
    except (OSError, SafetensorError, KeyError) as e:
        raise DataError(f"{path}: cannot read cached latents ({e})") from None


__all__ = ["INFO_NAME", "clip_id_of", "is_plain_name", "load_latents", "read_cache_info", "safe_name"]
