"""The embedded offline judge on captions written like FEC-Bench references (its real sentence model)."""

from __future__ import annotations

import pytest

from evaluation import autodq, tem, vcgpt
from evaluation.judges import facial_rules as rules
from evaluation.judges.base import STAGES, validate_answer


def reversed_segments(caption: str) -> str:
    """The caption with its temporal sentences in reverse order (the appearance sentence stays first)."""
    segs = rules.segments(caption)
    return " ".join([segs[0], *segs[1:][::-1]])


def tem_f1(judge, pred: str, ref: str) -> float:
    item = tem.judge_item(judge, "x", pred, ref, tem.TemConfig())
    assert item.status == "ok", item
    return item.f1


@pytest.mark.parametrize("name", ["man_smile", "woman_frown", "boy_talk"])
def test_caption_against_itself_scores_one(embedded_judge, captions, name: str) -> None:
    caption = captions[name]
    item = tem.judge_item(embedded_judge, name, caption, caption, tem.TemConfig())
    assert item.precision == item.recall == item.f1 == 1.0
    assert len(item.pred_events) >= 6
    dq = autodq.judge_item(embedded_judge, name, caption, caption, autodq.AutoDQConfig())
    assert dq.precision == dq.recall == 1.0
    scores = vcgpt.judge_item(embedded_judge, name, caption, caption, vcgpt.VcgptConfig()).scores
    assert scores == {"correctness": 5.0, "detail": 5.0, "context": 5.0, "temporal": 5.0}


@pytest.mark.parametrize("name", ["man_smile", "woman_frown", "boy_talk"])
def test_reordered_segments_score_clearly_lower(embedded_judge, captions, name: str) -> None:
    caption = captions[name]
    shuffled = reversed_segments(caption)
    assert sorted(rules.split_events(shuffled)) == sorted(rules.split_events(caption)), "same events"
    f1 = tem_f1(embedded_judge, shuffled, caption)
    assert f1 <= 0.6, f1
    # The events are all there, only their order changed: content metrics stay high, temporal drops.
    dq = autodq.judge_item(embedded_judge, name, shuffled, caption, autodq.AutoDQConfig())
    assert dq.precision == dq.recall == 1.0
    scores = vcgpt.judge_item(embedded_judge, name, shuffled, caption, vcgpt.VcgptConfig()).scores
    assert scores["detail"] == 5.0 and scores["temporal"] <= 2.5


@pytest.mark.parametrize(
    "name, other", [("man_smile", "woman_frown"), ("woman_frown", "boy_talk"), ("boy_talk", "man_smile")]
)
def test_another_items_caption_scores_low(embedded_judge, captions, name: str, other: str) -> None:
    f1_other = tem_f1(embedded_judge, captions[other], captions[name])
    f1_shuffled = tem_f1(embedded_judge, reversed_segments(captions[name]), captions[name])
    assert f1_other <= 0.25 and f1_other < f1_shuffled
    scores = vcgpt.judge_item(
        embedded_judge, name, captions[other], captions[name], vcgpt.VcgptConfig()
    ).scores
    assert max(scores["correctness"], scores["detail"], scores["temporal"]) <= 1.5


def test_events_follow_time_and_skip_appearance(embedded_judge, captions) -> None:
    events = embedded_judge.ask("tem_events", {"caption": captions["man_smile"]})["events"]
    text = " | ".join(events)
    assert "hair" not in text and "beard" not in text and "video" not in text.lower()
    assert not any(
        e.lower().startswith(("at the beginning", "towards the end", "as the video")) for e in events
    )
    order = ["straight ahead", "smiles", "raises his eyebrows", "starts speaking", "stops speaking", "tilts"]
    positions = [next(i for i, e in enumerate(events) if key in e) for key in order]
    assert positions == sorted(positions), events
    # A facial state is kept as an event.
    assert any("mouth closed" in e for e in events)


def test_actions_for_autodq_leave_states_out_and_respect_the_limit(embedded_judge, captions) -> None:
    caption = captions["man_smile"]
    actions = embedded_judge.ask("dq_events", {"caption": caption, "max_events": 100})["events"]
    assert "his eyebrows relaxed" not in actions and "he smiles" in actions
    few = embedded_judge.ask("dq_events", {"caption": caption, "max_events": 3})["events"]
    assert len(few) == 3 and few[0] == actions[0] and few[-1] == actions[-1]


