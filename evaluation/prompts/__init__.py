"""Versioned LLM-judge prompt sets: the shipped one (this folder) or a user's folder or file.

The shipped set is one YAML data file per stage (``<stage>.yaml``: ``stage``, ``version``, ``system``,
``user``) plus ``common.yaml`` (``reask``, ``fec_question``). A user's set is a folder laid out the same
way or one YAML/JSON file holding the same fields (see ``README.md`` here, and :func:`load_prompt_set`).
``user`` is a :class:`string.Template` whose ``$fields`` are the stage's inputs; lists are rendered as
numbered lines and ``$n_<field>`` is the length of list ``<field>``.

Every set has a hash of all its text (named in every report), and every prompt a cache version (its
declared version plus a digest of its own text and the re-ask text) that goes into the judge cache keys,
so an edited prompt never reuses answers cached for the old text, while answers of the stages whose text
did not change are still reused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

import yaml

PROMPT_DIR = Path(__file__).resolve().parent
DEFAULT_SET_NAME = "facetrack-default"
STAGE_KEYS = ("version", "system", "user")
COMMON_KEYS = ("reask", "fec_question")
"""``reask`` is required; ``fec_question`` only when the VideoChatGPT scores are asked for."""
SET_KEYS = ("name", "version", "description", "common", "stages")
_FIELD = re.compile(r"\$(?:(\w+)|\{(\w+)\})")


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


@dataclass(frozen=True)
class PromptSet:
    """A named set of stage prompts with the text they share; ``hash`` covers all of its text."""

    name: str
    source: str
    common: Mapping[str, str]
    stages: Mapping[str, Mapping[str, str]]
    version: str = "1"
    _prompts: dict[str, Prompt] = field(default_factory=dict, compare=False, repr=False)

    @property
    def hash(self) -> str:
        """sha256 (first 16 hex digits) of the set's text: common fields and every stage's prompt."""
        text = json.dumps(
            {"common": dict(self.common), "stages": {k: dict(v) for k, v in self.stages.items()}},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def fec_question(self) -> str:
        return str(self.common.get("fec_question", ""))

    def prompt(self, stage: str) -> Prompt:
        """The prompt of ``stage``.

        Raises:
            ValueError: the set has no prompt for ``stage``.
        """
        if stage not in self._prompts:
            if stage not in self.stages:
                raise ValueError(
                    f"prompt set {self.name} ({self.source}) has no prompt for stage {stage!r}; "
                    f"it has: {', '.join(sorted(self.stages)) or 'none'}"
                )
            data = self.stages[stage]
            self._prompts[stage] = Prompt(
                stage=stage,
                version=str(data["version"]),
                system=str(data["system"]),
                user=str(data["user"]),
                reask=str(self.common["reask"]),
            )
        return self._prompts[stage]

    def require(self, stages: Iterable[str], why: str = "") -> None:
        """Raise ``ValueError`` naming every stage of ``stages`` the set lacks (``why``: for what)."""
        missing = [s for s in stages if s not in self.stages]
        if missing:
            raise ValueError(
                f"prompt set {self.name} ({self.source}) has no prompt for {', '.join(missing)}"
                + (f" (needed by {why})" if why else "")
            )

    def describe(self) -> dict[str, Any]:
        """What a report says about the set: name, hash, where it came from, each stage's cache version."""
        return {
            "name": self.name,
            "version": self.version,
            "hash": self.hash,
            "source": self.source,
            "stages": {s: self.prompt(s).cache_version for s in sorted(self.stages)},
        }


