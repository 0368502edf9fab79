"""The OpenAI-compatible judge against a local HTTP server: retries, timeouts, re-asks, limits."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from evaluation.judges import JudgeConfig, build_judge
from evaluation.judges.base import JudgeError
from evaluation.judges.openai_compat import OpenAIJudgeConfig

DETAIL_INPUTS = {"question": "Describe the face.", "prediction": "He smiles.", "reference": "He smiles."}


def _numbered(block: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^\d+\.\s*(.+)$", block, re.MULTILINE)]


def smart_reply(messages: list[dict[str, str]]) -> str:
    """A stand-in LLM: events are the caption's sentences and clauses; equal texts are "same"."""
    user = messages[1]["content"]
    if "List the facial events" in user:
        caption = user.split("Description:\n", 1)[1].split("\n\nList the facial events", 1)[0]
        events = [s.strip().lower() for s in re.split(r"[.,;]", caption) if s.strip()]
        return json.dumps({"events": events})
    if "Predicted events" in user:
        pred = _numbered(user.split("Reference events", 1)[0])
        ref = _numbered(user.split("Reference events", 1)[1].split("For every pair", 1)[0])
        pairs = [
            {"pred": i + 1, "ref": j + 1, "relation": "same"}
            for i, p in enumerate(pred)
            for j, r in enumerate(ref)
            if p == r
        ]
        return "Here you go:\n```json\n" + json.dumps({"pairs": pairs}) + "\n```"
    return json.dumps({"score": 3})


class FakeLLM:
    """A threaded HTTP server speaking the chat-completions protocol, driven by a script.

    Each request takes the next step of ``script`` (then falls back to :func:`smart_reply`): an int is
    an HTTP status to answer with, ``("sleep", s)`` answers after ``s`` seconds, ``("body", bytes)``
    sends a raw body, and a string is the assistant's reply text.
    """

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                    step = fake.script.pop(0) if fake.script else None
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    time.sleep(fake.delay)
                    if isinstance(step, int):
                        self.send_response(step)
                        self.send_header("Retry-After", "0")
                        self.end_headers()
                        self.wfile.write(b'{"error": "scripted"}')
                        return
                    if isinstance(step, tuple) and step[0] == "sleep":
                        time.sleep(step[1])
                        step = None
                    if isinstance(step, tuple) and step[0] == "body":
                        payload = step[1]
                    else:
                        text = step if isinstance(step, str) else smart_reply(body["messages"])
                        payload = json.dumps(
                            {"choices": [{"message": {"role": "assistant", "content": text}}]}
                        )
                        payload = payload.encode()
                    try:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM()
    yield server
    server.close()


def judge_for(server: FakeLLM, **overrides: Any):
    settings = {
        "base_url": server.url,
        "model": "fake-model",
        "backoff_s": 0.01,
        "timeout_s": 5.0,
        **overrides,
    }
    retries = settings.pop("max_parse_retries", 2)
    return build_judge(
        JudgeConfig(kind="openai", openai=OpenAIJudgeConfig(**settings), max_parse_retries=retries)
    )


def test_429_and_500_are_retried_until_an_answer(llm: FakeLLM) -> None:
    llm.script = [429, 500, 502, '{"score": 4}']
    judge = judge_for(llm)
    assert judge.ask("vcgpt_detail", DETAIL_INPUTS) == {"score": 4.0}
    assert len(llm.requests) == 4
    assert judge.backend.retries == 3


def test_a_timeout_is_retried(llm: FakeLLM) -> None:
    llm.script = [("sleep", 1.5), '{"score": 2}']
    judge = judge_for(llm, timeout_s=0.3)
    start = time.perf_counter()
    assert judge.ask("vcgpt_detail", DETAIL_INPUTS) == {"score": 2.0}
    assert time.perf_counter() - start < 1.4, "the client should not wait for the slow answer"
    assert len(llm.requests) == 2


def test_a_malformed_response_body_is_retried(llm: FakeLLM) -> None:
    llm.script = [("body", b"<html>bad gateway</html>"), ("body", b'{"choices": []}'), '{"score": 1}']
    judge = judge_for(llm)
    assert judge.ask("vcgpt_context", DETAIL_INPUTS) == {"score": 1.0}
    assert len(llm.requests) == 3


def test_malformed_json_is_asked_again_with_the_reason(llm: FakeLLM) -> None:
    llm.script = ["I would say it is quite good.", '{"score": 4}']
    judge = judge_for(llm)
    assert judge.ask("vcgpt_correctness", DETAIL_INPUTS) == {"score": 4.0}
    assert len(llm.requests) == 2
    second = llm.requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": "I would say it is quite good."}
    assert second[-1]["role"] == "user" and "not a JSON object" in second[-1]["content"]


def test_out_of_range_scores_are_asked_again(llm: FakeLLM) -> None:
    llm.script = ['{"score": 7}', '{"score": 5}']
    judge = judge_for(llm)
    assert judge.ask("vcgpt_temporal", DETAIL_INPUTS) == {"score": 5.0}
    assert "outside 0..5" in llm.requests[1]["messages"][-1]["content"]


def test_bad_event_indices_are_asked_again(llm: FakeLLM) -> None:
    inputs = {"pred_events": ["he smiles"], "ref_events": ["he smiles", "he blinks"]}
    llm.script = [
        '{"pairs": [{"pred": 2, "ref": 1, "relation": "same"}]}',
        '{"pairs": [{"pred": 1, "ref": 1, "relation": "same"}]}',
    ]
    judge = judge_for(llm)
    assert judge.ask("tem_relations", inputs) == {"relations": [["same", "unrelated"]]}
    assert "outside 1..1" in llm.requests[1]["messages"][-1]["content"]