@pytest.mark.parametrize(
    "pred, ref, label",
    [
        ("his mouth opens", "his mouth closes", "opposite"),
        ("he smiles", "he does not smile", "opposite"),
        ("she raises her eyebrows", "she lowers her eyebrows", "opposite"),
        ("he turns his head to the left", "he turns his head to the right", "opposite"),
        ("he starts speaking", "he stops speaking", "opposite"),
        ("her eyes widen", "her eyes narrow", "opposite"),
        ("his smile fades", "his smile deepens", "opposite"),
        ("the corners of his mouth turn up", "the corners of his mouth lift", "same"),
        ("he blinks", "she blinks her eyes", "same"),
        ("he tilts his head to the right", "the man tilts his head to the right", "same"),
        ("his mouth opens", "his eyes close", "unrelated"),
        ("he tilts his head to the right", "he tilts his head down", "unrelated"),
        ("he nods", "her lower lip trembles", "unrelated"),
    ],
)
def test_relations_of_facial_actions(embedded_judge, pred: str, ref: str, label: str) -> None:
    answer = embedded_judge.ask("tem_relations", {"pred_events": [pred], "ref_events": [ref]})
    assert answer == {"relations": [[label]]}


def test_entailment_labels(embedded_judge) -> None:
    caption = "At the beginning, he smiles. Then his mouth opens and he starts speaking."
    labels = embedded_judge.ask(
        "dq_entailment", {"caption": caption, "events": ["the man smiles", "his mouth closes", "he nods"]}
    )["labels"]
    assert labels == ["entailment", "contradiction", "neutral"]


def test_empty_or_eventless_captions_are_reported_not_scored(embedded_judge) -> None:
    item = tem.judge_item(
        embedded_judge, "e", "A man with short hair.", "He blinks. He smiles.", tem.TemConfig()
    )
    assert item.status == "empty_pred" and item.f1 is None
    result = tem.aggregate([item])
    assert result["n_scored"] == 1 and result["empty_pred_ids"] == ["e"] and result["tem"] == 0.0
    excluded = tem.aggregate([item], tem.TemConfig(empty="exclude"))
    assert excluded["n_scored"] == 0 and excluded["empty_pred_ids"] == ["e"] and excluded["tem"] is None


def test_without_is_not_split_as_with(embedded_judge) -> None:
    events = embedded_judge.ask("tem_events", {"caption": "He frowns, without any smile. Then he nods."})
    assert "out any smile" not in events["events"]
    assert events["events"][1] == "without any smile"


def test_answers_are_deterministic_and_valid(embedded_judge, captions) -> None:
    from evaluation.judges.embedded import EmbeddedJudge

    fresh = EmbeddedJudge()  # no memoised embeddings: same answers from scratch
    inputs = {
        "tem_events": {"caption": captions["boy_talk"]},
        "tem_relations": {
            "pred_events": rules.split_events(captions["boy_talk"]),
            "ref_events": rules.split_events(captions["man_smile"]),
        },
        "dq_events": {"caption": captions["woman_frown"], "max_events": 10},
        "dq_entailment": {"caption": captions["man_smile"], "events": ["he smiles", "he frowns"]},
        **{
            s: {"question": "q", "prediction": captions["boy_talk"], "reference": captions["man_smile"]}
            for s in STAGES
            if s.startswith("vcgpt_")
        },
    }
    for stage, stage_inputs in inputs.items():
        first = embedded_judge.ask(stage, stage_inputs)
        assert first == embedded_judge.ask(stage, stage_inputs) == fresh.ask(stage, stage_inputs), stage
        assert validate_answer(stage, stage_inputs, first) == first


def test_the_judge_says_it_is_an_approximation(embedded_judge) -> None:
    info = embedded_judge.describe()
    assert embedded_judge.approximate is True and info["approximate"] is True
    assert "approximat" in info["note"] and embedded_judge.name.startswith("embedded:")
    assert embedded_judge.stage_version("tem_events").startswith("rules")


