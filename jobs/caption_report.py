"""Reporting of the caption job: failure categories, the periodic progress line, the printed summary.

Ray-free, so the job's driver loop and its tests share it without starting Ray.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from typing import Any

from facetrack import storage

log = logging.getLogger("facetrack.jobs.caption")


_PERMANENT = re.compile(
    r"^input: |not a readable video|empty file|no video stream|cannot decode the first frame|"
    r"truncated or corrupt video|bad manifest record|caption: cannot read frames"
)


def is_transient(error: str) -> bool:
    """Whether an error row's cause may pass (storage, timeouts, a worker that died, out of memory), rather
    than belong to the input (not a video, an empty file, no video stream, a bad manifest record)."""
    return not _PERMANENT.search(error)


def should_retry(error: str, retry: str) -> bool:
    """Whether a rerun with ``retry`` (``transient``, ``all`` or ``none``) does an error row again."""
    if retry not in ("transient", "all", "none"):
        raise ValueError(f"retry must be 'transient', 'all' or 'none', not {retry!r}")
    return retry == "all" or (retry == "transient" and is_transient(error))


def output_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What an output holds in total (every run so far): rows, done, failed and failed by reason."""
    reasons: Counter[str] = Counter()
    for row in rows:
        if row.get("error"):
            reasons[failure_reason(str(row["error"]), str(row.get("video") or ""))] += 1
    failed = sum(reasons.values())
    return {
        "rows": len(rows),
        "done": len(rows) - failed,
        "failed": failed,
        "failed_by_reason": dict(sorted(reasons.items())),
    }


_EXCEPTION_NAME = re.compile(r"\b[A-Z]\w*(?:Error|Exception|Exit)\b:? ?")
_LOCATION = re.compile(r"(?:\S+://\S*?|/\S*?|[\w.-]+\.\w+:\d+)(?=: |\s\(|$)")


def failure_reason(error: str, video: str = "") -> str:
    """A short failure category for the summary: the stage and the cause, without names of files or details.

    ``"track: s3://b/x.mp4: not a readable video (Invalid data ...)"`` -> ``"track: not a readable video"``;
    ``"track: StorageError: /v/a.mp4: too many levels of symbolic links (a symlink loop)"`` ->
    ``"track: too many levels of symbolic links"``; ``"input: bad manifest record m.jsonl:3: needs a 'video'
    string"`` -> ``"input: bad manifest record: needs a 'video' string"``.
    """
    stage, _, message = error.partition(": ")
    if video:
        message = message.replace(video, "")
    names = _EXCEPTION_NAME.findall(message)
    message = _EXCEPTION_NAME.sub("", message)  # the cause, not the class that carried it
    message = _LOCATION.sub("", message)  # URIs, paths, file:line
    message = message.split(" (", 1)[0]  # details in brackets
    message = re.sub(r"\s+", " ", message)
    message = re.sub(r"\s*:\s*(:\s*)*", ": ", message).strip(" :")  # separators left by removed names
    message = message[:60].rstrip(" :") or (names[-1].strip(" :") if names else "")
    return f"{stage}: {message}" if message else stage


class Progress:
    """A periodic one-line report: done / failed / rate / ETA.

    ``lines=False`` (Ray Data draws its bars on a terminal) counts without printing.
    """

    def __init__(self, total: int, every: float, lines: bool = True) -> None:
        self.total, self.every, self.lines = total, every, lines
        self.done = self.failed = 0
        self.start = self._last = time.monotonic()

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += int(failed)
        now = time.monotonic()
        if self.lines and (now - self._last >= self.every or self.done == self.total):
            self._last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info(
                "progress: %d/%d done, %d failed, %.2f videos/s, ETA %s",
                self.done,
                self.total,
                self.failed,
                rate,
                _fmt_seconds(eta),
            )


def _fmt_seconds(s: float) -> str:
    if s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def print_summary(summary: dict[str, Any]) -> None:
    c = summary["counts"]
    out = summary["out"]
    done = f"{c['done']} videos" if "videos" not in c else f"{c['done']} characters of {c['videos']} videos"
    print(
        f"\ncaptioned {done}, {c['failed']} failed, {c['skipped_already_done']} already done "
        f"in {summary['seconds']:.1f} s ({summary['videos_per_second'] or 0:.2f} videos/s)"
    )
    for reason, n in c["failed_by_reason"].items():
        print(f"  failed: {n} x {reason}")
    if summary.get("example"):
        print(f"example:  [{summary['example']['id']}] {summary['example']['caption'][:160]!r}")
    if _random_weights(summary["model"]):
        print("note:     this checkpoint has random weights (facetrack tiny-model): its captions are noise")
    print(f"rows:     {storage.join(out, 'rows')}/")
    print(f"summary:  {storage.join(out, 'summary.json')}")
    if summary["config"].get("sheets"):
        print(f"sheets:   {storage.join(out, 'sheets')}/  (one contact sheet per video)")


def _random_weights(model: str) -> bool:
    """Whether ``model`` is a local checkpoint written by ``facetrack tiny-model`` (random weights)."""
    config = os.path.join(os.path.expanduser(model), "config.json")
    try:
        with open(config, encoding="utf-8") as f:
            return "random" in str(json.load(f).get("facetrack_name", ""))
    except (OSError, ValueError):
        return False