def _read(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a prompt file must hold a mapping")
    return data


def _check_stage(stage: str, data: Any, where: str) -> dict[str, str]:
    from evaluation.judges.base import STAGES

    if stage not in STAGES:
        raise ValueError(f"{where}: unknown stage {stage!r}; known: {', '.join(STAGES)}")
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: must be a mapping with {', '.join(STAGE_KEYS)}")
    missing = [k for k in STAGE_KEYS if k not in data or data[k] is None]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
    if data.get("stage", stage) != stage:
        raise ValueError(f"{where}: declares stage {data['stage']!r}, expected {stage!r}")
    allowed = set(STAGES[stage]) | {f"n_{f}" for f in STAGES[stage]}
    used = {a or b for a, b in _FIELD.findall(str(data["user"]))}
    unknown = sorted(used - allowed)
    if unknown:
        raise ValueError(
            f"{where}: user uses ${', $'.join(unknown)}, not an input of {stage} "
            f"(inputs: {', '.join(sorted(allowed))})"
        )
    return {k: str(data[k]) for k in STAGE_KEYS}


def _check_common(data: Any, where: str) -> dict[str, str]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: must be a mapping with {', '.join(COMMON_KEYS)}")
    if not isinstance(data.get("reask"), str):
        raise ValueError(f"{where}: missing key reask (the text that asks again after an unusable answer)")
    return {k: str(data[k]) for k in COMMON_KEYS if isinstance(data.get(k), str)}


def _from_folder(folder: Path) -> PromptSet:
    from evaluation.judges.base import STAGES

    common_path = folder / "common.yaml"
    if not common_path.is_file():
        raise FileNotFoundError(f"prompt folder {folder}: no common.yaml")
    common_data = _read(common_path)
    common = _check_common(common_data, str(common_path))
    stages = {}
    for stage in STAGES:
        path = folder / f"{stage}.yaml"
        if path.is_file():
            stages[stage] = _check_stage(stage, _read(path), str(path))
    shipped = folder.resolve() == PROMPT_DIR
    return PromptSet(
        name=DEFAULT_SET_NAME if shipped else folder.name,
        source="shipped" if shipped else str(folder),
        common=common,
        stages=stages,
        version=str(common_data.get("version", "1")),
    )


def parse_prompt_set(data: Any, source: str) -> PromptSet:
    """A prompt set from the one-file form (already parsed YAML/JSON); errors name ``source`` and the key.

    Raises:
        ValueError: not a mapping, an unknown or missing key, a stage without its fields, or a template
            field that is not one of the stage's inputs.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"prompts {source}: the file must hold a mapping with 'common' and 'stages'")
    unknown = sorted(set(data) - set(SET_KEYS))
    if unknown:
        raise ValueError(
            f"prompts {source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(SET_KEYS)}"
        )
    for key in ("common", "stages"):
        if key not in data:
            raise ValueError(f"prompts {source}: missing key '{key}'")
    common = _check_common(data["common"], f"prompts {source}: common")
    if not isinstance(data["stages"], Mapping) or not data["stages"]:
        raise ValueError(f"prompts {source}: 'stages' must map stage names to their prompts")
    stages = {
        str(stage): _check_stage(str(stage), body, f"prompts {source}: stages.{stage}")
        for stage, body in data["stages"].items()
    }
    stem = Path(source).name.rsplit(".", 1)[0]
    return PromptSet(
        name=str(data.get("name") or stem),
        source=source,
        common=common,
        stages=stages,
        version=str(data.get("version", "1")),
    )


@cache
def load_prompt_set(source: str | None = None) -> PromptSet:
    """The prompt set at ``source``: empty for the shipped one, a folder like the shipped one, or one
    YAML/JSON file (local path or storage URI such as ``s3://``).

    Raises:
        FileNotFoundError: nothing at ``source``.
        ValueError: the set is malformed; the message names the file and the key.
    """
    if not source:
        return _from_folder(PROMPT_DIR)
    path = Path(source)
    if "://" not in source and path.is_dir():
        return _from_folder(path)
    from facetrack import storage

    if "://" not in source and not path.is_file():
        raise FileNotFoundError(f"prompts {source}: no such file or folder")
    text = storage.read_text(source)
    try:
        data = json.loads(text) if source.lower().endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if source.lower().endswith(".json") else "YAML"
        raise ValueError(f"prompts {source}: not valid {kind}: {exc}") from None
    return parse_prompt_set(data, source)


def load_common(prompt_dir: str | None = None) -> dict[str, Any]:
    """``common``: the re-ask template and the benchmark question of a set (default: the shipped one)."""
    return dict(load_prompt_set(prompt_dir).common)


def load_prompt(stage: str, prompt_dir: str | None = None) -> Prompt:
    """The prompt of ``stage`` from a set (default: the prompts shipped with facetrack).

    Raises:
        FileNotFoundError: no such set.
        ValueError: the set lacks the stage, or a file lacks a field or names another stage.
    """
    return load_prompt_set(prompt_dir).prompt(stage)
