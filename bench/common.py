"""What the benchmarks share: a peak-memory sampler and the JSON report writer."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any


class PeakMemory:
    """Samples resident memory (bytes) in a thread while the ``with`` block runs.

    Without ``title_prefix`` it watches this process (``baseline`` is its memory on entry); with one it
    watches every process whose command line starts with it (Ray workers: ``"ray::"``). ``peaks`` holds
    each process's maximum by pid; ``peak`` is the largest.
    """

    def __init__(self, interval: float = 0.01, title_prefix: str | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._own = psutil.Process()
        self.interval = interval
        self.title_prefix = title_prefix
        self.peaks: dict[int, int] = {}
        self.baseline = self._own.memory_info().rss if title_prefix is None else 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=self.baseline)

    def _processes(self) -> list[Any]:
        if self.title_prefix is None:
            return [self._own]
        found = []
        for proc in self._psutil.process_iter(["cmdline"]):
            if " ".join(proc.info["cmdline"] or []).startswith(self.title_prefix):
                found.append(proc)
        return found

    def sample(self) -> None:
        for proc in self._processes():
            try:
                rss = proc.memory_info().rss
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


def write_report(report: Any, path: str | Path) -> None:
    """Write a benchmark's numbers as indented JSON (creating the folder) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
