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
from evaluation.judges.base import JudgeError, JudgeFatalError
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
    an HTTP status to answer with, ``("status", code, message, headers)`` one with an OpenAI-style error
    body and headers, ``("sleep", s)`` answers after ``s`` seconds, ``("body", bytes)`` sends a raw
    body, and a string is the assistant's reply text. ``gate(body)`` may answer a request first: it
    returns ``(status, message)`` to refuse it or ``None`` to let it through; ``reply(body)`` may
    give the reply text instead of :func:`smart_reply`.
    """

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.gate: Any = None
        self.reply: Any = None
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
                    refused = fake.gate(body) if fake.gate else None
                    if refused is not None:
                        step = ("status", refused[0], refused[1], {})
                    if isinstance(step, int):
                        step = ("status", step, "scripted", {"Retry-After": "0"})
                    if isinstance(step, tuple) and step[0] == "status":
                        _, code, message, headers = step
                        error = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
                        self.send_response(code)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(error)))
                        for name, value in headers.items():
                            self.send_header(name, value)
                        self.end_headers()
                        self.wfile.write(error.encode())
                        return
                    if isinstance(step, tuple) and step[0] == "sleep":
                        time.sleep(step[1])
                        step = None
                    if isinstance(step, tuple) and step[0] == "body":
                        payload = step[1]
                    else:
                        text = step if isinstance(step, str) else None
                        text = text or (fake.reply(body) if fake.reply else None)
                        text = text or smart_reply(body["messages"])
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
    judge = judge_for(llm, json_mode=False)
    with pytest.raises(JudgeFatalError, match="HTTP 400"):
        judge.ask("vcgpt_detail", DETAIL_INPUTS)
    assert len(llm.requests) == 1
    with pytest.raises(JudgeFatalError, match="HTTP 400"):  # later calls fail the same way, offline
        judge.ask("vcgpt_detail", {**DETAIL_INPUTS, "prediction": "other"})
    assert len(llm.requests) == 1


REASONING_400 = {
    "max_tokens": "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead.",
    "temperature": "Unsupported value: 'temperature' does not support 0 with this model. "
    "Only the default (1) value is supported.",
}


def reasoning_gate(body: dict) -> tuple[int, str] | None:
    """Answer the way OpenAI's reasoning models do: 400 for max_tokens, then for temperature."""
    for key, message in REASONING_400.items():
        if key in body:
            return 400, message
    return None


def test_a_reasoning_model_400_switches_to_max_completion_tokens(llm: FakeLLM) -> None:
    llm.gate = reasoning_gate
    judge = judge_for(llm, model="my-reasoner", max_tokens=2000)
    assert judge.ask("vcgpt_detail", DETAIL_INPUTS) == {"score": 3.0}
    assert len(llm.requests) == 2
    assert "max_tokens" in llm.requests[0] and "temperature" in llm.requests[0]
    second = llm.requests[1]
    assert second["max_completion_tokens"] == 2000
    assert "max_tokens" not in second and "temperature" not in second
    assert judge.ask("vcgpt_context", DETAIL_INPUTS) == {"score": 3.0}
    assert len(llm.requests) == 3, "learnt once: later requests go right the first time"
    assert judge.describe()["reasoning"] is True and "temperature" not in judge.describe()


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "openai/gpt-5-mini"])
def test_reasoning_models_are_known_by_name(llm: FakeLLM, model: str) -> None:
    llm.gate = reasoning_gate
    judge = judge_for(llm, model=model)
    assert judge.ask("vcgpt_detail", DETAIL_INPUTS) == {"score": 3.0}
    assert len(llm.requests) == 1 and llm.requests[0]["max_completion_tokens"] == 1024


@pytest.mark.parametrize("model", ["gpt-4o", "Qwen/Qwen2.5-7B-Instruct", "solar-10b", "o"])
def test_other_models_get_max_tokens_and_temperature(llm: FakeLLM, model: str) -> None:
    judge = judge_for(llm, model=model)
    judge.ask("vcgpt_detail", DETAIL_INPUTS)
    assert llm.requests[0]["max_tokens"] == 1024 and llm.requests[0]["temperature"] == 0.0


