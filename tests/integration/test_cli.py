"""Start-up and options of the real command line (reference.md section 2).

A bad option or config file prints one line naming the problem and exits non-zero before any
port is bound; ``--dry-run`` prints the effective settings; ``twist`` and the defaults serve.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Callable, Sequence

import pytest

from tests.integration.conftest import (
    LOOPBACK,
    PortWatcher,
    TrowProcess,
    free_port,
    port_is_free,
    raw_request,
    trow_command,
)


def run_once(args: Sequence[str], cwd: Path, port: int, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run C{twistd -n --pidfile= trow ARGS} to completion, asserting that it never accepted a
    connection on C{port} while it ran and that the port is free afterwards."""
    with PortWatcher(port) as watcher:
        result = subprocess.run(
            trow_command(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    assert not watcher.accepted, f"port {port} accepted a connection: trow bound it before failing"
    assert port_is_free(port), f"port {port} is still bound after trow exited"
    assert "starting on" not in result.stdout + result.stderr
    return result


def test_dry_run_prints_effective_settings(tmp_path: Path) -> None:
    """--dry-run validates everything, prints the effective settings (secrets masked) as JSON
    on stdout and exits 0 without binding its port."""
    config = tmp_path / "trow.yaml"
    config.write_text(
        "registry_proxies:\n"
        "  registries:\n"
        "    - host: docker.io\n"
        "      username: robot\n"
        "      password: hunter2\n"
        "  offline: true\n"
        "gc:\n"
        "  interval: 90s\n"
    )
    port = free_port()
    listen = f"tcp:{port}:interface={LOOPBACK}"
    result = run_once(
        ["--dry-run", "--listen", listen, "--data-dir", "state", "--config", str(config)], tmp_path, port
    )
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["listen"] == [listen]
    assert settings["data_dir"] == str(tmp_path / "state")
    assert settings["config"]["registry_proxies"]["offline"] is True
    assert settings["config"]["gc"]["interval"] == 90
    assert "hunter2" not in result.stdout, "the upstream password must be masked"


@pytest.mark.parametrize(
    "bad, named",
    [
        (["--listen", "nonsense:1"], "nonsense"),
        (["--no-such-option"], "--no-such-option"),
    ],
    ids=["listen-nonsense", "unknown-option"],
)
def test_bad_option_exits_before_binding(tmp_path: Path, bad: list[str], named: str) -> None:
    """A bad option is reported on exactly one stderr line that names it; the process exits
    non-zero and never binds the good --listen given beside it."""
    port = free_port()
    result = run_once(["--listen", f"tcp:{port}:interface={LOOPBACK}", *bad, "--data-dir", "data"], tmp_path, port)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert named in lines[0]
    assert "Traceback" not in result.stdout


BAD_CONFIGS = [
    pytest.param(
        "registry_proxies:\n  registries: [\n    {host: docker.io\n",
        "YAML",
        id="yaml-syntax-error",
    ),
    pytest.param("registry_proxies:\n  offline: false\nno_such_section: 1\n", "no_such_section", id="unknown-key"),
    pytest.param("gc:\n  interval: [1, 2]\n", "gc.interval", id="wrong-type"),
    pytest.param("registry_proxies:\n  offline: maybe\n", "registry_proxies.offline", id="wrong-type-bool"),
]


@pytest.mark.parametrize("text, named", BAD_CONFIGS)
def test_bad_config_exits_before_binding(tmp_path: Path, text: str, named: str) -> None:
    """A bad config file is reported on exactly one stderr line that names the problem (the key
    path, or that the YAML is broken); exit status non-zero, no port bound."""
    config = tmp_path / "trow.yaml"
    config.write_text(text)
    port = free_port()
    result = run_once(
        ["--listen", f"tcp:{port}:interface={LOOPBACK}", "--data-dir", "data", "--config", str(config)], tmp_path, port
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert named in lines[0]
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "data").exists(), "a refused start must not create the data dir"


def test_twist_serves_registry_api(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> None:
    """C{twist trow} (logs to stdout, no pid file) serves /v2/ too, and stops cleanly on SIGTERM."""
    trow = trow_factory("twist", runner="twist")
    response = trow.request("GET", "/v2/")
    assert response.status == 200, response
    assert response.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert response.json() == {}
    trow.stop_cleanly()
    assert not (trow.cwd / "twistd.pid").exists()


def test_defaults_serve_port_8000_and_create_data_dir(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> None:
    """With no options at all, trow listens on port 8000 and keeps its state in ./data."""
    if not (port_is_free(8000, "") and port_is_free(8000, LOOPBACK)):
        pytest.skip("port 8000 is in use on this machine")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    trow = trow_factory("defaults", start=False, use_defaults=True, cwd=cwd, data_dir=cwd / "data")
    trow.start()
    assert trow.port == 8000
    response = raw_request(8000, "GET", "/v2/")
    assert response.status == 200, response
    assert (cwd / "data").is_dir()
    assert os.listdir(cwd / "data"), "the data dir holds trow's stores"
    trow.stop_cleanly()


def test_repeated_listen_serves_on_every_listener(trow_factory: Callable[..., TrowProcess]) -> None:
    """--listen is repeatable: each endpoint gets its own port and serves the same registry."""
    trow = trow_factory("two", extra_args=["--listen", f"tcp:0:interface={LOOPBACK}"])
    ports = trow.ports()
    assert len(set(ports)) == 2, trow.log()
    data = b"one registry behind two ports"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    pushed = raw_request(ports[0], "POST", f"/v2/two/ports/blobs/uploads/?digest={digest}", body=data)
    assert pushed.status == 201, pushed
    fetched = raw_request(ports[1], "GET", f"/v2/two/ports/blobs/{digest}")
    assert fetched.status == 200 and fetched.body == data


# -- Trow's command line: a Trow Deployment's args work unchanged ---------------------------------


def _http_get(family: int, address: str, port: int, path: str = "/v2/") -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect((address, port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: trow\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_trows_bind_and_short_forms_serve(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> None:
    """--bind IP:PORT with -d and -n, as a Trow Deployment passes them."""
    data = tmp_path / "trow-data"
    trow = trow_factory("bind", start=False, use_defaults=True, extra_args=["--bind", f"{LOOPBACK}:0", "-d", str(data), "-n", "registry.example.com"])
    trow.start()
    assert trow.port is not None
    assert _http_get(socket.AF_INET, LOOPBACK, trow.port).startswith(b"HTTP/1.1 200")
    assert data.is_dir() and os.listdir(data)


def test_bind_to_all_of_ipv6_is_dual_stack(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> None:
    """--bind [::]:PORT answers on IPv6 and IPv4 alike (here on their loopbacks)."""
    trow = trow_factory("dual", start=False, use_defaults=True, extra_args=["--bind", "[::]:0", "-d", str(tmp_path / "d")])
    trow.start()
    assert trow.port is not None
    assert _http_get(socket.AF_INET6, "::1", trow.port).startswith(b"HTTP/1.1 200")
    assert _http_get(socket.AF_INET, LOOPBACK, trow.port).startswith(b"HTTP/1.1 200")


def test_tls_serves_the_registry_over_https(trow_factory: Callable[..., TrowProcess], tmp_path: Path) -> None:
    """--tls=CERT,KEY: HTTPS on the --bind address, verified against the certificate's CA."""
    import http.client
    import ssl

    from trow.certs import make_bundle

    bundle = make_bundle("localhost", "test")
    (tmp_path / "tls.crt").write_bytes(bundle.cert_pem)
    (tmp_path / "tls.key").write_bytes(bundle.key_pem)
    (tmp_path / "ca.crt").write_bytes(bundle.ca_pem)
    trow = trow_factory(
        "tls",
        start=False,
        use_defaults=True,
        extra_args=["--bind", f"{LOOPBACK}:0", "-d", str(tmp_path / "d"), f"--tls={tmp_path / 'tls.crt'},{tmp_path / 'tls.key'}"],
    )
    trow.start()
    assert trow.port is not None
    connection = http.client.HTTPSConnection(
        "localhost", trow.port, timeout=10, context=ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    )
    connection.request("GET", "/v2/")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Docker-Distribution-API-Version") == "registry/2.0"
    connection.close()


def test_a_tls_pair_that_does_not_load_exits_before_binding(tmp_path: Path) -> None:
    from trow.certs import make_bundle

    (tmp_path / "tls.crt").write_bytes(make_bundle("a", "b").cert_pem)
    (tmp_path / "other.key").write_bytes(make_bundle("a", "b").key_pem)
    port = free_port()
    result = run_once(
        ["--bind", f"{LOOPBACK}:{port}", "-d", "data", f"--tls={tmp_path / 'tls.crt'},{tmp_path / 'other.key'}"], tmp_path, port
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "do not load as a pair" in line and "Traceback" not in result.stdout


def test_bind_with_listen_exits_before_binding(tmp_path: Path) -> None:
    port = free_port()
    result = run_once(["--bind", f"{LOOPBACK}:{port}", "--listen", f"tcp:{port}:interface={LOOPBACK}", "-d", "data"], tmp_path, port)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "--bind and --listen" in line


def test_cors_lets_the_named_origins_in(trow_factory: Callable[..., TrowProcess]) -> None:
    """--cors ORIGINS: a preflight from an allowed origin is answered (GET, POST, OPTIONS, with
    credentials); its GETs carry the CORS headers; another origin gets none of them."""
    trow = trow_factory("cors", extra_args=["--cors", "https://ui.example.com,http://localhost:3000"])
    preflight = trow.request(
        "OPTIONS",
        "/v2/_catalog",
        headers=[
            ("Origin", "https://ui.example.com"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
    )
    assert preflight.status == 204, preflight
    assert preflight.header("Access-Control-Allow-Origin") == "https://ui.example.com"
    assert preflight.header("Access-Control-Allow-Credentials") == "true"
    assert preflight.header("Access-Control-Allow-Methods") == "GET, POST, OPTIONS"
    assert preflight.header("Access-Control-Allow-Headers") == "authorization"
    allowed = trow.request("GET", "/v2/", headers=[("Origin", "http://localhost:3000")])
    assert allowed.status == 200 and allowed.header("Access-Control-Allow-Origin") == "http://localhost:3000"
    assert allowed.header("Vary") == "Origin"
    other = trow.request("GET", "/v2/", headers=[("Origin", "https://evil.example")])
    assert other.status == 200 and other.header("Access-Control-Allow-Origin") is None
    # Caches must know the answer depends on Origin, also when a request sent none.
    assert other.header("Vary") == "Origin" and trow.request("GET", "/v2/").header("Vary") == "Origin"
    refused = trow.request("OPTIONS", "/v2/_catalog", headers=[("Origin", "https://evil.example"), ("Access-Control-Request-Method", "GET")])
    assert refused.header("Access-Control-Allow-Origin") is None and refused.status != 204
