"""The summary's failure categories keep the cause and drop names of files, URIs and exception classes."""

from __future__ import annotations

import pytest

from jobs.caption_report import failure_reason


@pytest.mark.parametrize(
    ("error", "video", "reason"),
    [
        (
            "track: s3://b/x.mp4: not a readable video (Invalid data found)",
            "s3://b/x.mp4",
            "track: not a readable video",
        ),
        ("track: StorageError: s3://b/x.mp4: no such key", "", "track: no such key"),
        (
            "track: StorageError: bucket 'b' does not exist (s3://b/x.mp4)",
            "",
            "track: bucket 'b' does not exist",
        ),
        (
            "track: StorageError: /v/x.mp4: too many levels of symbolic links (a symlink loop)",
            "",
            "track: too many levels of symbolic links",
        ),
        (
            "track: /v/a b.mp4: a parent of it is not a directory",
            "/v/a b.mp4",
            "track: a parent of it is not a directory",
        ),
        (
            "input: bad manifest record m.jsonl:3: needs a 'video' string",
            "",
            "input: bad manifest record: needs a 'video' string",
        ),
        (
            "input: bad manifest record m.jsonl:4: not valid JSON (Expecting value)",
            "",
            "input: bad manifest record: not valid JSON",
        ),
        ("caption: TimeoutError", "", "caption: TimeoutError"),
    ],
)
def test_failure_reasons_keep_their_cause(error, video, reason):
    assert failure_reason(error, video) == reason


def test_different_causes_stay_different_categories():
    errors = [
        "track: StorageError: s3://b/1.mp4: no such key",
        "track: StorageError: bucket 'b' does not exist (s3://b/2.mp4)",
        "track: StorageError: /v/3.mp4: too many levels of symbolic links (a symlink loop)",
        "track: StorageError: s3://b/4.mp4: no such key",
    ]
    assert len({failure_reason(e) for e in errors}) == 3


def test_progress_prints_lines_unless_ray_draws_its_bars(caplog):
    from jobs.caption_report import Progress

    caplog.set_level("INFO", logger="facetrack.jobs.caption")
    for lines, expected in ((True, 1), (False, 0)):
        caplog.clear()
        progress = Progress(total=2, every=3600, lines=lines)
        progress.update(failed=False)
        progress.update(failed=True)  # the last one always reports, when lines are on
        reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
        assert len(reports) == expected
        assert progress.done == 2 and progress.failed == 1
        if lines:
            assert reports[0].startswith("progress: 2/2 done, 1 failed")


def test_the_job_samples_the_frames_its_checkpoint_was_made_for(tiny_checkpoint, tmp_path):
    from jobs.caption import build_parser, config_from_args

    def frames(*extra: str, config: str | None = None) -> int:
        argv = ["in/", "--out", str(tmp_path / "out"), "--model", str(tiny_checkpoint), *extra]
        if config:
            argv += ["--config", config]
        return config_from_args(build_parser().parse_intermixed_args(argv)).track.video.num_frames

    assert frames() == 8  # the tiny checkpoint is made with --frames 8 (the default would be 16)
    assert frames("track.video.num_frames=4") == 4  # what the user asks for wins
    settings = tmp_path / "job.yaml"
    settings.write_text("track:\n  video:\n    num_frames: 6\n")
    assert frames(config=str(settings)) == 6
