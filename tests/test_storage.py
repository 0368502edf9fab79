"""facetrack.storage against local paths and a real S3 server (SeaweedFS over HTTP, credentials enforced)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from facetrack import storage
from infra.local_s3 import LocalS3

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def s3_filesystem() -> object:
    """The process's S3 filesystem (s3fs), connected, as storage uses it."""
    fs, _ = storage.filesystem("s3://any/key")
    fs.connect()
    return fs


@contextmanager
def on_event(event: str, handler: Callable[..., object]) -> Iterator[None]:
    """Register a botocore event handler on the process's S3 client for the duration of the block."""
    events = s3_filesystem().s3.meta.events
    events.register(event, handler)
    try:
        yield
    finally:
        events.unregister(event, handler)


def multipart_uploads(bucket: str) -> list[str]:
    response = s3_filesystem().call_s3("list_multipart_uploads", Bucket=bucket)
    return [upload["Key"] for upload in response.get("Uploads", [])]


# ------------------------------------------------------------------------------------- local paths


def test_local_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.bin"
    storage.write_bytes(target, b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    assert storage.read_bytes(str(target)) == b"\x00\x01payload"
    assert storage.read_bytes(f"file://{target}") == b"\x00\x01payload"
    assert storage.size(target) == 9

    text_uri = storage.join(str(tmp_path), "t", "note.txt")
    storage.write_text(text_uri, "zwölf\nlines\n")
    assert storage.read_text(text_uri) == "zwölf\nlines\n"
    content = "zwölf\nlines\n".encode()
    with storage.open_read(text_uri) as stream:
        assert stream.read(3) == content[:3]
        assert stream.read() == content[3:]
    with storage.open_read(text_uri, "r") as stream:
        assert stream.readlines() == ["zwölf\n", "lines\n"]
    with storage.open_write(text_uri, "w") as stream:
        stream.write("replaced")
    assert storage.read_text(text_uri) == "replaced"

    assert storage.exists(text_uri) and storage.exists(tmp_path / "t")
    storage.delete(text_uri)
    assert not storage.exists(text_uri)
    storage.delete(text_uri)  # missing_ok by default
    with pytest.raises(storage.NotFoundError):
        storage.delete(text_uri, missing_ok=False)
    assert storage.local_copy(target) == target


def test_local_missing_paths_raise_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    for call in (
        lambda: storage.read_bytes(missing),
        lambda: storage.read_text(str(missing)),
        lambda: storage.open_read(missing),
        lambda: storage.size(missing),
        lambda: storage.local_copy(missing),
        lambda: storage.list_uris(tmp_path / "no-dir"),
    ):
        with pytest.raises(storage.NotFoundError) as caught:
            call()
        assert isinstance(caught.value, FileNotFoundError)
        assert "nope.bin" in str(caught.value) or "no-dir" in str(caught.value)
    assert not storage.exists(missing)


def test_local_list_uris_sorted_recursive_with_suffixes(tmp_path: Path) -> None:
    names = ["b/2.MP4", "a.mp4", "b/1.json", "b/c/3.mp4", "z.txt"]
    for name in names:
        storage.write_bytes(tmp_path / name, name.encode())
    root = str(tmp_path)
    assert list(storage.list_uris(root)) == sorted(f"{root}/{n}" for n in names)
    assert list(storage.list_uris(root + "/", suffixes=".mp4")) == [
        f"{root}/a.mp4",
        f"{root}/b/2.MP4",
        f"{root}/b/c/3.mp4",
    ]
    assert list(storage.list_uris(root, suffixes=(".json", ".txt"))) == [f"{root}/b/1.json", f"{root}/z.txt"]
    assert list(storage.list_uris(f"{root}/z.txt")) == [f"{root}/z.txt"]
    # A write in progress is not listed.
    with storage.open_write(tmp_path / "b" / "late.mp4") as stream:
        stream.write(b"partial")
        assert f"{root}/b/late.mp4" not in list(storage.list_uris(root))
        assert len(os.listdir(tmp_path / "b")) == 4  # the temporary file is there, hidden from listing
    assert f"{root}/b/late.mp4" in list(storage.list_uris(root))


def test_local_open_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.json"
    storage.write_text(target, "old")

    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_write(target) as stream:
            stream.write(b"new and half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(storage.StorageError, match="No space left"):
        storage.write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]

    with pytest.raises(RuntimeError):
        with storage.open_write(tmp_path / "fresh.json") as stream:
            stream.write(b"x")
            raise RuntimeError("boom")
    assert not (tmp_path / "fresh.json").exists()
    assert os.listdir(tmp_path) == ["out.json"]


def test_local_write_killed_midway_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    storage.write_text(target, "old\n")
    code = (
        "import os, sys\n"
        "from facetrack import storage\n"
        "with storage.open_write(sys.argv[1], 'w') as f:\n"
        "    f.write('new line\\n' * 1000)\n"
        "    f.flush()\n"
        "    os._exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO, timeout=60)
    assert done.returncode == 3
    assert target.read_text() == "old\n"
    assert len(os.listdir(tmp_path)) == 2  # the dead writer's temporary file stays behind ...
    assert list(storage.list_uris(tmp_path)) == [str(target)]  # ... but is never listed


def test_join_and_uri_helpers() -> None:
    assert storage.join("s3://bucket", "a", "b.json") == "s3://bucket/a/b.json"
    assert storage.join("s3://bucket/out/", "/x") == "s3://bucket/out/x"
    assert storage.join("/data", "", "v.mp4") == "/data/v.mp4"
    assert storage.join(Path("rel"), "v.mp4") == "rel/v.mp4"
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/s3://b") and not storage.is_s3(Path("s3:/b"))
    assert storage.split_s3("s3://bucket/a/b") == ("bucket", "a/b")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.split_s3("s3:///key")
    with pytest.raises(storage.StorageError, match="not an object key"):
        storage.read_bytes("s3://bucket/dir/")


def test_retry_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    default = storage.RetryPolicy.from_env()
    assert default.max_seconds >= 90  # outlasts a 60 s outage, with the calls' own time on top
    monkeypatch.setenv("FACETRACK_STORAGE_RETRIES", "3")
    monkeypatch.setenv("FACETRACK_STORAGE_RETRY_SECONDS", "7.5")
    policy = storage.RetryPolicy.from_env()
    assert (policy.retries, policy.max_seconds) == (3, 7.5)
    delays = [policy.delay(n) for n in range(1, 12)]
    assert all(0 < d <= policy.max_delay for d in delays)
    assert delays[0] <= policy.base_delay and delays[-1] >= policy.max_delay / 2
    monkeypatch.setenv("FACETRACK_STORAGE_RETRIES", "many")
    with pytest.raises(storage.StorageError, match="FACETRACK_STORAGE_RETRIES"):
        storage.RetryPolicy.from_env()


# ---------------------------------------------------------------------------------------------- S3


def test_s3_round_trip(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/dir/x.bin"
    storage.write_bytes(uri, b"\x00binary\xff")
    assert storage.read_bytes(uri) == b"\x00binary\xff"
    assert storage.size(uri) == 8

    text_uri = storage.join(f"s3://{s3_bucket}", "dir", "t.jsonl")
    storage.write_text(text_uri, '{"a": "ü"}\n')
    assert storage.read_text(text_uri) == '{"a": "ü"}\n'
    with storage.open_write(text_uri, "w") as stream:
        stream.write("line 1\n")
        stream.write("line 2\n")
    with storage.open_read(text_uri, "r") as stream:
        assert stream.readlines() == ["line 1\n", "line 2\n"]
    with storage.open_read(text_uri) as stream:
        assert stream.read(4) == b"line"
        assert stream.read(3) == b" 1\n"
        assert stream.read() == b"line 2\n"
        assert stream.read() == b""
    empty = f"s3://{s3_bucket}/empty"
    storage.write_bytes(empty, b"")
    assert storage.read_bytes(empty) == b"" and storage.exists(empty)
    # The connection an empty upload used serves the next upload too.
    storage.write_bytes(empty, b"")
    storage.write_bytes(f"{empty}-then", b"after")
    assert storage.read_bytes(f"{empty}-then") == b"after"


def test_s3_large_multipart_object(s3_bucket: str) -> None:
    data = os.urandom(20 * MIB + 123)
    uri = f"s3://{s3_bucket}/big/blob.bin"
    storage.write_bytes(uri, data)
    head = s3_filesystem().call_s3("head_object", Bucket=s3_bucket, Key="big/blob.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # three 8 MiB parts: it went up as a multipart upload
    assert sha(storage.read_bytes(uri)) == sha(data)

    streamed = f"s3://{s3_bucket}/big/streamed.bin"
    with storage.open_write(streamed) as stream:
        for start in range(0, len(data), 3 * MIB):
            stream.write(data[start : start + 3 * MIB])
    with storage.open_read(streamed) as stream:
        digest = hashlib.sha256()
        while chunk := stream.read(MIB + 7):
            digest.update(chunk)
        assert digest.hexdigest() == sha(data)
        stream.seek(17 * MIB)
        assert stream.read(10) == data[17 * MIB : 17 * MIB + 10]
        stream.seek(-5, os.SEEK_END)
        assert stream.read() == data[-5:]
        assert stream.tell() == len(data)
    assert multipart_uploads(s3_bucket) == []


def test_s3_list_more_than_1000_keys(s3_bucket: str) -> None:
    keys = [f"data/{i % 7}/item-{i:05d}.json" for i in range(1100)]
    others = ["data2/outside.json", "dat/x.json", "top.json"]
    clients = set()

    def put(key: str) -> None:
        clients.add(id(storage.filesystem(f"s3://{s3_bucket}/{key}")[0]))
        storage.write_bytes(f"s3://{s3_bucket}/{key}", key.encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys + others))
    assert len(clients) == 1  # one filesystem (and client) shared by all threads

    listed = list(storage.list_uris(f"s3://{s3_bucket}/data"))
    assert listed == sorted(f"s3://{s3_bucket}/{k}" for k in keys)
    assert list(storage.list_uris(f"s3://{s3_bucket}/data/", suffixes=".JSON")) == listed
    assert list(storage.list_uris(f"s3://{s3_bucket}/data/3", suffixes=".json")) == [
        u for u in listed if "/data/3/" in u
    ]
    everything = list(storage.list_uris(f"s3://{s3_bucket}"))
    assert len(everything) == 1103 and everything == sorted(everything)
    assert list(storage.list_uris(f"s3://{s3_bucket}/data", suffixes=".mp4")) == []
    assert list(storage.list_uris(f"s3://{s3_bucket}/nothing-here")) == []
    single = f"s3://{s3_bucket}/top.json"
    assert list(storage.list_uris(single)) == [single]  # an object lists itself, as a local file does
    assert list(storage.list_uris(single, suffixes=".mp4")) == []
    assert storage.exists(f"s3://{s3_bucket}/data/") and not storage.exists(f"s3://{s3_bucket}/nothing/")


def test_s3_open_write_is_atomic_on_exception(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/out/shard.jsonl"
    storage.write_text(uri, "old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_write(uri) as stream:
            stream.write(b"new\n" * (3 * MIB))  # past the multipart threshold
            raise RuntimeError("boom")
    assert storage.read_text(uri) == "old\n"
    fresh = f"s3://{s3_bucket}/out/fresh.jsonl"
    with pytest.raises(RuntimeError):
        with storage.open_write(fresh, "w") as stream:
            stream.write("half")
            raise RuntimeError("boom")
    assert not storage.exists(fresh)
    assert list(storage.list_uris(f"s3://{s3_bucket}/out")) == [uri]
    assert multipart_uploads(s3_bucket) == []


def test_s3_failed_upload_leaves_old_object(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ConnectionClosedError

    uri = f"s3://{s3_bucket}/model/weights.bin"
    storage.write_bytes(uri, b"old weights")
    monkeypatch.setenv("FACETRACK_STORAGE_RETRIES", "1")
    cut = []

    def cut_second_part(request: object, **_: object) -> None:
        if "partNumber=2" in request.url:
            cut.append(request.url)
            raise ConnectionClosedError(endpoint_url=request.url)

    with on_event("before-send.s3.UploadPart", cut_second_part):
        with pytest.raises(storage.StorageError, match="failed after 2 attempts") as caught:
            storage.write_bytes(uri, os.urandom(20 * MIB))
    assert "ConnectionClosedError" in str(caught.value)
    assert isinstance(caught.value, storage.TransientStorageError)
    assert len(cut) >= 2  # every attempt was cut (botocore's own retries add tries within one attempt)
    assert storage.read_bytes(uri) == b"old weights"
    assert multipart_uploads(s3_bucket) == []  # the failed multipart uploads were aborted


def test_s3_transient_upload_failure_is_retried(s3_bucket: str) -> None:
    from botocore.exceptions import ConnectionClosedError

    data = os.urandom(17 * MIB)
    uri = f"s3://{s3_bucket}/retried.bin"
    failures = []

    def fail_once(request: object, **_: object) -> None:
        if not failures:
            failures.append(request.url)
            raise ConnectionClosedError(endpoint_url=request.url)

    with on_event("before-send.s3.UploadPart", fail_once):
        storage.write_bytes(uri, data)
    assert len(failures) == 1
    assert sha(storage.read_bytes(uri)) == sha(data)
    assert multipart_uploads(s3_bucket) == []


def test_s3_writer_killed_mid_upload_leaves_old_object(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/killed.bin"
    storage.write_bytes(uri, b"old")
    code = (
        "import os, sys\n"
        "from facetrack import storage\n"
        "def die(**_):\n"
        "    os._exit(7)\n"
        "fs, _ = storage.filesystem(sys.argv[1])\n"
        "fs.connect()\n"
        "fs.s3.meta.events.register('before-send.s3.UploadPart', die)\n"
        "storage.write_bytes(sys.argv[1], os.urandom(20 * 1024 * 1024))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, uri], cwd=REPO, timeout=120)
    assert done.returncode == 7
    assert multipart_uploads(s3_bucket) == ["killed.bin"]  # it died with a multipart upload in flight
    assert storage.read_bytes(uri) == b"old"


def test_s3_missing_key(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/no/such.key"
    for call in (
        lambda: storage.read_bytes(uri),
        lambda: storage.read_text(uri),
        lambda: storage.open_read(uri),
        lambda: storage.size(uri),
        lambda: storage.local_copy(uri),
        lambda: storage.delete(uri, missing_ok=False),
    ):
        with pytest.raises(
            storage.NotFoundError, match=f"s3://{s3_bucket}/no/such.key: no such key"
        ) as caught:
            call()
        assert isinstance(caught.value, FileNotFoundError)
    assert storage.exists(uri) is False
    storage.delete(uri)  # missing_ok
    assert storage.exists(f"s3://{s3_bucket}") is True  # the bucket itself
    assert storage.exists("s3://no-such-bucket-here") is False


def test_s3_missing_bucket(s3_server: LocalS3) -> None:
    uri = "s3://no-such-bucket-here/a/b.json"
    for call in (
        lambda: storage.read_bytes(uri),
        lambda: storage.write_bytes(uri, b"x"),
        lambda: storage.exists(uri),
        lambda: storage.size(uri),
        lambda: storage.delete(uri),
        lambda: storage.list_uris("s3://no-such-bucket-here/a"),
        lambda: storage.local_copy(uri),
    ):
        with pytest.raises(storage.NotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
            call()


@pytest.mark.parametrize("which", ["secret", "access key"])
def test_s3_wrong_credentials(s3_server: LocalS3, which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3_server.bucket}/creds/x.txt"
    storage.write_text(uri, "guarded")
    if which == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key + "-wrong")
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
    requests = []
    with on_event("before-send.s3", lambda **_: requests.append(1)):
        for call in (
            lambda: storage.read_bytes(uri),
            lambda: storage.write_text(uri, "overwritten"),
            lambda: storage.list_uris(f"s3://{s3_server.bucket}/creds"),
            lambda: storage.exists(uri),
        ):
            with pytest.raises(storage.AccessDeniedError, match="AWS_ACCESS_KEY_ID") as caught:
                call()
            assert isinstance(caught.value, PermissionError)
    assert len(requests) == 4  # denied requests are not retried
    monkeypatch.undo()
    assert storage.read_text(uri) == "guarded"


def test_s3_exists_and_delete(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/k/v.txt"
    assert not storage.exists(uri)
    storage.write_text(uri, "v")
    assert storage.exists(uri)
    storage.delete(uri)
    assert not storage.exists(uri)
    assert list(storage.list_uris(f"s3://{s3_bucket}")) == []


def test_s3_local_copy(s3_bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/videos/clip.mp4"
    data = os.urandom(3 * MIB + 5)
    storage.write_bytes(uri, data)
    gets = []
    with on_event("before-send.s3.GetObject", lambda **_: gets.append(1)):
        first = storage.local_copy(uri, cache_dir=tmp_path)
        assert first.name == "clip.mp4" and first.is_relative_to(tmp_path)
        assert sha(first.read_bytes()) == sha(data)
        downloads = len(gets)
        assert storage.local_copy(uri, cache_dir=tmp_path) == first
        assert len(gets) == downloads  # served from the cache

        storage.write_bytes(uri, b"a new version")
        second = storage.local_copy(uri, cache_dir=tmp_path)
    assert second != first and second.read_bytes() == b"a new version"
    assert first.read_bytes() == data
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p not in (first, second)]
    assert leftovers == []


def test_s3_read_retries_until_server_is_back(s3_server: LocalS3, s3_bucket: str, monkeypatch) -> None:
    uri = f"s3://{s3_bucket}/restart.bin"
    data = os.urandom(MIB)
    storage.write_bytes(uri, data)
    s3_server.stop()
    try:
        monkeypatch.setenv("FACETRACK_STORAGE_RETRIES", "2")
        with pytest.raises(storage.TransientStorageError, match="failed after 3 attempts"):
            storage.read_bytes(uri)
        monkeypatch.setenv("FACETRACK_STORAGE_RETRIES", "20")
        monkeypatch.setenv("FACETRACK_STORAGE_RETRY_SECONDS", "60")
        result: dict[str, object] = {}

        def read() -> None:
            try:
                result["data"] = storage.read_bytes(uri)
            except Exception as exc:  # reported by the assertion below
                result["error"] = exc

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(2)
        assert reader.is_alive()  # still retrying while the server is down
    finally:
        s3_server.start()
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert "error" not in result, result.get("error")
    assert sha(result["data"]) == sha(data)


def test_s3_stream_resumes_after_connection_loss(s3_server: LocalS3, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/resume.bin"
    data = os.urandom(24 * MIB)
    storage.write_bytes(uri, data)
    ranges = []

    def record(params: dict, **_: object) -> None:
        ranges.append(params.get("Range"))

    with on_event("before-parameter-build.s3.GetObject", record):
        with storage.open_read(uri) as stream:
            head = stream.read(MIB)
            s3_server.stop(kill=True)  # the connection dies with the server, mid-body
            restart = threading.Timer(1.0, s3_server.start)
            restart.start()
            try:
                rest = stream.read()
            finally:
                restart.join()
    assert sha(head + rest) == sha(data)
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in ranges]
    assert starts[0] == 0
    # Reads went on from where the stream stopped, never from the start again.
    assert len(starts) > 1 and all(MIB <= start < len(data) for start in starts[1:])


def test_s3_client_is_rebuilt_after_fork(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/fork.txt"
    storage.write_text(uri, "from the parent")
    parent = storage.filesystem(uri)[0]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a fresh client, and it works
        try:
            ok = storage.filesystem(uri)[0] is not parent and storage.read_text(uri) == "from the parent"
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert storage.filesystem(uri)[0] is parent


# ------------------------------------------------------------------------------- other URI schemes


def test_memory_round_trip_listing_and_atomic_write() -> None:
    root = f"memory://t-{os.getpid()}-{time.monotonic_ns()}"
    storage.write_bytes(f"{root}/a/x.bin", b"\x00mem")
    storage.write_text(f"{root}/a/b/y.txt", "zwölf")
    assert storage.read_bytes(f"{root}/a/x.bin") == b"\x00mem"
    assert storage.read_text(f"{root}/a/b/y.txt") == "zwölf"
    assert storage.size(f"{root}/a/x.bin") == 4
    assert list(storage.list_uris(root)) == [f"{root}/a/b/y.txt", f"{root}/a/x.bin"]
    assert list(storage.list_uris(root, suffixes=".txt")) == [f"{root}/a/b/y.txt"]
    with storage.open_read(f"{root}/a/b/y.txt", "r") as stream:
        assert stream.read() == "zwölf"
    with pytest.raises(RuntimeError):
        with storage.open_write(f"{root}/a/x.bin") as stream:
            stream.write(b"half")
            raise RuntimeError("boom")
    assert storage.read_bytes(f"{root}/a/x.bin") == b"\x00mem"
    assert storage.exists(f"{root}/a/x.bin") and not storage.exists(f"{root}/a/nope")
    copy = storage.local_copy(f"{root}/a/x.bin")
    assert copy.read_bytes() == b"\x00mem" and copy.name == "x.bin"
    storage.delete(f"{root}/a/x.bin")
    with pytest.raises(storage.NotFoundError, match="no such key"):
        storage.read_bytes(f"{root}/a/x.bin")


def test_unknown_scheme_and_missing_extra_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(storage.StorageError, match=r"unknown URI scheme 'ftpx://'") as caught:
        storage.write_text("ftpx://host/out/x.txt", "lost?")
    assert "\n" not in str(caught.value)
    code = (
        "import sys\n"
        "sys.modules['gcsfs'] = None  # as on a machine without the gcs extra\n"
        "from facetrack import storage\n"
        "try:\n"
        "    storage.write_text('gs://bucket/out/x.txt', 'x')\n"
        "except storage.StorageError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.stdout.strip() == "gs://bucket/out/x.txt: gs:// needs gcsfs: pip install 'facetrack[gcs]'"
    assert os.listdir(tmp_path) == []  # nothing was written to a local folder named 'gs:'


def test_local_errors_keep_their_cause(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(storage.StorageError, match="file is not a directory"):
        storage.write_text(tmp_path / "file" / "below.txt", "y")
    with pytest.raises(storage.StorageError, match="not a directory"):
        storage.read_bytes(tmp_path / "file" / "below.txt")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(storage.StorageError, match="symlink loop"):
        storage.read_bytes(loop)


def test_pyarrow_filesystem_is_the_same_storage() -> None:
    root = f"memory://pa-{os.getpid()}-{time.monotonic_ns()}"
    storage.write_text(f"{root}/a.txt", "through pyarrow")
    fs, path = storage.pyarrow_filesystem(f"{root}/a.txt")
    with fs.open_input_stream(path) as stream:
        assert stream.read() == b"through pyarrow"
    local, abspath = storage.pyarrow_filesystem("rel/dir")
    assert local is None and os.path.isabs(abspath)
