"""The one loader of the small networks' directories (evaluators and readers lipstep trains).

Each such directory is ``config.json`` (the network's config dataclass, with ``_type``) and
``model.safetensors``. `load_net_dir` checks every way it can be wrong (missing directory, missing or
foreign config, missing or unreadable weights, weights of another shape) and says which in one line,
then returns the network in eval mode and frozen.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from lipstep.config import load_config
from lipstep.errors import ConfigError, LipstepError

WEIGHTS_NAME = "model.safetensors"


def _a(what: str) -> str:
    return f"an {what}" if what[:1].lower() in "aeiou" else f"a {what}"


def load_net_dir(directory: str | os.PathLike, cfg_cls: type, net_cls: type[nn.Module], *, what: str) -> nn.Module:
    """``net_cls(cfg)`` with the weights of ``directory`` (``what`` names it in errors, e.g. "mouth reader")."""
    directory = Path(directory)
    config, weights = directory / "config.json", directory / WEIGHTS_NAME
    if not directory.is_dir():
        raise LipstepError(f"{directory}: {what} directory not found")
    if not config.is_file():
        raise LipstepError(f"{directory} is not {_a(what)} directory (no config.json)")
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("_type", cfg_cls.__name__)
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != cfg_cls.__name__:
        raise LipstepError(f"{directory} is not {_a(what)} directory (its config.json describes "
                           f"{kind or 'nothing readable'}, not a {cfg_cls.__name__})")
    try:
        cfg = load_config(cfg_cls, config)
    except ConfigError as e:
        raise LipstepError(f"{directory} is not {_a(what)} directory ({e})") from None
    if not weights.is_file():
        raise LipstepError(f"{directory} has {_a(what)} config.json but no {WEIGHTS_NAME}")
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


__all__ = ["WEIGHTS_NAME", "load_net_dir"]
