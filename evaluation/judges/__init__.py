"""Judges behind one protocol, chosen by config: ``embedded`` (offline), ``openai`` (HTTP), ``transformers``.

``build_judge(JudgeConfig(kind=...))`` returns a :class:`~evaluation.judges.base.Judge`; backends are
imported only when chosen. Wrap a judge in :class:`~evaluation.judges.cache.CachedJudge` to cache its
answers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Literal

from evaluation.judges.base import Judge, JudgeError, JudgeFatalError
from evaluation.judges.embedded import EmbeddedJudgeConfig
from evaluation.judges.local_hf import TransformersJudgeConfig
from evaluation.judges.openai_compat import OpenAIJudgeConfig
from evaluation.prompts import PromptSet

JudgeKind = Literal["embedded", "openai", "transformers"]

# kind -> "module:factory"; the factory takes the JudgeConfig.
JUDGES: dict[str, str] = {
    "embedded": "evaluation.judges:_embedded",
    "openai": "evaluation.judges:_openai",
    "transformers": "evaluation.judges:_transformers",
}

__all__ = [
    "JUDGES",
    "Judge",
    "JudgeConfig",
    "JudgeError",
    "JudgeFatalError",
    "build_judge",
    "parse_judge_spec",
    "parse_judges",
]


@dataclass
class JudgeConfig:
    """Which judge scores the captions, and the settings of each kind."""

    kind: JudgeKind = "embedded"
    max_parse_retries: int = 2
    """LLM judges: how many times an unusable answer is asked again before the request fails."""
    prompts: str = ""
    """LLM judges: a prompt set to use instead of the shipped one: a folder laid out like
    ``evaluation/prompts/`` or one YAML/JSON file (schema in ``evaluation/prompts/README.md``)."""
    prompt_dir: str = ""
    """The older name of ``prompts`` (a folder); ``prompts`` wins when both are set."""
    embedded: EmbeddedJudgeConfig = field(default_factory=EmbeddedJudgeConfig)
    openai: OpenAIJudgeConfig = field(default_factory=OpenAIJudgeConfig)
    transformers: TransformersJudgeConfig = field(default_factory=TransformersJudgeConfig)

    def prompt_source(self) -> str:
        """Where this config's prompt set is ("" for the shipped one)."""
        return self.prompts or self.prompt_dir


def _embedded(config: JudgeConfig, prompts: PromptSet | None) -> Judge:
    from evaluation.judges.embedded import EmbeddedJudge

    return EmbeddedJudge(config.embedded)


def _openai(config: JudgeConfig, prompts: PromptSet | None) -> Judge:
    from evaluation.judges.llm import LLMJudge
    from evaluation.judges.openai_compat import OpenAIChat

    return LLMJudge(OpenAIChat(config.openai), prompts or config.prompt_source(), config.max_parse_retries)


def _transformers(config: JudgeConfig, prompts: PromptSet | None) -> Judge:
    from evaluation.judges.llm import LLMJudge
    from evaluation.judges.local_hf import TransformersChat

    return LLMJudge(
        TransformersChat(config.transformers), prompts or config.prompt_source(), config.max_parse_retries
    )


def build_judge(config: JudgeConfig | None = None, prompts: PromptSet | None = None) -> Judge:
    """The judge that ``config.kind`` names.

    Args:
        config: the judge's kind and settings.
        prompts: an already loaded prompt set (e.g. loaded on a Ray driver and shipped to the actors);
            without it an LLM judge loads the set ``config.prompts`` names.

    Raises:
        ValueError: unknown kind or an incomplete config for that kind (e.g. no model name).
    """
    config = config or JudgeConfig()
    if config.kind not in JUDGES:
        raise ValueError(f"unknown judge kind {config.kind!r}; known: {', '.join(JUDGES)}")
    module_name, factory = JUDGES[config.kind].split(":")
    return getattr(importlib.import_module(module_name), factory)(config, prompts)


VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "embedded-nolexicon": ("embedded", {"lexicon": False}),
}
"""Judge-spec names that are a kind with some settings: ``embedded-nolexicon`` is the embedded judge with
its facial-action lexicon off (an ablation of the offline smoke-test judge, for agreement studies)."""


def parse_judge_spec(spec: str, base: JudgeConfig | None = None) -> JudgeConfig:
    """One entry of ``--judges``: ``KIND`` or ``KIND:MODEL`` on top of ``base`` (the run's judge settings).

    ``KIND`` is a judge kind or a variant of :data:`VARIANTS`; ``MODEL`` is everything after the first
    colon (``openai:llama3:8b`` names model ``llama3:8b``): the endpoint's model for ``openai``, a path
    or hub id for ``transformers``, a sentence-transformers folder for ``embedded``. Every other
    setting (URL, sampling, prompts) comes from ``base``.

    Raises:
        ValueError: an empty spec or an unknown kind.
    """
    base = base or JudgeConfig()
    kind, _, model = spec.strip().partition(":")
    kind, model = kind.strip(), model.strip()
    if not kind:
        raise ValueError(f"judge spec {spec!r}: give KIND or KIND:MODEL, e.g. openai:gpt-4o-mini")
    kind, settings = VARIANTS.get(kind, (kind, {}))
    if kind not in JUDGES:
        known = ", ".join([*JUDGES, *VARIANTS])
        raise ValueError(f"judge spec {spec!r}: unknown kind {kind!r}; known: {known}")
    config = replace(base, kind=kind)  # type: ignore[arg-type]
    if settings:
        setattr(config, kind, replace(getattr(config, kind), **settings))
    if model:
        section = getattr(config, kind)
        setattr(config, kind, replace(section, model=model))
    return config


def parse_judges(specs: str, base: JudgeConfig | None = None) -> list[tuple[str, JudgeConfig]]:
    """``--judges A,B[,C]``: each spec (as :func:`parse_judge_spec`) with its label, the spec as written.

    Raises:
        ValueError: a bad spec, or the same spec twice.
    """
    labels = [s.strip() for s in specs.split(",") if s.strip()]
    dupes = sorted({s for s in labels if labels.count(s) > 1})
    if dupes:
        raise ValueError(f"--judges names {', '.join(dupes)} more than once")
    return [(label, parse_judge_spec(label, base)) for label in labels]