def test_json_mode_is_sent_and_dropped_once_when_rejected(llm: FakeLLM) -> None:
    llm.gate = lambda body: (400, "response_format is not supported") if "response_format" in body else None
    judge = judge_for(llm)
    assert judge.ask("vcgpt_detail", DETAIL_INPUTS) == {"score": 3.0}
    assert llm.requests[0]["response_format"] == {"type": "json_object"}
    assert "response_format" not in llm.requests[1]
    judge.ask("vcgpt_context", DETAIL_INPUTS)
    assert len(llm.requests) == 3 and "response_format" not in llm.requests[2]


def test_429_waits_as_long_as_retry_after_says(llm: FakeLLM) -> None:
    llm.script = [("status", 429, "Rate limit reached", {"Retry-After": "0.4"}), '{"score": 5}']
    judge = judge_for(llm, backoff_s=0.001)
    start = time.perf_counter()
    assert judge.ask("vcgpt_detail", DETAIL_INPUTS) == {"score": 5.0}
    assert time.perf_counter() - start >= 0.4
    assert len(llm.requests) == 2 and judge.backend.retries == 1


def test_a_context_too_long_400_fails_only_that_request(llm: FakeLLM) -> None:
    message = "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens."
    llm.script = [("status", 400, message, {}), '{"score": 2}']
    judge = judge_for(llm, json_mode=False)
    with pytest.raises(JudgeError, match="maximum context length"):
        judge.ask("vcgpt_detail", DETAIL_INPUTS)
    assert judge.ask("vcgpt_detail", {**DETAIL_INPUTS, "prediction": "short"}) == {"score": 2.0}


def test_a_bad_key_is_one_clear_message(llm: FakeLLM) -> None:
    llm.gate = lambda body: (401, "Incorrect API key provided: sk-bad.")
    judge = judge_for(llm)
    with pytest.raises(JudgeFatalError) as info:
        judge.ask("vcgpt_detail", DETAIL_INPUTS)
    message = str(info.value)
    assert "\n" not in message and "HTTP 401" in message and "Incorrect API key" in message
    assert "API key" in message.split("(", 1)[1], "the message says what to check"
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
    headers = {k.lower(): v for k, v in llm.headers[0].items()}
    assert headers.get("authorization") == "Bearer sk-test-123"
    assert "sk-test-123" not in json.dumps(judge.describe()) + judge.name
    body = llm.requests[0]
    assert body["model"] == "fake-model" and body["temperature"] == 0.0


