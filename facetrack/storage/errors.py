"""Storage errors, and how a library's exception becomes one: missing, denied, transient or other.

Every error names the URI. Client libraries raise their own types (botocore's, or the ``OSError`` family
that fsspec filesystems translate to); :func:`translate` maps them to the three kinds callers act on, and
:func:`is_transient` says whether the same call may succeed later (throttling, 5xx, lost connections,
timeouts), which is what the retry budget in :mod:`facetrack.storage.retry` spends itself on.
"""

from __future__ import annotations

import errno
import os

CREDENTIALS_HINT = (
    "S3 credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN), "
    "AWS_PROFILE with the shared credentials file, or an instance/pod role; "
    "the endpoint from AWS_ENDPOINT_URL"
)
# Error codes and HTTP statuses worth another try: throttling and transient server trouble.
_RETRY_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidSecurity",
    }
)
_TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.EAGAIN}
)


class StorageError(Exception):
    """A storage operation failed; the message names the URI."""


class NotFoundError(StorageError, FileNotFoundError):
    """The file, object, folder or bucket does not exist."""


class AccessDeniedError(StorageError, PermissionError):
    """Permission denied, or credentials missing or rejected."""


class TransientStorageError(StorageError):
    """A call failed for a reason that may pass (an outage, throttling) and the retry budget ran out."""


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _client_error(exc: BaseException) -> tuple[str, int | None, str] | None:
    """(code, HTTP status, message) of the first botocore ``ClientError`` in the chain, if any."""
    for item in _causes(exc):
        response = getattr(item, "response", None)
        if isinstance(response, dict) and "Error" in response:
            error = response.get("Error", {})
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return str(error.get("Code", "")), status, str(error.get("Message", ""))
    return None


def describe(exc: BaseException) -> str:
    """A short text for an exception: the S3 code and status when there is one."""
    info = _client_error(exc)
    if info and info[0]:
        code, status, message = info
        return f"{code} (HTTP {status}): {message}" if message else f"{code} (HTTP {status})"
    return f"{type(exc).__name__}: {exc}"


def is_transient(exc: BaseException) -> bool:
    """Whether the failed call may succeed if tried again later."""
    if isinstance(exc, (NotFoundError, AccessDeniedError)):
        return False
    if isinstance(exc, TransientStorageError):
        return True
    info = _client_error(exc)
    if info is not None:
        code, status, _ = info
        return code in _RETRY_CODES or status in _RETRY_STATUS
    for item in _causes(exc):
        name = type(item).__name__
        module = type(item).__module__ or ""
        if "SSL" in name or "Certificate" in name:
            return False  # a certificate problem does not go away by trying again
        if module.startswith(("botocore", "aiobotocore")) and (
            "Connection" in name or "Timeout" in name or name in ("HTTPClientError", "IncompleteReadError")
        ):
            return True
        if module.startswith("aiohttp") and ("Connect" in name or "Payload" in name or "Disconnect" in name):
            return True
        if name in ("FSTimeoutError", "IncompleteRead", "ReadTimeoutError", "ProtocolError"):
            return True
        if isinstance(item, (ConnectionError, TimeoutError)):
            return True
        if type(item) is OSError and item.errno in _TRANSIENT_ERRNOS:
            return True
    return False


def translate(exc: BaseException, uri: str, op: str, bucket: str | None = None) -> StorageError:
    """The storage error for a library exception raised while doing ``op`` on ``uri``."""
    if isinstance(exc, StorageError):
        return exc
    info = _client_error(exc)
    code, status = (info[0], info[1]) if info else ("", None)
    names = {type(item).__name__ for item in _causes(exc)}
    if code == "NoSuchBucket" or (bucket and "bucket does not exist" in str(exc).lower()):
        return NotFoundError(f"bucket '{bucket}' does not exist ({uri})")
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return AccessDeniedError(f"{uri}: {exc}. {CREDENTIALS_HINT}")
    if code in _DENIED_CODES or status == 403 or isinstance(exc, PermissionError):
        hint = f". {CREDENTIALS_HINT}" if uri.startswith("s3://") else ""
        return AccessDeniedError(f"{uri}: access denied ({describe(exc)}){hint}")
    if code in ("NoSuchKey", "NotFound", "404") or status == 404 or isinstance(exc, FileNotFoundError):
        return NotFoundError(f"{uri}: no such key" if "://" in uri else f"{uri}: no such file or directory")
    if isinstance(exc, NotADirectoryError):
        return StorageError(f"{uri}: a parent of it is not a directory")
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"{uri}: is a directory")
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return StorageError(f"{uri}: too many levels of symbolic links (a symlink loop)")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StorageError(f"{uri}: {op} failed: No space left on device (the disk is full)")
    if isinstance(exc, OSError) and exc.strerror and "://" not in uri:
        return StorageError(f"{os.fspath(uri)}: {exc.strerror}")
    return StorageError(f"{uri}: {op} failed: {describe(exc)}")
