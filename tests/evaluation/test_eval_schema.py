"""The judge contract: answer validation, JSON parsing of LLM replies, and the versioned prompt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evaluation.judges.base import STAGES, AnswerError, validate_answer
from evaluation.judges.llm import parse_json_answer
from evaluation.prompts import PROMPT_DIR, load_prompt, load_prompt_set

SAMPLE_INPUTS = {
    "caption": "He smiles, then his mouth opens.",
    "pred_events": ["he smiles", "mouth opens"],
    "ref_events": ["the man smiles", "mouth closes", "he blinks"],
    "max_events": 10,
    "events": ["he smiles", "he frowns"],
    "question": "Describe the face.",
    "prediction": "He smiles.",
    "reference": "The man smiles broadly.",
}


def inputs_for(stage: str) -> dict:
    return {k: SAMPLE_INPUTS[k] for k in STAGES[stage]}


def test_sparse_pairs_become_a_full_matrix() -> None:
    inputs = inputs_for("tem_relations")
    answer = validate_answer(
        "tem_relations",
        inputs,
        {"pairs": [{"pred": 1, "ref": 1, "relation": "Same"}, {"pred": 2, "ref": 2, "relation": "opposite"}]},
    )
    assert answer == {
        "relations": [["same", "unrelated", "unrelated"], ["unrelated", "opposite", "unrelated"]]
    }


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"pairs": [{"pred": 3, "ref": 1, "relation": "same"}]}, "outside 1..2"),
        ({"pairs": [{"pred": 0, "ref": 1, "relation": "same"}]}, "outside 1..2"),
        ({"pairs": [{"pred": 1, "ref": 1, "relation": "similar"}]}, "must be one of"),
        ({"pairs": [{"pred": "1", "ref": 1, "relation": "same"}]}, "must be an integer"),
        ({"relations": [["same", "same", "same"]]}, "list of 2 rows"),
        ({"nothing": []}, '"pairs"'),
    ],
)
def test_bad_relation_answers_are_rejected_with_a_reason(bad: dict, message: str) -> None:
    with pytest.raises(AnswerError, match=message):
        validate_answer("tem_relations", inputs_for("tem_relations"), bad)


def test_events_are_cleaned_and_checked() -> None:
    answer = validate_answer(
        "tem_events", inputs_for("tem_events"), {"events": ["  he  smiles ", "", {"event": "x"}]}
    )
    assert answer == {"events": ["he smiles", "x"]}
    with pytest.raises(AnswerError):
        validate_answer("tem_events", inputs_for("tem_events"), {"events": "he smiles"})
    with pytest.raises(AnswerError):
        validate_answer("tem_events", inputs_for("tem_events"), {"events": [3]})


def test_entailment_needs_one_label_per_event() -> None:
    inputs = inputs_for("dq_entailment")
    assert validate_answer("dq_entailment", inputs, {"labels": ["entailment", "NEUTRAL"]}) == {
        "labels": ["entailment", "neutral"]
    }
    with pytest.raises(AnswerError, match="2 events"):
        validate_answer("dq_entailment", inputs, {"labels": ["entailment"]})


@pytest.mark.parametrize("score", [-1, 5.5, "six", None, True, float("nan")])
def test_scores_outside_0_5_are_rejected(score) -> None:
    with pytest.raises(AnswerError):
        validate_answer("vcgpt_detail", inputs_for("vcgpt_detail"), {"score": score})


def test_scores_in_range_are_accepted_as_numbers() -> None:
    assert validate_answer("vcgpt_temporal", inputs_for("vcgpt_temporal"), {"score": "4"}) == {"score": 4.0}
    assert validate_answer("vcgpt_temporal", inputs_for("vcgpt_temporal"), {"score": 0}) == {"score": 0.0}


def test_unknown_stage_or_missing_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown judge stage"):
        validate_answer("tem_magic", {}, {})
    with pytest.raises(ValueError, match="missing input"):
        validate_answer("tem_relations", {"pred_events": []}, {"pairs": []})


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"score": 4}', {"score": 4}),
        ('Sure! Here it is:\n```json\n{"score": 3}\n```\nThanks', {"score": 3}),
        ("{'events': ['he smiles']}", {"events": ["he smiles"]}),
        ('The answer is {"pairs": []} as requested.', {"pairs": []}),
    ],
)
def test_json_is_found_in_chatty_replies(text: str, expected: dict) -> None:
    assert parse_json_answer(text) == expected


@pytest.mark.parametrize("text", ["", "no json here", "{not json at all", "[1, 2, 3]"])
def test_unparsable_replies_raise_answer_errors(text: str) -> None:
    with pytest.raises(AnswerError):
        parse_json_answer(text)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_a_prompt_that_renders(stage: str) -> None:
    prompt = load_prompt(stage)
    messages = prompt.render(inputs_for(stage))
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "$" not in user, "a template field was left unfilled"
    assert "JSON" in user or "JSON" in messages[0]["content"]
    for field in STAGES[stage]:
        value = SAMPLE_INPUTS[field]
        shown = value[0] if isinstance(value, list) else str(value)
        assert shown in user, f"{stage}: input {field} is not in the prompt"


def test_prompt_version_follows_the_text(tmp_path: Path) -> None:
    for name in ("common.yaml", "tem_events.yaml"):
        (tmp_path / name).write_text((PROMPT_DIR / name).read_text())
    original = load_prompt("tem_events", str(tmp_path)).cache_version
    assert original == load_prompt("tem_events").cache_version
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "common.yaml").write_text((PROMPT_DIR / "common.yaml").read_text())
    (edited / "tem_events.yaml").write_text(
        (PROMPT_DIR / "tem_events.yaml").read_text().replace("at most ten", "at most twelve")
    )
    assert load_prompt("tem_events", str(edited)).cache_version != original


def test_a_prompt_file_must_name_its_stage(tmp_path: Path) -> None:
    (tmp_path / "common.yaml").write_text((PROMPT_DIR / "common.yaml").read_text())
    (tmp_path / "tem_events.yaml").write_text("stage: dq_events\nversion: 1\nsystem: s\nuser: u\n")
    with pytest.raises(ValueError, match="declares stage"):
        load_prompt("tem_events", str(tmp_path))
    (tmp_path / "tem_events.yaml").write_text("stage: tem_events\nversion: 1\nsystem: s\nuser: $caption\n")
    assert load_prompt("tem_events", str(tmp_path)).user == "$caption"
    with pytest.raises(ValueError, match="no prompt for stage 'dq_events'"):
        load_prompt("dq_events", str(tmp_path))


def one_file_set(**changes: object) -> dict:
    """The shipped prompts as one prompt-set mapping (the one-file schema), with ``changes`` applied."""
    shipped = load_prompt_set()
    data: dict = {
        "name": "my-prompts",
        "version": 3,
        "common": dict(shipped.common),
        "stages": {stage: dict(body) for stage, body in shipped.stages.items()},
    }
    data.update(changes)
    return data


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_one_file_prompt_set_loads_with_its_name_and_hash(tmp_path: Path, suffix: str) -> None:
    data = one_file_set()
    path = tmp_path / f"set{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    loaded = load_prompt_set(str(path))
    shipped = load_prompt_set()
    assert loaded.name == "my-prompts" and loaded.source == str(path) and loaded.version == "3"
    assert loaded.hash == shipped.hash, "same text, same hash, whatever the file's form"
    assert loaded.describe()["stages"] == shipped.describe()["stages"]
    assert shipped.name == "facetrack-default" and shipped.source == "shipped"
    assert len(shipped.hash) == 16 and set(shipped.stages) == set(STAGES)


def test_the_set_hash_follows_any_text_and_stage_versions_only_their_own(tmp_path: Path) -> None:
    data = one_file_set()
    data["stages"]["tem_relations"]["system"] += " Be strict."
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    edited, shipped = load_prompt_set(str(path)), load_prompt_set()
    assert edited.hash != shipped.hash
    assert edited.prompt("tem_relations").cache_version != shipped.prompt("tem_relations").cache_version
    assert edited.prompt("tem_events").cache_version == shipped.prompt("tem_events").cache_version


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"common": "reask this"}, "common: must be a mapping"),
        ({"common": {"fec_question": "q"}}, "common: missing key reask"),
        (
            {"stages": {"tem_events": {"version": 1, "system": "s"}}},
            r"stages.tem_events: missing key\(s\) user",
        ),
        ({"stages": {"tem_event": {"version": 1, "system": "s", "user": "u"}}}, "unknown stage 'tem_event'"),
        ({"stages": {"tem_events": {"version": 1, "system": "s", "user": "$text"}}}, r"uses \$text"),
        ({"stage": "x"}, "unknown key"),
    ],
)
def test_a_malformed_set_names_the_file_and_the_key(tmp_path: Path, change: dict, message: str) -> None:
    data = one_file_set(**change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=message) as info:
        load_prompt_set(str(path))
    assert str(path) in str(info.value)


def test_missing_common_or_stages_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump({"stages": one_file_set()["stages"]}))
    with pytest.raises(ValueError, match="missing key 'common'"):
        load_prompt_set(str(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_prompt_set(str(tmp_path / "absent.yaml"))
    with pytest.raises(ValueError, match="not valid YAML"):
        (tmp_path / "broken.yaml").write_text("stages: [unclosed\n")
        load_prompt_set(str(tmp_path / "broken.yaml"))


def test_a_run_checks_the_stages_its_metrics_need(tmp_path: Path) -> None:
    from evaluation.judges import JudgeConfig
    from evaluation.pipeline import prepare
    from evaluation.results import EvalConfig

    data = one_file_set(stages={k: v for k, v in one_file_set()["stages"].items() if k.startswith("tem")})
    data["common"].pop("fec_question")
    path = tmp_path / "tem_only.yaml"
    path.write_text(yaml.safe_dump(data))
    judge = JudgeConfig(kind="openai", prompts=str(path))
    config, prompts = prepare(EvalConfig(metrics=["tem", "cider"], judge=judge))
    assert prompts.name == "my-prompts"
    with pytest.raises(ValueError, match=r"no prompt for dq_events, dq_entailment \(needed by autodq\)"):
        prepare(EvalConfig(metrics=["tem", "autodq"], judge=judge))
    full = tmp_path / "full.yaml"
    custom = one_file_set()
    custom["common"]["fec_question"] = "How does the face change?"
    full.write_text(yaml.safe_dump(custom))
    config, _ = prepare(EvalConfig(metrics=["vcgpt"], judge=JudgeConfig(kind="openai", prompts=str(full))))
    assert config.vcgpt.question == "How does the face change?"
