"""Real container clients for the integration tests: podman and a private containerd (with ctr).

- L{Podman}: Debian's podman run as root against a store of the test's own (C{--root},
  C{--runroot}, the vfs driver, in a short directory under /tmp), with its own containers.conf, storage.conf, registries.conf,
  signature policy and empty auth file, so that nothing of the machine's configuration is read
  and nothing outside the test's directory is written (except the empty C{/run/containers/networks}
  that rootful podman always creates). No container is ever run: only image pull, push, tag, rmi.
- L{Containerd}: C{containerd} started with a config of its own (root, state, socket; the CRI
  plugin disabled) and driven with C{ctr -a <socket>}; killed at teardown. Its socket lives in a
  short directory under /tmp, since a unix socket path is limited to 107 bytes.
- Readers of trow's text access log and of the upstream's user agents, to tell which client
  asked whom for what.

Both tools are required: a missing one fails the test with the Debian package to install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.conftest import TrowProcess, spawn, terminate
from tests.integration.upstream import Distribution

CLIENT_TIMEOUT = 120.0
CONTAINERD_START_TIMEOUT = 30.0


def require(tool: str, package: str) -> str:
    """The path of C{tool}; fails (never skips) when it is missing."""
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed: apt-get install -y {package}")
    return found


def _run(argv: Sequence[str], env: dict[str, str] | None, check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr}\n{result.stdout}")
    return result


# -- podman -------------------------------------------------------------------------------------


class Podman:
    """podman as root on a vfs store in C{workdir}, configured only by files written here."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require("podman", "podman")
        self.workdir = workdir
        self.root = workdir / "root"
        self.runroot = workdir / "run"
        self.tmp = workdir / "tmp"
        for directory in (self.root, self.runroot, self.tmp, workdir / "engine-tmp"):
            directory.mkdir(parents=True, exist_ok=True)
        self.policy = workdir / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.auth = workdir / "auth.json"
        self.auth.write_text("{}")
        self.storage_conf = workdir / "storage.conf"
        self.storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{self.runroot}"\ngraphroot = "{self.root}"\n'
        )
        self.containers_conf = workdir / "containers.conf"
        self.containers_conf.write_text(
            "\n".join(
                [
                    "[engine]",
                    'cgroup_manager = "cgroupfs"',
                    'events_logger = "file"',
                    f'events_logfile_path = "{workdir / "events.log"}"',
                    # Not /run/libpod, /dev/shm/libpod_lock, /var/lib/containers/storage/volumes.
                    f'tmp_dir = "{workdir / "engine-tmp"}"',
                    'lock_type = "file"',
                    f'volume_path = "{workdir / "volumes"}"',
                    f'static_dir = "{workdir / "static"}"',
                    "[network]",
                    f'network_config_dir = "{workdir / "networks"}"',
                    "",
                ]
            )
        )
        self.registries_conf = workdir / "registries.conf"
        self.set_registries()

    def set_registries(self, *blocks: str) -> None:
        """registries.conf: no short-name search, plus C{blocks} (C{[[registry]]} tables)."""
        head = 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
        self.registries_conf.write_text(head + "\n".join(blocks) + "\n")

    def mirror(self, prefix: str, location: str, mirror: str) -> None:
        """Pull C{prefix/...} from C{mirror} first (plain HTTP), then from C{location}."""
        self.set_registries(
            "\n".join(
                [
                    "[[registry]]",
                    f'prefix = "{prefix}"',
                    f'location = "{location}"',
                    "insecure = true",
                    "[[registry.mirror]]",
                    f'location = "{mirror}"',
                    "insecure = true",
                ]
            )
        )

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            CONTAINERS_CONF=str(self.containers_conf),
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            REGISTRY_AUTH_FILE=str(self.auth),
            TMPDIR=str(self.tmp),  # c/image's temporary copies of blobs, not /var/tmp
        )

    def run(self, *args: str, check: bool = True, timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        argv = [
            self.binary,
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *args,
        ]
        return _run(argv, self.env(), check, timeout)

    def pull(self, ref: str, *flags: str) -> str:
        """C{podman pull}; returns the image ID (the config digest, without C{sha256:})."""
        result = self.run("pull", "--quiet", "--signature-policy", str(self.policy), *flags, ref)
        return result.stdout.strip().splitlines()[-1]

    def push(self, image: str, ref: str, *flags: str) -> str:
        """C{podman push}; returns the digest of the manifest it pushed (C{--digestfile})."""
        digest_file = self.workdir / "pushed.digest"
        self.run(
            "push",
            "--quiet",
            "--signature-policy",
            str(self.policy),
            "--digestfile",
            str(digest_file),
            *flags,
            image,
            ref,
        )
        return digest_file.read_text().strip()

    def inspect(self, image: str) -> dict[str, Any]:
        (document,) = json.loads(self.run("image", "inspect", image).stdout)
        return dict(document)

    def image_ids(self) -> list[str]:
        return self.run("images", "--quiet", "--no-trunc").stdout.split()


@pytest.fixture
def podman() -> Iterator[Podman]:
    """A podman of this test's own, with an empty store, removed after the test. Its directory
    is a short one under /tmp: podman refuses a runroot longer than 50 characters."""
    workdir = Path(tempfile.mkdtemp(prefix="trow-podman-", dir="/tmp"))
    try:
        yield Podman(workdir)
    finally:
        _unmount_below(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


# -- containerd ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtrImage:
    """One row of C{ctr images ls}."""

    ref: str
    media_type: str
    digest: str
    platforms: str


class Containerd:
    """A containerd of its own: root, state and socket in C{base}, log at C{log_path}."""

    def __init__(self, base: Path, log_path: Path) -> None:
        self.containerd = require("containerd", "containerd")
        self.ctr_binary = require("ctr", "containerd")
        self.base = base
        self.log_path = log_path
        self.socket = base / "c.sock"
        self.config = base / "config.toml"
        self.process: subprocess.Popen[bytes] | None = None
        disabled = [
            "io.containerd.grpc.v1.cri",
            "io.containerd.internal.v1.opt",  # would create /opt/containerd
            "io.containerd.internal.v1.tracing",
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.zfs",
        ]
        self.config.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{base / "root"}"',
                    f'state = "{base / "state"}"',
                    f"disabled_plugins = {json.dumps(disabled)}",
                    "[grpc]",
                    f'  address = "{self.socket}"',
                    "[ttrpc]",
                    f'  address = "{self.socket}.ttrpc"',
                    "[debug]",
                    '  address = ""',
                    "[metrics]",
                    '  address = ""',
                    "",
                ]
            )
        )

    def start(self, timeout: float = CONTAINERD_START_TIMEOUT) -> "Containerd":
        self.process = spawn([self.containerd, "--config", str(self.config)], self.log_path)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"containerd exited with {self.process.returncode}; log:\n{self.log()}")
            if self.socket.exists() and self.ctr("version", check=False, timeout=10).returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"containerd did not answer on {self.socket} within {timeout:.0f}s; log:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        terminate(process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ctr(self, *args: str, check: bool = True, timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        result = _run([self.ctr_binary, "-a", str(self.socket), *args], None, False, timeout)
        if check and result.returncode != 0:
            pytest.fail(
                f"ctr {' '.join(args)} exited {result.returncode}:\n{result.stderr}\n{result.stdout}\n"
                f"containerd log (tail):\n{self.log()[-4000:]}"
            )
        return result

    def pull(self, ref: str, *flags: str) -> None:
        """C{ctr images pull} and unpack (native snapshotter: plain directories, no overlay
        mounts, so it works in any container). Unpacking checks every layer's diff ID."""
        self.ctr("images", "pull", "--snapshotter", "native", *flags, ref)

    def push(self, ref: str, *flags: str) -> None:
        self.ctr("images", "push", *flags, ref)

    def tag(self, source: str, target: str) -> None:
        self.ctr("images", "tag", source, target)

    def images(self) -> dict[str, CtrImage]:
        """The image records, by reference."""
        lines = self.ctr("images", "ls").stdout.splitlines()[1:]
        found = {}
        for line in lines:
            # REF TYPE DIGEST SIZE(2 words) PLATFORMS LABELS
            ref, media_type, digest, _, _, platforms, *_ = line.split()
            found[ref] = CtrImage(ref, media_type, digest, platforms)
        return found

    def content(self, digest: str) -> bytes:
        """A blob of containerd's content store, as stored."""
        result = subprocess.run(
            [self.ctr_binary, "-a", str(self.socket), "content", "get", digest],
            capture_output=True,
            timeout=CLIENT_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.stdout


def _unmount_below(directory: Path) -> None:
    """Lazily unmount whatever is still mounted under C{directory} (deepest first)."""
    prefix = str(directory) + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    """A running containerd of this test's own, with an empty content store; killed and removed
    after the test (its log stays in the test's tmp_path)."""
    base = Path(tempfile.mkdtemp(prefix="trow-ctrd-", dir="/tmp"))
    daemon = Containerd(base, tmp_path / "containerd.log")
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        _unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)