def test_no_endpoint_and_no_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from evaluation.judges.openai_compat import DEFAULT_BASE_URL, OpenAIChat

    for name in ("FACETRACK_JUDGE_BASE_URL", "OPENAI_BASE_URL", "FACETRACK_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="no API key.*OPENAI_BASE_URL"):
        build_judge(JudgeConfig(kind="openai", openai=OpenAIJudgeConfig(model="m")))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert OpenAIChat(OpenAIJudgeConfig(model="m")).base_url == DEFAULT_BASE_URL
    with pytest.raises(ValueError, match="model"):
        build_judge(JudgeConfig(kind="openai", openai=OpenAIJudgeConfig(base_url="http://127.0.0.1:9/v1")))


def auth(server: FakeLLM) -> str | None:
    return {k.lower(): v for k, v in server.headers[-1].items()}.get("authorization")


def test_openai_env_vars_reach_the_server(llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    from evaluation.judges.openai_compat import OpenAIChat

    monkeypatch.delenv("FACETRACK_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("FACETRACK_JUDGE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-env")
    chat = OpenAIChat(OpenAIJudgeConfig(model="m", backoff_s=0.01))
    messages = [{"role": "system", "content": "JSON only."}, {"role": "user", "content": "Score it."}]
    assert chat.complete(messages) == '{"score": 3}'
    assert auth(llm) == "Bearer sk-from-openai-env"
    monkeypatch.setenv("FACETRACK_JUDGE_API_KEY", "sk-ours")
    OpenAIChat(OpenAIJudgeConfig(model="m")).complete(messages)
    assert auth(llm) == "Bearer sk-ours", "our setting overrides OPENAI_API_KEY"
    assert len(llm.requests) == 2


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


def _tem_args(tmp_path: Path, server: FakeLLM, n: int = 6) -> tuple[list[str], Path]:
    refs = [
        {"id": str(i), "video": f"{i}.mp4", "caption": f"He blinks. He nods {i} times."} for i in range(n)
    ]
    preds = [{"id": str(i), "caption": f"He blinks, he nods {i} times."} for i in range(n)]
    out = tmp_path / "out"
    args = ["tem", "--pred", _write(tmp_path / "p.json", preds), "--ref", _write(tmp_path / "r.json", refs)]
    args += ["--out", str(out), "--judge-url", server.url, "--judge-model", "fake-model", "--no-progress"]
    return args + ["judge.openai.backoff_s=0.01"], out


def test_a_rejected_key_stops_the_run_with_one_line(
    llm: FakeLLM, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from facetrack import cli

    llm.gate = lambda body: (401, "Incorrect API key provided.")
    args, out = _tem_args(tmp_path, llm)
    assert cli.main(args + ["concurrency=2"]) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "HTTP 401" in err[0] and "Incorrect API key" in err[0]
    assert len(llm.requests) <= 2, "at most the requests already in flight, not one per item"
    assert not (out / "report.json").exists()


def test_garbage_answers_are_failed_items(llm: FakeLLM, tmp_path: Path) -> None:
    from facetrack import cli

    llm.reply = lambda body: "lorem ipsum, no JSON" if "nods 0 times" in json.dumps(body) else None
    args, out = _tem_args(tmp_path, llm, n=3)
    assert cli.main(args) == 0
    tem = json.loads((out / "report.json").read_text())["metrics"]["tem"]
    assert tem["failed_ids"] == ["0"] and tem["n_failed"] == 1
    assert tem["n_items"] == 3 and tem["n_scored"] == 3, "a failed item counts as 0 by default"
    assert tem["precision"] == pytest.approx(2 / 3)


def test_a_users_prompt_set_reaches_the_judge_and_is_named_in_the_report(
    llm: FakeLLM, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from evaluation.prompts import load_prompt_set
    from facetrack import cli

    shipped = load_prompt_set()
    stages = {s: dict(shipped.stages[s]) for s in ("tem_events", "tem_relations")}
    stages["tem_events"]["system"] = "You are judge Zeta. JSON only."
    path = tmp_path / "zeta.yaml"
    path.write_text(yaml.safe_dump({"name": "zeta", "common": dict(shipped.common), "stages": stages}))
    args, out = _tem_args(tmp_path, llm, n=2)
    assert cli.main(args + ["--prompts", str(path)]) == 0
    assert any(r["messages"][0]["content"] == "You are judge Zeta. JSON only." for r in llm.requests)
    report = json.loads((out / "report.json").read_text())
    expected = load_prompt_set(str(path))
    assert report["prompts"]["name"] == "zeta" and report["prompts"]["hash"] == expected.hash
    assert expected.hash != shipped.hash
    assert f"`zeta` (sha256 `{expected.hash}`, from `{path}`)" in (out / "report.md").read_text()
    # The set lacks the AutoDQ stages: asking for autodq stops before any request, naming them.
    sent = len(llm.requests)
    assert cli.main(args + ["--prompts", str(path), "--metrics", "tem,autodq"]) == 2
    assert "no prompt for dq_events, dq_entailment (needed by autodq)" in capsys.readouterr().err
    assert len(llm.requests) == sent
