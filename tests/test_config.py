"""Config machinery: dotted overrides, type checks, unknown keys with hints, save/load."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from lipstep.config import apply_overrides, from_dict, load_config, save_config, set_key, to_dict
from lipstep.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10
    betas: tuple[float, float] = (0.9, 0.99)

    def validate(self):
        if self.steps <= 0:
            raise ConfigError("train.steps must be positive")


@dataclass
class Outer:
    name: str = "run"
    mode: Literal["a", "b"] = "a"
    use_ema: bool = True
    path: Optional[str] = None
    train: Inner = field(default_factory=Inner)


def test_overrides_set_nested_values_with_types():
    cfg = apply_overrides(Outer(), ["train.lr=2e-4", "train.steps=5", "mode=b", "use_ema=false",
                                   "train.betas=(0.5, 0.9)", "name=123", "path=/x/y"])
    assert cfg.train.lr == 2e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 5 and cfg.mode == "b" and cfg.use_ema is False
    assert cfg.train.betas == (0.5, 0.9)
    assert cfg.name == "123" and cfg.path == "/x/y"


def test_int_accepted_for_float_but_not_float_for_int():
    cfg = apply_overrides(Outer(), ["train.lr=1"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        apply_overrides(Outer(), ["train.steps=2.5"])


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key 'train.lrr'.*did you mean 'lr'"),
    ("trian.lr=1", "unknown config key 'trian.lr'.*did you mean 'train'"),
    ("mode=c", "must be one of 'a', 'b'"),
    ("use_ema=maybe", "expected true or false"),
    ("train.betas=(1,)", "expected 2 values"),
    ("train.steps=0", "train.steps must be positive"),
    ("name", "not of the form key=value"),
    ("name.sub=1", "has no sub-keys"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        apply_overrides(Outer(), [override])
    assert "\n" not in str(info.value)


def test_save_load_round_trip_and_unknown_keys_in_files(tmp_path):
    cfg = apply_overrides(Outer(), ["train.lr=3e-4", "mode=b"])
    path = save_config(cfg, tmp_path)
    assert load_config(Outer, path) == cfg
    data = to_dict(cfg)
    data["train"]["momentum"] = 0.9
    with pytest.raises(ConfigError, match="unknown config key 'train.momentum'"):
        from_dict(Outer, data)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(Outer, tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.json")


def test_set_key_without_parsing_keeps_python_values():
    cfg = Outer()
    set_key(cfg, "train.steps", 7, parse=False)
    assert cfg.train.steps == 7
    with pytest.raises(ConfigError):
        set_key(cfg, "train.steps", "7", parse=False)


def test_a_literal_none_choice_is_reachable_from_the_command_line():
    @dataclass
    class WithNone:
        cfg_mode: Literal["none", "tokens"] = "tokens"

    assert apply_overrides(WithNone(), ["cfg_mode=none"]).cfg_mode == "none"
    assert apply_overrides(WithNone(), ["cfg_mode=None"]).cfg_mode == "none"
    with pytest.raises(ConfigError, match="must be one of"):
        apply_overrides(Outer(), ["mode=none"])  # no "none" choice: still an error
