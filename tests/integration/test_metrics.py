"""Metrics, access logs and limits on a real trow process with real sockets.

- ``--metrics-listen``: /metrics on its own port, counters that move with the requests made;
- ``--log-format json`` under twistd and twist: every line of stdout is one JSON object, the
  access event has its fields, and no credential the client sent appears anywhere;
- limits: a slowloris client is cut while a normal request is served, a flood beyond
  max_connections is refused at once, a client that stops reading a blob is cut, and one that
  reads slowly gets all of it.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import LOOPBACK, MIB, TrowProcess, raw_request
from tests.images import pseudo_random_chunks

_METRICS_LISTENING = re.compile(rb"MetricsSite starting on (\d+)")
SECRET = "hunter2-do-not-log"


def metrics_port(trow: TrowProcess, timeout: float = 30.0) -> int:
    """The port of the metrics listener, from its C{MetricsSite starting on <port>} line."""
    assert trow.log_path is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _METRICS_LISTENING.search(trow.log_path.read_bytes())
        if match:
            return int(match.group(1))
        time.sleep(0.05)
    pytest.fail(f"no 'MetricsSite starting on' line; log:\n{trow.log()}")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    response = raw_request(port, "GET", "/metrics")
    assert response.status == 200, response
    assert (response.header("Content-Type") or "").startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def write_config(path: Path, limits: dict[str, Any]) -> str:
    lines = ["limits:"] + [f"  {key}: {value}" for key, value in limits.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def push_blob(trow: TrowProcess, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = trow.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", body=data)
    assert response.status == 201, response
    return digest


# -- /metrics ----------------------------------------------------------------------------------


def test_metrics_listener_counts_requests(trow_factory: Callable[..., TrowProcess]) -> None:
    """Requests on the registry port move the counters of /metrics on the metrics port; the
    registry port does not serve /metrics; the metrics port serves nothing else."""
    trow = trow_factory("metrics", extra_args=["--metrics-listen", f"tcp:0:interface={LOOPBACK}"])
    port = metrics_port(trow)
    before = scrape(port)
    assert trow.request("GET", "/v2/").status == 200
    assert trow.request("GET", "/v2/").status == 200
    assert trow.request("GET", "/v2/no/such/manifests/latest").status == 404
    push_blob(trow, "metrics/test", b"some bytes")
    assert trow.request("GET", "/metrics").status == 404
    assert raw_request(port, "GET", "/").status == 404
    after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("trow_http_requests_total", method="GET", route="base", status="200") == 2
    assert moved("trow_http_requests_total", method="GET", route="manifest", status="404") == 1
    assert moved("trow_http_request_duration_seconds_count", method="GET", route="base") == 2
    assert moved("trow_http_response_bytes_total", route="base") == 4  # "{}" twice
    assert moved("trow_http_request_bytes_total", route="uploads") == len(b"some bytes")
    assert sample(after, "trow_build_info", version="0.1.0") == 1
    assert sample(after, "process_open_fds") > 0
    # The reactor lag monitor ticks every second: wait for its first tick, without a deadline
    # on how fast it must be.
    deadline = time.monotonic() + 30
    while sample(scrape(port), "trow_reactor_tick_lag_seconds_count") < 1:
        assert time.monotonic() < deadline, "the reactor lag monitor never ticked"
        time.sleep(0.2)
    trow.stop_cleanly()


# -- --log-format json -------------------------------------------------------------------------


@pytest.mark.parametrize("runner", ["twistd", "twist"])
def test_json_log_lines_and_the_access_event(trow_factory: Callable[..., TrowProcess], runner: str) -> None:
    """Every line is one JSON object; the access event of a request has method, path, status,
    bytes, duration, client and the X-Forwarded-For chain; the credentials sent (Authorization,
    a password in the query) appear nowhere in the log."""
    trow = trow_factory(f"json-{runner}", runner=runner, extra_args=["--log-format", "json"])
    response = trow.request(
        "GET",
        f"/v2/?password={SECRET}&n=1",
        headers=[("Authorization", f"Basic {SECRET}"), ("X-Forwarded-For", "203.0.113.7"), ("User-Agent", "itest")],
    )
    assert response.status == 200
    trow.stop_cleanly()
    log = trow.log()
    assert SECRET not in log
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all(isinstance(r, dict) and "message" in r and "level" in r for r in records)
    [access] = [r for r in records if r.get("namespace") == "trow.access" and r.get("user_agent") == "itest"]
    assert access["method"] == "GET"
    assert access["path"] == "/v2/?password=***&n=1"
    assert access["status"] == 200
    assert access["bytes"] == 2
    assert isinstance(access["duration"], float) and access["duration"] >= 0
    assert access["client"] == LOOPBACK
    assert access["forwarded_for"] == "203.0.113.7"
    assert access["completed"] is True
    assert access["level"] == "info"


def test_text_log_has_one_access_line_per_request(trow_factory: Callable[..., TrowProcess]) -> None:
    """The default (twistd, text): one readable access line per request, and twisted.web's own
    combined-format line is gone."""
    trow = trow_factory("text")
    trow.request("GET", f"/v2/?token={SECRET}")
    trow.stop_cleanly()
    log = trow.log()
    assert SECRET not in log
    lines = [line for line in log.splitlines() if "[trow.access#info]" in line]
    assert len(lines) == 1
    assert f'{LOOPBACK} "GET /v2/?token=***" 200 2' in lines[0]
    assert '"GET /v2/' not in log.replace(lines[0], "")


def test_json_with_a_twistd_logfile_is_refused(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> None:
    """JSON goes to stdout; asking twistd for a log file as well is refused before binding."""
    trow = trow_factory("refused", start=False, extra_args=["--log-format", "json"])
    argv = trow.argv()
    argv.insert(argv.index("trow"), f"--logfile={tmp_path / 'x.log'}")
    import subprocess

    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "--logfile" in result.stderr and "--log-format json" in result.stderr


# -- limits with real sockets ------------------------------------------------------------------


def read_until_closed(sock: socket.socket, timeout: float = 30.0) -> bytes:
    sock.settimeout(timeout)
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return bytes(received)


def test_slowloris_is_cut_while_others_are_served(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> None:
    """A client dribbling its headers a byte at a time gets 408 and is disconnected once the
    header timeout runs out, though it never went idle; a normal client is served meanwhile."""
    config = write_config(tmp_path / "trow.yaml", {"header_timeout": "2s", "idle_timeout": "60s"})
    trow = trow_factory("slowloris", extra_args=["--config", config, "--metrics-listen", f"tcp:0:interface={LOOPBACK}"])
    assert trow.port is not None
    slow = socket.create_connection((LOOPBACK, trow.port), timeout=30)
    slow.sendall(b"GET /v2/ HTTP/1.1\r\n")
    cut = False
    for _ in range(200):  # up to ~40s of dribbling; the cut comes long before
        assert trow.request("GET", "/v2/").status == 200
        try:
            slow.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            cut = True
            break
        slow.settimeout(0.2)
        try:
            data = slow.recv(65536)
        except socket.timeout:
            continue
        assert data.startswith(b"HTTP/1.1 408"), data
        cut = True
        break
    assert cut, "the slow client was never cut"
    read_until_closed(slow)  # the connection ends (a timeout here fails the test)
    slow.close()
    samples = scrape(metrics_port(trow))
    assert sample(samples, "trow_http_limit_hits_total", site="registry", limit="header_timeout") == 1
    trow.stop_cleanly()


def test_connection_flood_is_refused_beyond_max_connections(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path
) -> None:
    """With max_connections 4, four idle connections are held; the fifth is closed at once;
    when one of the four leaves, a normal request is served again."""
    config = write_config(tmp_path / "trow.yaml", {"max_connections": 4})
    trow = trow_factory("flood", extra_args=["--config", config, "--metrics-listen", f"tcp:0:interface={LOOPBACK}"])
    assert trow.port is not None
    held = [socket.create_connection((LOOPBACK, trow.port), timeout=30) for _ in range(4)]
    # Prove each of them is really accepted and served (not just queued in the backlog).
    for sock in held:
        sock.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    try:
        extra: socket.socket | None = socket.create_connection((LOOPBACK, trow.port), timeout=30)
    except ConnectionResetError:
        # Closed so fast that the reset reached the connect itself (a loaded machine): refused.
        extra = None
    if extra is not None:
        try:
            extra.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert read_until_closed(extra) == b""
        extra.close()
    held.pop().close()
    deadline = time.monotonic() + 30
    while True:
        try:
            response = trow.request("GET", "/v2/", timeout=5)
            if response.status == 200:
                break
        except (ConnectionResetError, BrokenPipeError, AssertionError):
            pass  # trow has not seen the close yet
        assert time.monotonic() < deadline, "no request served after a connection was freed"
        time.sleep(0.1)
    for sock in held:
        sock.close()
    samples = scrape(metrics_port(trow))
    assert sample(samples, "trow_http_limit_hits_total", site="registry", limit="max_connections") >= 1
    trow.stop_cleanly()


def test_reader_that_stops_is_cut_and_slow_reader_is_not(
    trow_factory: Callable[..., TrowProcess], tmp_path: Path
) -> None:
    """A client that asks for a 32 MiB blob and reads none of it is disconnected after the idle
    timeout; one that reads 8 MiB of it slowly but steadily gets every byte."""
    config = write_config(tmp_path / "trow.yaml", {"idle_timeout": "2s"})
    trow = trow_factory("stall", extra_args=["--config", config])
    assert trow.port is not None
    data = b"".join(pseudo_random_chunks(32 * MIB, seed=11))
    digest = push_blob(trow, "stall/blob", data)
    request = f"GET /v2/stall/blob/blobs/{digest} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n\r\n".encode()

    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((LOOPBACK, trow.port))
    stalled.sendall(request)
    deadline = time.monotonic() + 60
    while "read nothing of its response" not in trow.log():
        assert time.monotonic() < deadline, f"the stalled reader was never cut; log:\n{trow.log()}"
        time.sleep(0.2)
    received = read_until_closed(stalled)
    stalled.close()
    assert len(received) < len(data)

    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    slow.connect((LOOPBACK, trow.port))
    slow.settimeout(30)
    part = 8 * MIB
    slow.sendall(request.replace(b"\r\n\r\n", f"\r\nRange: bytes=0-{part - 1}\r\n\r\n".encode()))
    body = bytearray()
    # Slower than any buffer can hide (the 8 MiB take over 3s, the idle timeout is 2s), but
    # steady: about 2.5 MB/s, 64 KiB at a time.
    while chunk := slow.recv(64 * 1024):
        body += chunk
        time.sleep(0.025)
    slow.close()
    head, _, payload = bytes(body).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206"), head
    assert payload == data[:part]
    trow.stop_cleanly()