# -- what the logs show -------------------------------------------------------------------------

# 2026-12-05T18:06:10+0000 [trow.access#info] 127.0.0.1 "GET /v2/lib/multi/blobs/sha256:...?ns=..." 200 167 0.029s
_TROW_ACCESS = re.compile(r'\[trow\.access#\w+\] \S+ "([A-Z]+) (\S+)" (\d{3}) ')


@dataclass(frozen=True)
class Access:
    """One line of trow's text access log."""

    method: str
    target: str  # path and query, as the client sent them
    status: int

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def ns(self) -> list[str]:
        """The decoded C{ns=} values of the query (containerd's mirror requests)."""
        return parse_qs(urlsplit(self.target).query).get("ns", [])


def trow_access(trow: TrowProcess) -> list[Access]:
    """Every request trow's current log shows, in order."""
    return [Access(m.group(1), m.group(2), int(m.group(3))) for m in _TROW_ACCESS.finditer(trow.log())]


# 127.0.0.1 - - [05/Dec/2026:18:06:56 +0000] "GET /v2/... HTTP/1.1" 200 577 "" "containerd/1.6.20~ds1"
_UPSTREAM_AGENT = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) \S+ "[^"]*" "([^"]*)"', re.M)


def upstream_agents(registry: Distribution, since: int) -> list[tuple[str, str, str]]:
    """(method, path, user agent) of every request the upstream logged after C{since}."""
    with open(registry.log_path, "rb") as handle:
        handle.seek(since)
        text = handle.read().decode(errors="replace")
    return [(m.group(1), m.group(2), m.group(4)) for m in _UPSTREAM_AGENT.finditer(text)]
