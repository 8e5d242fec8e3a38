"""Control API: server + stdlib client over a real unix socket, with a fake provider."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from swarmd.config import ConfigError
from swarmd.control.client import ControlClient, ControlError
from swarmd.core.views import status_view
from tests.fakes.control import ALPHA, FakeProvider, ServerThread


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # unix socket paths are limited to ~107 bytes: pytest's tmp_path can be longer
    d = Path(tempfile.mkdtemp(prefix="swc", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def served(sock_dir: Path) -> Iterator[tuple[ControlClient, FakeProvider, Path]]:
    path = sock_dir / "run" / "swarmd.sock"
    provider = FakeProvider()
    reg = CollectorRegistry()
    Counter("swarmd_test_things", "things", registry=reg).inc(3)
    with ServerThread(path, provider, reg):
        yield ControlClient(path, timeout=5), provider, path


def test_status_round_trip_is_the_snapshot_document(served: tuple) -> None:
    client, provider, _ = served
    doc = client.status()
    assert doc == status_view(provider.snapshot)
    assert doc["node_id"] == ALPHA and doc["coordinator"]["epoch"] == 7
    assert [n["name"] for n in client.nodes()["nodes"]] == ["alpha", "beta", "gamma"]


def test_join_models_drain_leave(served: tuple) -> None:
    client, provider, _ = served
    assert client.join() == {"join": "swarmd --join swarmd1:AAAA"}
    assert client.models()["models"][0]["id"] == "llama-3-8b"
    assert client.drain(True) == {"ok": True, "draining": True}
    assert client.drain(False)["draining"] is False
    assert provider.drained == [True, False]
    assert client.leave()["leaving"] is True
    assert provider.left == 1


def test_metrics(served: tuple) -> None:
    client, _, path = served
    conn_client = ControlClient(path)
    from swarmd.control.client import UnixHTTPConnection

    conn = UnixHTTPConnection(str(conn_client.path), 5)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    assert resp.status == 200 and "swarmd_test_things_total 3.0" in body
    assert resp.getheader("Content-Type", "").startswith("text/plain")


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"on": "yes"}', b"{}", b"\xff\xfe"])
def test_malformed_drain_body_is_400(served: tuple, body: bytes) -> None:
    client, provider, path = served
    from swarmd.control.client import UnixHTTPConnection

    conn = UnixHTTPConnection(str(path), 5)
    conn.request("POST", "/v1/drain", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    import json

    doc = json.loads(resp.read())
    conn.close()
    assert resp.status == 400
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["type"] == "invalid_request_error"
    assert provider.drained == []


def test_unknown_path_and_wrong_method_are_json_errors(served: tuple) -> None:
    client, _, _ = served
    with pytest.raises(ControlError) as e:
        client.get("/v1/nope")
    assert e.value.status == 404 and e.value.exit_code == 1
    with pytest.raises(ControlError) as e:
        client.get("/v1/leave")
    assert e.value.status == 405


def test_provider_error_is_reported(served: tuple) -> None:
    client, provider, _ = served
    provider.fail = "membership not started"
    with pytest.raises(ControlError) as e:
        client.status()
    assert e.value.exit_code == 1 and e.value.status == 500
    assert "membership not started" in e.value.message
    with pytest.raises(ControlError) as e:
        client.leave()
    assert "membership not started" in e.value.message


def test_socket_mode_and_parent_dir(served: tuple) -> None:
    _, _, path = served
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_socket_removed_on_stop(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with ServerThread(path, FakeProvider()):
        assert path.exists()
    assert not path.exists()


def test_second_server_on_same_path_is_config_error(served: tuple) -> None:
    client, _, path = served
    with pytest.raises(ConfigError) as e:
        ServerThread(path, FakeProvider()).start()
    assert e.value.key == "control.socket"
    assert "another swarmd is running" in str(e.value)
    assert client.status()["name"] == "alpha"  # the first one still serves


def test_stale_socket_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: a crashed daemon's socket
    with pytest.raises(ControlError) as e:
        ControlClient(path).status()
    assert e.value.exit_code == 2 and "not running" in e.value.message
    with ServerThread(path, FakeProvider()):
        assert ControlClient(path).status()["name"] == "alpha"


def test_non_socket_file_is_not_removed(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        ServerThread(path, FakeProvider()).start()
    assert path.read_text() == "precious"


def test_client_missing_socket(sock_dir: Path) -> None:
    with pytest.raises(ControlError) as e:
        ControlClient(sock_dir / "none.sock").status()
    assert e.value.exit_code == 2
    assert e.value.message == f"swarmd is not running (no socket at {sock_dir / 'none.sock'})"


def test_no_metrics_route_without_registry(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with ServerThread(path, FakeProvider()):
        with pytest.raises(ControlError) as e:
            ControlClient(path).get("/metrics")
        assert e.value.status == 404


def test_oversized_body_is_413_json(served: tuple) -> None:
    _, provider, path = served
    import json

    from swarmd.control.client import UnixHTTPConnection

    conn = UnixHTTPConnection(str(path), 5)
    conn.request("POST", "/v1/drain", body=b'{"on": true, "pad": "' + b"x" * 70000 + b'"}')
    resp = conn.getresponse()
    doc = json.loads(resp.read())
    conn.close()
    assert resp.status == 413 and doc["error"]["type"] == "invalid_request_error"
    assert provider.drained == []


def test_slow_leave_answers_then_logs_late_failure(
    served: tuple, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    from swarmd.control import server

    client, provider, _ = served
    monkeypatch.setattr(server, "LEAVE_WAIT_S", 0.05)
    provider.leave_delay = 0.2
    provider.leave_error = "peers unreachable"
    t0 = time.perf_counter()
    with caplog.at_level("ERROR", logger="swarmd.control"):
        assert client.leave() == {"ok": True, "leaving": True}
        assert time.perf_counter() - t0 < 0.18  # answered before leave() finished
        deadline = time.monotonic() + 5
        while not any("leave failed" in r.message for r in caplog.records):
            assert time.monotonic() < deadline, "late leave failure was not logged"
            time.sleep(0.02)
    assert "peers unreachable" in caplog.text