# -- the facial-action lexicon (data files) ----------------------------------------------------------
@pytest.mark.parametrize(
    "pred, ref, label",
    [
        ("he gazes ahead", "he looks forward", "same"),
        ("his lips part a little", "his mouth opens slightly", "same"),
        ("she falls silent", "she stops speaking", "same"),
        ("he looks sad", "he looks happy", "opposite"),
        ("he frowns", "he smiles", "opposite"),
        ("without any smile", "a smile on his face", "opposite"),
        ("she frowns", "she furrows her brows", "same"),
        ("she bows her head", "she lowers her head", "same"),
        ("he falls silent", "he begins to talk", "opposite"),
        ("his smile fades", "he smiles", "opposite"),
        ("his smile fades", "he frowns", "unrelated"),
        ("he gazes ahead", "he looks down", "unrelated"),
        ("his lips part a little", "his mouth closes", "opposite"),
    ],
)
def test_lexicon_relations(embedded_judge, pred: str, ref: str, label: str) -> None:
    assert embedded_judge.relations([pred], [ref]) == [[label]]
    assert embedded_judge.relations([ref], [pred]) == [[label]], "relations are symmetric"


def test_without_any_smile_never_matches_a_smile(embedded_judge) -> None:
    caption = "He frowns slightly, without any smile."
    events = embedded_judge.events(caption)
    assert "out any smile" not in events and "without any smile" in events
    rel = embedded_judge.relations(events, ["a smile on his face"])
    assert all(row == ["opposite"] or row == ["unrelated"] for row in rel)
    labels = embedded_judge.entailment("A smile on his face.", events)
    assert "entailment" not in labels


def test_vague_mood_text_is_not_an_event_and_scores_zero(embedded_judge, captions) -> None:
    vague = "The man appears happy and friendly, and his mood is positive throughout."
    assert embedded_judge.events(vague) == []
    assert embedded_judge.events("He looks sad.") == ["He looks sad"]
    item = tem.judge_item(embedded_judge, "v", vague, captions["man_smile"], tem.TemConfig())
    assert item.status == "empty_pred" and tem.aggregate([item])["tem"] == 0.0
    dq = autodq.judge_item(embedded_judge, "v", vague, captions["man_smile"], autodq.AutoDQConfig())
    assert dq.precision == 1.0 and dq.recall == 0.0 and autodq.aggregate([dq])["autodq"] == 0.0


@pytest.mark.parametrize(
    "event, expected",
    [
        ("he gazes ahead", "he gaze forward"),
        ("Looking straight ahead", "gaze forward"),
        ("his lips part a little", "his mouth open slightly"),
        ("his mouth opens slightly", "his mouth open slightly"),
        ("she goes quiet", "she stop speak"),
        ("he raises his eyebrows", "he raise eyebrow"),
        ("the corners of his mouth turn upwards", "the corners of his mouth turn upwards"),
    ],
)
def test_canonical_wording(event: str, expected: str) -> None:
    assert rules.canonical(event) == expected


def test_lexicon_files_are_data_with_a_digest(tmp_path) -> None:
    import shutil

    from evaluation.judges import lexicon

    table = lexicon.load()
    assert {"valence", "speech"} <= table.strong and "front" in table.directions
    assert table.phrases["gaze forward"] and table.degree["slightly"]
    seen: dict[str, str] = {}
    for canonical, variants in table.phrases.items():
        assert canonical in variants, f"{canonical}: the canonical wording is one of its variants"
        for variant in variants:
            assert seen.setdefault(variant, canonical) == canonical, f"{variant!r} listed twice"
    for name in lexicon.FILES:
        assert (lexicon.LEXICON_DIR / name).is_file()
    copy = tmp_path / "lexicon"
    shutil.copytree(lexicon.LEXICON_DIR, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    assert lexicon.digest(str(copy)) == lexicon.digest()
    edited = tmp_path / "edited"  # (files are read once per folder)
    shutil.copytree(copy, edited)
    (edited / "synonyms.yaml").write_text((edited / "synonyms.yaml").read_text() + "\n# edited\n")
    assert lexicon.digest(str(edited)) != lexicon.digest()
    broken = tmp_path / "broken"
    shutil.copytree(copy, broken)
    (broken / "actions.yaml").write_text("dimensions:\n  open: {open: 2}\n")
    with pytest.raises(ValueError, match="dimensions.open"):
        lexicon.load(str(broken))


def test_the_rules_version_follows_the_lexicon(embedded_judge) -> None:
    from evaluation.judges import lexicon

    assert embedded_judge.stage_version("tem_relations").startswith(f"rules{rules.RULES_VERSION}-")
    assert rules.digest() == lexicon.digest()
