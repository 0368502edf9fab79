"""Joining a Ray cluster or starting the embedded one for a job, with quiet defaults.

At the default log level a job prints its own start line, its progress and its summary; Ray's start-up
notices and Ray Data's execution plans stay in Ray's log files. On a terminal Ray Data draws its progress
bars; elsewhere (a log file, CI, ``ray job submit``) the job's own periodic progress line stands in for
them. ``FACETRACK_VERBOSE=1`` brings Ray's own messages back.
"""

from __future__ import annotations

import logging
import os
import sys

import ray

_VERBOSE_ENV = "FACETRACK_VERBOSE"
_AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def verbose() -> bool:
    """Whether the user asked for Ray's own messages (``FACETRACK_VERBOSE=1``)."""
    return os.environ.get(_VERBOSE_ENV, "").lower() in ("1", "true", "yes")


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), or start an embedded Ray on this machine.

    The embedded Ray keeps Ray's default token authentication, without Ray's notice of it at every
    start. Nothing happens when Ray is already initialised.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    level = logging.INFO if verbose() else logging.WARNING
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=level)
        else:
            if not verbose():  # the notice that token auth is on, printed at every embedded start
                logging.getLogger(_AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=level)
    quiet_data()


def quiet_data() -> None:
    """Ray Data on the driver: its bars on a terminal; no execution plans, nor progress logged as text
    when the output is not a terminal (the job's own progress line stands in for it)."""
    if verbose():
        return
    from ray.data import DataContext

    context = DataContext.get_current()
    context.print_on_execution_start = False
    context.enable_progress_bars = sys.stdout.isatty()
    # Without bars Ray Data says once that they are off; the job's own progress line is there instead.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
