"""Rows per character (``track.select.mode=all``): which characters an output already holds, and when a
video has all of its rows.

A character row has the id ``<video id>#<n>`` (:func:`facetrack.faces.stage.character_id`) and its
``main_track`` says ``character`` (n) and ``of`` (how many characters the video has).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from facetrack.faces.stage import character_id

COMPLETE = frozenset({"*"})
"""In :func:`characters_written`: every character of the video is written."""


def characters_written(rows: list[dict[str, Any]]) -> dict[str, frozenset[str]]:
    """Per video id, the character rows (``select.mode=all``) ``rows`` hold: :data:`COMPLETE` when all.

    A character row has the id ``<video id>#<n>`` and its ``main_track`` says ``character`` (n) and ``of``
    (how many the video has). A video whose rows are all there is complete; one with only some (a run
    stopped between them) is tracked again and its written characters are not made twice.
    """
    found: dict[str, set[int]] = {}
    total: dict[str, int] = {}
    for row in rows:
        track = row.get("main_track") or {}
        n, of = track.get("character"), track.get("of")
        suffix = f"#{n}"
        rid = str(row["id"])
        if not isinstance(n, int) or not isinstance(of, int) or not rid.endswith(suffix):
            continue
        video = rid[: -len(suffix)]
        found.setdefault(video, set()).add(n)
        total[video] = of
    return {
        video: COMPLETE if len(ns) >= total[video] else frozenset(character_id(video, n) for n in ns)
        for video, ns in found.items()
    }


class VideoRows:
    """Counts the character rows of each video as they arrive; says when a video has all of its rows."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.failed: set[str] = set()

    def row(self, row: dict[str, Any], skips: dict[str, frozenset[str]]) -> list[bool]:
        """``[failed]`` when ``row`` completes its video, else ``[]``."""
        track = row.get("main_track") or {}
        n, of, rid = track.get("character"), track.get("of"), str(row["id"])
        if not isinstance(n, int) or not isinstance(of, int) or not rid.endswith(f"#{n}"):
            return [bool(row["error"])]  # the video's only row: no face, or it failed before selection
        video = rid[: -len(f"#{n}")]
        self.seen[video] += 1
        if row["error"]:
            self.failed.add(video)
        if self.seen[video] < of - len(skips.get(video, ())):
            return []
        return [video in self.failed]
