"""Directories of the small networks lipstep trains (evaluators, readers, the viseme classifier): one
writer, one loader. (A base-layer module, so that `lipstep.audio` can keep its classifier in one too.)

Each such directory is ``config.json`` (the network's config dataclass, with ``_type``),
``model.safetensors``, ``checksums.json`` (its sha256) and, from training, ``train.json``.
`save_net_dir` writes them as one atomic directory, replacing only an empty folder or a directory of the
same network (`check_net_out`); `load_net_dir` checks every way it can be wrong
(missing directory, missing or foreign config, missing, damaged or unreadable weights, weights of
another shape) and says which in one line, then returns the network in eval mode and frozen.
Directories written before checksums existed load unchecked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from lipstep.config import load_config, save_config
from lipstep.errors import ConfigError, LipstepError
from lipstep.fsutil import atomic_dir, verify_checksums, write_checksums, write_json_atomic

WEIGHTS_NAME = "model.safetensors"


def _a(what: str) -> str:
    return f"an {what}" if what[:1].lower() in "aeiou" else f"a {what}"


def _kind(directory: Path, default: str | None = None) -> str | None:
    """The ``_type`` of ``directory/config.json`` (`default` when it names none); None when it cannot be read."""
    try:
        return json.loads((directory / "config.json").read_text(encoding="utf-8")).get("_type", default)
    except (OSError, ValueError, AttributeError):
        return None


def check_net_out(directory: str | os.PathLike, cfg_cls: type, *, what: str) -> None:
    """Refuse to write a network of `cfg_cls` over anything but an empty folder or a directory of the same
    kind (`save_net_dir` replaces the whole directory); trainers call it before any work."""
    directory = Path(directory)
    if directory.exists() and not (directory.is_dir() and (not any(directory.iterdir())
                                                           or _kind(directory) == cfg_cls.__name__)):
        raise LipstepError(f"{directory} exists and is not {_a(what)} directory; refusing to overwrite it")


def save_net_dir(net: nn.Module, directory: str | os.PathLike, *, what: str, metadata: dict[str, str],
                 train: dict | None = None) -> Path:
    """Write ``net.cfg`` as ``config.json``, the weights (with ``metadata``) and their checksum, and ``train``
    as ``train.json`` (when given) into ``directory``, replacing it atomically (`check_net_out` first: `what`
    names the network); returns it."""
    directory = Path(directory)
    check_net_out(directory, type(net.cfg), what=what)
    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt", **metadata})
        write_checksums(tmp, [WEIGHTS_NAME])
        save_config(net.cfg, tmp)
        if train is not None:
            write_json_atomic(tmp / "train.json", train)
    return directory


def load_net_dir(directory: str | os.PathLike, cfg_cls: type, net_cls: type[nn.Module], *, what: str) -> nn.Module:
    """``net_cls(cfg)`` with the weights of ``directory`` (``what`` names it in errors, e.g. "mouth reader")."""
    directory = Path(directory)
    config, weights = directory / "config.json", directory / WEIGHTS_NAME
    if not directory.is_dir():
        raise LipstepError(f"{directory}: {what} directory not found")
    if not config.is_file():
        raise LipstepError(f"{directory} is not {_a(what)} directory (no config.json)")
    kind = _kind(directory, default=cfg_cls.__name__)
    if kind != cfg_cls.__name__:
        raise LipstepError(f"{directory} is not {_a(what)} directory (its config.json describes "
                           f"{kind or 'nothing readable'}, not a {cfg_cls.__name__})")
    try:
        cfg = load_config(cfg_cls, config)
    except ConfigError as e:
        raise LipstepError(f"{directory} is not {_a(what)} directory ({e})") from None
    if not weights.is_file():
        raise LipstepError(f"{directory} has {_a(what)} config.json but no {WEIGHTS_NAME}")
    verify_checksums(directory)
    try:
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a bad file
        raise LipstepError(f"{weights}: cannot read {what} weights ({' '.join(str(e).split())[:160]})") from None
    net = net_cls(cfg)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when strict=False
        raise LipstepError(f"{weights} does not match {config} ({' '.join(str(e).split())[:200]})") from None
    if missing or unexpected:
        raise LipstepError(f"{weights} does not match {config}: {len(missing)} missing keys {missing[:3]}, "
                           f"{len(unexpected)} unexpected {unexpected[:3]}")
    return net.eval().requires_grad_(False)


__all__ = ["WEIGHTS_NAME", "check_net_out", "load_net_dir", "save_net_dir"]
