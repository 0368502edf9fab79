"""Versioned LLM-judge prompts, one YAML data file per stage (``<stage>.yaml``) plus ``common.yaml``.

Each file holds ``stage``, ``version``, ``system`` and ``user``; ``user`` is a :class:`string.Template`
whose ``$fields`` are the stage's inputs. Lists are rendered as numbered lines and ``$n_<field>`` is the
length of list ``<field>``. A prompt's cache version is its declared version plus a digest of its text,
so an edited prompt never reuses answers cached for the old text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

import yaml

PROMPT_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Prompt:
    """One stage's prompt: system text and a user template."""

    stage: str
    version: str
    system: str
    user: str
    reask: str

    @property
    def cache_version(self) -> str:
        digest = hashlib.sha256("\0".join((self.system, self.user, self.reask)).encode()).hexdigest()
        return f"v{self.version}-{digest[:10]}"

    def render(self, inputs: Mapping[str, Any]) -> list[dict[str, str]]:
        """Chat messages for ``inputs``; raises ``KeyError`` naming a field the template needs but lacks."""
        fields: dict[str, str] = {}
        for key, value in inputs.items():
            if isinstance(value, (list, tuple)):
                fields[key] = "\n".join(f"{i}. {v}" for i, v in enumerate(value, 1)) or "(none)"
                fields[f"n_{key}"] = str(len(value))
            else:
                fields[key] = str(value)
        try:
            user = Template(self.user).substitute(fields)
        except KeyError as exc:
            raise KeyError(f"prompt {self.stage}: no input for ${exc.args[0]}") from None
        return [{"role": "system", "content": self.system.strip()}, {"role": "user", "content": user}]

    def reask_message(self, error: str) -> dict[str, str]:
        """The user turn that asks again after an unusable answer."""
        return {"role": "user", "content": Template(self.reask).safe_substitute(error=error)}


def _read(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a prompt file must hold a mapping")
    return data


@cache
def load_common(prompt_dir: str | None = None) -> dict[str, Any]:
    """``common.yaml``: the re-ask template and the benchmark question."""
    return _read(Path(prompt_dir or PROMPT_DIR) / "common.yaml")


@cache
def load_prompt(stage: str, prompt_dir: str | None = None) -> Prompt:
    """The prompt of ``stage`` from ``prompt_dir`` (default: the prompts shipped with facetrack).

    Raises:
        FileNotFoundError: no ``<stage>.yaml`` in the directory.
        ValueError: the file lacks a field or names another stage.
    """
    folder = Path(prompt_dir or PROMPT_DIR)
    path = folder / f"{stage}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no prompt for stage {stage!r}: {path} does not exist")
    data = _read(path)
    missing = [k for k in ("stage", "version", "system", "user") if k not in data]
    if missing:
        raise ValueError(f"{path.name}: missing {', '.join(missing)}")
    if data["stage"] != stage:
        raise ValueError(f"{path.name}: declares stage {data['stage']!r}, expected {stage!r}")
    common = load_common(prompt_dir)
    return Prompt(
        stage=stage,
        version=str(data["version"]),
        system=str(data["system"]),
        user=str(data["user"]),
        reask=str(common["reask"]),
    )
