"""A single-node trow becomes two replicas: images pushed to it with skopeo, the server stopped,
``python -m trow migrate`` run as a real process into a real PostgreSQL database, then two
replicas started on the same data dir pull every image back byte for byte, and a plain sqlite
server on that data dir is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

from tests.integration.conftest import Images, Skopeo, TrowProcess, assert_same_image, trow_command

PASSWORD = "not-for-logs-42"


def migrate_command(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run C{python -m trow migrate ARGS} with the installed trow (cwd outside the repository,
    so that the working tree's package is not the one imported)."""
    return subprocess.run(
        [sys.executable, "-m", "trow", "migrate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def test_single_node_to_two_replicas(
    trow_factory: Callable[..., TrowProcess], images: Images, skopeo: Skopeo, pg_url: str, tmp_path: Path
) -> None:
    single = trow_factory("single")
    data_dir = single.data_dir
    skopeo.push(images.source("multi"), single.ref("ha/multi:v1"))
    skopeo.push(images.source("multiarch"), single.ref("ha/multiarch:v1"), "--all")

    # While the single node runs, the migration is refused: it would copy a moving target.
    running = migrate_command(tmp_path, "--data-dir", str(data_dir), "--to", pg_url)
    assert running.returncode == 1 and running.stdout == ""
    assert running.stderr.count("\n") == 1 and "stop the single-node trow" in running.stderr
    single.stop_cleanly()

    # The test server trusts local connections: the password is never asked for, never shown.
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)
    assert PASSWORD in url
    done = migrate_command(tmp_path, "--data-dir", str(data_dir), "--to", url)
    assert done.returncode == 0, done.stderr
    assert "next: start the replicas" in done.stdout and "tags" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    again = migrate_command(tmp_path, "--data-dir", str(data_dir), "--to", url)
    assert again.returncode == 0, again.stderr
    total = [line for line in again.stdout.splitlines() if line.startswith("total: ")]
    assert len(total) == 1 and ", 0 copied, " in total[0], again.stdout  # nothing new

    replicas = [
        trow_factory(f"replica{i}", data_dir=data_dir, extra_args=["--database", url]) for i in range(2)
    ]
    for i, replica in enumerate(replicas):
        for tag, flags in (("multi", ()), ("multiarch", ("--all",))):
            ref = replica.ref(f"ha/{tag}:v1")
            pulled = tmp_path / f"pulled-{i}-{tag}"
            skopeo.pull(ref, f"oci:{pulled}:v1", *flags)
            assert_same_image(images.layout, tag, pulled, "v1")
            assert skopeo.inspect_raw(ref, "--tls-verify=false") == images.manifest_bytes(tag)
        assert PASSWORD not in replica.log()

    # The replicas share one view: a tag pushed through one is pulled through the other.
    skopeo.push(images.source("multi"), replicas[0].ref("ha/multi:v2"))
    pulled = tmp_path / "pulled-v2"
    skopeo.pull(replicas[1].ref("ha/multi:v2"), f"oci:{pulled}:v2")
    assert_same_image(images.layout, "multi", pulled, "v2")

    for replica in replicas:
        replica.stop_cleanly()
    # The single-node server would keep writing a trow.db that nobody reads any more: refused.
    plain = subprocess.run(
        trow_command(["--listen", "tcp:0:interface=127.0.0.1", "--data-dir", str(data_dir)]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert plain.returncode == 1
    errors = [line for line in plain.stderr.splitlines() if line.startswith("trow: error:")]
    assert len(errors) == 1, plain.stderr
    assert "belongs to trow replicas whose metadata is in PostgreSQL" in errors[0]
    assert "start trow with --database" in errors[0]
    assert PASSWORD not in plain.stdout + plain.stderr
