"""Tests of the typed YAML + override config loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from facetrack.config import ConfigError, apply_overrides, load_config, to_dict


@dataclass
class Inner:
    size: int = 224
    margin: float = 0.5
    mode: Literal["hold", "interpolate"] = "interpolate"


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    limit: int | None = None
    flag: bool = False


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_build_typed_config(tmp_path):
    path = write(tmp_path, "name: demo\ninner:\n  size: 112\ntags: [a, b]\n")
    cfg = load_config(Outer, path, ["inner.margin=1", "limit=7", "flag=true", "inner.mode=hold"])
    assert cfg.name == "demo"
    assert cfg.inner.size == 112
    assert cfg.inner.margin == 1.0 and isinstance(cfg.inner.margin, float)
    assert cfg.inner.mode == "hold"
    assert cfg.tags == ["a", "b"]
    assert cfg.limit == 7 and cfg.flag is True
    assert to_dict(cfg)["inner"] == {"size": 112, "margin": 1.0, "mode": "hold"}


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "name: demo\ninner:\n  sise: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert "inner.sise" in str(err.value) and str(path) in str(err.value)
    assert "size" in str(err.value)  # the known keys are listed


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "name: demo\ninner:\n  size: large\n")
    with pytest.raises(ConfigError, match=r"inner\.size.*cfg\.yaml.*integer"):
        load_config(Outer, path)


def test_bad_override_type_and_literal():
    with pytest.raises(ConfigError, match="flag"):
        load_config(Outer, None, ["name=x", "flag=maybe"])
    with pytest.raises(ConfigError, match="inner.mode.*'hold', 'interpolate'"):
        load_config(Outer, None, ["name=x", "inner.mode=nearest"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(Outer, None, ["name"])


def test_missing_required_key_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        load_config(Outer, None, ["flag=true"])
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Outer, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_override_does_not_mutate_input():
    data = {"inner": {"size": 1}}
    out = apply_overrides(data, ["inner.size=2", "new.key=3"])
    assert data == {"inner": {"size": 1}}
    assert out == {"inner": {"size": 2}, "new": {"key": 3}}


@dataclass
class Numbers:
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)


def test_scientific_floats_and_fixed_tuples():
    cfg = load_config(Numbers, None, ["lr=1e-4", "betas=[0.8, 0.95]"])
    assert cfg.lr == 1e-4 and cfg.betas == (0.8, 0.95)
    with pytest.raises(ConfigError, match="betas"):
        load_config(Numbers, None, ["betas=[0.8]"])
    with pytest.raises(ConfigError, match="lr"):
        load_config(Numbers, None, ["lr=fast"])
