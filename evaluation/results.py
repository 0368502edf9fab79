"""What a benchmark run is configured with and what it yields per item: shared by the pipeline and the
reports (metric names live here, so commands and jobs take them from one place)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from evaluation import autodq, ngram, tem, vcgpt
from evaluation.judges import JudgeConfig

ALL_METRICS = ("tem", "autodq", "cider", "rouge_l", "vcgpt")
JUDGED_METRICS = ("tem", "autodq", "vcgpt")
MissingPolicy = Literal["exclude", "zero"]


@dataclass
class EvalConfig:
    """Everything that decides the scores of a run (saved into ``report.json``)."""

    model_name: str = "model"
    """How the predictions are named in the report table."""
    metrics: list[str] = field(default_factory=lambda: list(ALL_METRICS))
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    tem: tem.TemConfig = field(default_factory=tem.TemConfig)
    autodq: autodq.AutoDQConfig = field(default_factory=autodq.AutoDQConfig)
    vcgpt: vcgpt.VcgptConfig = field(default_factory=vcgpt.VcgptConfig)
    tokenizer: ngram.Tokenizer = "simple"
    rouge: ngram.RougeImpl = "coco"
    """ROUGE-L from pycocoevalcap (``coco``, recall-weighted F) or rouge-score (plain F1)."""
    cache: str = ""
    """Judge cache folder (local or ``s3://``); empty means ``<out>/judge_cache``, ``off`` disables it."""
    missing: MissingPolicy = "exclude"
    """References without a usable prediction: listed and left out, or listed and scored 0 everywhere."""
    compare_paper: bool = False
    """Put the paper's published rows next to this model in the table and the plot."""
    concurrency: int = 0
    """Judge requests in flight at once; 0 uses the judge's own bound."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(ALL_METRICS)}")


@dataclass
class ItemResult:
    """The judged metrics of one item."""

    id: str
    tem: tem.TemItem | None = None
    autodq: autodq.AutoDQItem | None = None
    vcgpt: vcgpt.VcgptItem | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tem": self.tem.to_dict() if self.tem else None,
            "autodq": self.autodq.to_dict() if self.autodq else None,
            "vcgpt": self.vcgpt.to_dict() if self.vcgpt else None,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemResult:
        dq = data.get("autodq")
        vc = data.get("vcgpt")
        return cls(
            id=str(data["id"]),
            tem=tem.item_from_dict(data["tem"]) if data.get("tem") else None,
            autodq=autodq.AutoDQItem(**dq) if dq else None,
            vcgpt=vcgpt.VcgptItem(**vc) if vc else None,
            seconds=float(data.get("seconds", 0.0)),
        )
