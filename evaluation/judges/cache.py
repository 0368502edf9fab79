"""Judge answers cached on disk or in object storage, so a re-run makes no judge call and a crash resumes.

An answer is keyed by (judge name with its model and sampling parameters, stage version, stage, hash of
the inputs); an LLM judge's stage version is its prompt's version plus a digest of that prompt's text (its
part of the prompt set's hash), so a changed prompt is asked again and unchanged stages are reused.

The cache is a folder (local path or ``s3://`` prefix) of JSON-lines segments. Each writer appends to a
segment of its own: locally one file written line by line and flushed after every answer (a crash loses
at most a half-written line, which is skipped on load); in object storage, where objects cannot be
appended to, a new segment object every ``flush_every`` answers and on :meth:`JudgeCache.flush`. Several
processes can share one cache.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evaluation.judges.base import Judge, JudgeError

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def cache_key(judge_name: str, stage_version: str, stage: str, inputs: Mapping[str, Any]) -> str:
    """The cache key of one request (hex sha256)."""
    input_hash = hashlib.sha256(_canonical(dict(inputs)).encode()).hexdigest()
    return hashlib.sha256(_canonical([judge_name, stage_version, stage, input_hash]).encode()).hexdigest()


def _is_s3(uri: str) -> bool:
    from facetrack import storage

    return storage.is_remote(uri)


class JudgeCache:
    """A key -> answer store over JSON-lines segments under ``uri`` (local folder or ``s3://`` prefix).

    Args:
        uri: the cache folder; created if missing.
        flush_every: answers buffered before a new segment is written (object storage only; local
            segments are flushed after every answer).
    """

    def __init__(self, uri: str, flush_every: int = 64) -> None:
        self.uri = uri.rstrip("/")
        self.flush_every = max(1, flush_every)
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._writer = uuid.uuid4().hex[:12]
        self._pending: list[str] = []
        self._seq = 0
        self._file = None
        self.skipped_lines = 0
        self._load()

    def __len__(self) -> int:
        return len(self._entries)

    def _segment_texts(self) -> list[str]:
        if _is_s3(self.uri):
            from facetrack import storage

            uris = list(storage.list_uris(self.uri + "/", suffixes=[SEGMENT_SUFFIX]))
            return [storage.read_text(u) for u in uris]
        folder = Path(self.uri)
        folder.mkdir(parents=True, exist_ok=True)
        return [p.read_text(encoding="utf-8") for p in sorted(folder.glob(f"*{SEGMENT_SUFFIX}"))]

    def _load(self) -> None:
        for text in self._segment_texts():
            for line in text.splitlines():
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self._entries[entry["k"]] = entry["a"]
                except (ValueError, KeyError, TypeError):
                    self.skipped_lines += 1
        if self.skipped_lines:
            log.warning("judge cache %s: skipped %d unreadable line(s)", self.uri, self.skipped_lines)

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached answer (a copy) or ``None``."""
        with self._lock:
            value = self._entries.get(key)
        return copy.deepcopy(value) if value is not None else None

    def put(self, key: str, answer: Mapping[str, Any], **meta: Any) -> None:
        """Store an answer; ``meta`` (stage, judge, ...) is written next to it for people reading the file."""
        line = json.dumps({"k": key, **meta, "a": answer}, ensure_ascii=False) + "\n"
        with self._lock:
            self._entries[key] = copy.deepcopy(dict(answer))
            if _is_s3(self.uri):
                self._pending.append(line)
                if len(self._pending) >= self.flush_every:
                    self._flush_locked()
            else:
                if self._file is None:
                    path = Path(self.uri) / f"segment-{self._writer}{SEGMENT_SUFFIX}"
                    self._file = path.open("a", encoding="utf-8")
                self._file.write(line)
                self._file.flush()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        from facetrack import storage

        self._seq += 1
        name = f"segment-{self._writer}-{self._seq:06d}{SEGMENT_SUFFIX}"
        storage.write_text(f"{self.uri}/{name}", "".join(self._pending))
        self._pending = []

    def flush(self) -> None:
        """Write buffered answers out now (a no-op for local caches, which never buffer)."""
        with self._lock:
            if _is_s3(self.uri):
                self._flush_locked()
            elif self._file is not None:
                self._file.flush()

    def close(self) -> None:
        """Flush and release the segment file."""
        self.flush()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


SAMPLING_KEYS = (
    "model",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "max_new_tokens",
    "do_sample",
    "top_p",
    "seed",
)
"""What of a judge's ``describe()`` changes its answers, so goes into the cache key with its name."""


def judge_identity(judge: Judge) -> str:
    """The judge's name plus its model and sampling parameters, as the cache keys see it."""
    describe = getattr(judge, "describe", None)
    info = describe() if callable(describe) else {}
    params = {k: info[k] for k in SAMPLING_KEYS if k in info}
    return judge.name + (_canonical(params) if params else "")


class CachedJudge:
    """A judge in front of a cache: answers found in the cache cost no call; counts calls and hits.

    Failed calls are not cached, so a re-run tries them again. ``stats`` maps each stage to its
    ``calls`` (made to the judge), ``hits`` (served from the cache) and ``errors``.
    """

    def __init__(self, judge: Judge, cache: JudgeCache | None) -> None:
        self.judge = judge
        self.cache = cache
        self.name = judge.name
        self.key_name = judge_identity(judge)
        self.approximate = judge.approximate
        self.max_concurrency = judge.max_concurrency
        self.stats: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def stage_version(self, stage: str) -> str:
        return self.judge.stage_version(stage)

    def _count(self, stage: str, what: str) -> None:
        with self._lock:
            counts = self.stats.setdefault(stage, {"calls": 0, "hits": 0, "errors": 0})
            counts[what] += 1

    def ask(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        key = cache_key(self.key_name, self.judge.stage_version(stage), stage, inputs)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                self._count(stage, "hits")
                return cached
        self._count(stage, "calls")
        try:
            answer = self.judge.ask(stage, inputs)
        except JudgeError:
            self._count(stage, "errors")
            raise
        if self.cache is not None:
            self.cache.put(key, answer, stage=stage, judge=self.name)
        return answer

    def totals(self) -> dict[str, int]:
        """Calls, hits and errors summed over stages."""
        out = {"calls": 0, "hits": 0, "errors": 0}
        with self._lock:
            for counts in self.stats.values():
                for k in out:
                    out[k] += counts[k]
        return out

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.judge, "describe", None)
        return describe() if callable(describe) else {"name": self.name, "approximate": self.approximate}