def test_unusable_answers_fail_after_the_retries(llm: FakeLLM) -> None:
    llm.script = ['{"score": 9}'] * 5
    judge = judge_for(llm, max_parse_retries=2)
    with pytest.raises(JudgeError, match="after 3 attempt"):
        judge.ask("vcgpt_detail", DETAIL_INPUTS)
    assert len(llm.requests) == 3


def test_server_errors_fail_after_max_retries(llm: FakeLLM) -> None:
    llm.script = [503] * 10
    judge = judge_for(llm, max_retries=2)
    with pytest.raises(JudgeError, match="HTTP 503"):
        judge.ask("vcgpt_detail", DETAIL_INPUTS)
    assert len(llm.requests) == 3


def test_client_errors_are_not_retried(llm: FakeLLM) -> None:
    llm.script = [400, '{"score": 1}']
    judge = judge_for(llm)
    with pytest.raises(JudgeError, match="HTTP 400"):
        judge.ask("vcgpt_detail", DETAIL_INPUTS)
    assert len(llm.requests) == 1


def test_concurrency_is_bounded(llm: FakeLLM) -> None:
    llm.delay = 0.15
    judge = judge_for(llm, max_concurrency=2)
    threads = [
        threading.Thread(target=judge.ask, args=("vcgpt_detail", {**DETAIL_INPUTS, "prediction": str(i)}))
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(llm.requests) == 6
    assert llm.max_in_flight == 2


def test_api_key_comes_from_the_environment(llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACETRACK_TEST_JUDGE_KEY", "sk-test-123")
    judge = judge_for(llm, api_key_env="FACETRACK_TEST_JUDGE_KEY")
    judge.ask("vcgpt_detail", DETAIL_INPUTS)
    assert llm.headers[0].get("Authorization") == "Bearer sk-test-123"
    assert "sk-test-123" not in json.dumps(judge.describe()) + judge.name
    body = llm.requests[0]
    assert body["model"] == "fake-model" and body["temperature"] == 0.0


def test_missing_endpoint_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACETRACK_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="base_url"):
        build_judge(JudgeConfig(kind="openai", openai=OpenAIJudgeConfig(model="m")))


def test_openai_base_url_is_honoured_and_our_settings_override_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from evaluation.judges.openai_compat import OpenAIChat

    monkeypatch.delenv("FACETRACK_JUDGE_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    assert OpenAIChat(OpenAIJudgeConfig(model="m")).url == "http://127.0.0.1:9/v1/chat/completions"
    monkeypatch.setenv("FACETRACK_JUDGE_BASE_URL", "http://127.0.0.1:8/v1")
    assert OpenAIChat(OpenAIJudgeConfig(model="m")).base_url == "http://127.0.0.1:8/v1"
    setting = OpenAIJudgeConfig(model="m", base_url="http://127.0.0.1:7/v1")
    assert OpenAIChat(setting).base_url == "http://127.0.0.1:7/v1"


def test_an_unreachable_endpoint_fails_cleanly() -> None:
    judge = build_judge(
        JudgeConfig(
            kind="openai",
            openai=OpenAIJudgeConfig(
                base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_s=0.01
            ),
        )
    )
    with pytest.raises(JudgeError, match="connection failed"):
        judge.ask("vcgpt_detail", DETAIL_INPUTS)


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text(json.dumps(rows))
    return str(path)


def test_facetrack_tem_with_an_openai_compatible_url(llm: FakeLLM, tmp_path: Path) -> None:
    from facetrack import cli

    refs = [
        {"id": "1", "video": "a.mp4", "caption": "He blinks. His mouth opens, he smiles. He looks down."},
        {"id": "2", "video": "b.mp4", "caption": "She frowns. She shakes her head."},
        {"id": "3", "video": "c.mp4", "caption": "He nods."},
    ]
    preds = [
        {"id": "1", "caption": "He smiles. He blinks, he looks down."},
        {"id": "2", "caption": "She frowns, she shakes her head."},
    ]
    out = tmp_path / "out"
    args = ["tem", "--pred", _write(tmp_path / "p.json", preds), "--ref", _write(tmp_path / "r.json", refs)]
    args += ["--out", str(out), "--judge-url", llm.url, "--judge-model", "fake-model", "--no-progress"]
    assert cli.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["judge"]["name"].startswith("openai:fake-model@http://127.0.0.1")
    assert report["judge"]["approximate"] is False
    # item 1: pred [he smiles, he blinks, he looks down] vs ref [he blinks, his mouth opens, he smiles,
    # he looks down]: LCS 2 (blinks, looks down) -> P 2/3, R 2/4; item 2: identical events -> 1, 1.
    tem = report["metrics"]["tem"]
    assert tem["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert tem["recall"] == pytest.approx((2 / 4 + 1) / 2)
    assert report["counts"]["missing_ids"] == ["3"]
    first_calls = len(llm.requests)
    assert report["judge_calls"]["calls"] == first_calls == 6
    # A second run is served from the cache: no request reaches the server.
    assert cli.main(args) == 0
    again = json.loads((out / "report.json").read_text())
    assert len(llm.requests) == first_calls
    assert again["judge_calls"]["calls"] == 0 and again["judge_calls"]["hits"] == 6
    assert again["metrics"]["tem"] == tem
