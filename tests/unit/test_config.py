"""Config loading: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from swarmd.config import Config, ConfigError, check_ports, from_mapping, load, to_toml
from swarmd.join_token import JoinTokenError, decode_join_token, encode_join_token

HEX = "ab" * 32


def test_no_file_gives_working_defaults() -> None:
    cfg = load(None)
    assert cfg.p2p.mdns is True
    assert cfg.api.listen == "127.0.0.1:4180"
    assert cfg.lease.duration > cfg.lease.renew_deadline > cfg.lease.retry_period
    assert cfg.node.name


def test_contract_keys(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        f"""
[node]
name = "n1"
data_dir = "{tmp_path}/d"
[p2p]
listen = ["/ip4/127.0.0.1/tcp/4101"]
seeds = ["/ip4/127.0.0.1/tcp/4100/p2p/12D3KooWGzh9L4aZJxmLX4Y4dbDSXW7tYNd6BLw9X6ZbxHdB3kXj", "10.0.0.2:4100"]
mdns = false
secret = "{HEX}"
[api]
listen = "127.0.0.1:8101"
[control]
socket = "{tmp_path}/s.sock"
[[engines]]
kind = "llamacpp"
url = "http://127.0.0.1:18111"
"""
    )
    cfg = load(f)
    assert cfg.node.name == "n1"
    assert cfg.p2p.seeds[1] == "10.0.0.2:4100"
    assert cfg.engines[0].kind == "llamacpp"
    assert cfg.control.socket == tmp_path / "s.sock"


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"p2p": {"lsten": []}}, "p2p.lsten"),
        ({"nodes": {}}, "nodes"),
        ({"p2p": {"listen": ["/ip4/1.2.3.4/udp/9"]}}, "p2p.listen[0]"),
        ({"p2p": {"listen": ["not-a-multiaddr"]}}, "p2p.listen[0]"),
        ({"p2p": {"seeds": ["ok:1", "bad host"]}}, "p2p.seeds[1]"),
        ({"p2p": {"seeds": ["h:99999"]}}, "p2p.seeds[0]"),
        ({"p2p": {"secret": "xyz"}}, "p2p.secret"),
        ({"p2p": {"mdns": "yes"}}, "p2p.mdns"),
        ({"api": {"listen": "8101"}}, "api.listen"),
        ({"lease": {"duration": 5.0, "renew_deadline": 10.0}}, "lease"),
        ({"engines": [{"kind": "ollama"}]}, "engines[0].url"),
        ({"engines": [{"kind": "ollama", "url": "ftp://x"}]}, "engines[0].url"),
        ({"engines": [{"kind": "openai", "url": "http://x", "api_key_env": "NOPE_NOT_SET_X"}]},
         "engines[0].api_key_env"),
        ({"membership": {"profile": "moon"}}, "membership.profile"),
        ({"membership": {"overrides": {"warp": 1}}}, "membership.overrides.warp"),
        ({"log": {"level": "loud"}}, "log.level"),
        ({"api": {"backlog": 0}}, "api.backlog"),
        ({"dataplane": {"backlog": 70000}}, "dataplane.backlog"),
    ],
)
def test_errors_name_the_key(doc: dict, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        from_mapping(doc)
    assert ei.value.key == key
    assert key in str(ei.value)


def test_port_taken_names_key() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = from_mapping({"api": {"listen": f"127.0.0.1:{port}"}})
        with pytest.raises(ConfigError) as ei:
            check_ports(cfg)
        assert ei.value.key == "api.listen"
        assert "already taken" in str(ei.value)


def test_print_config_round_trips_and_masks_secret() -> None:
    cfg = from_mapping({"p2p": {"secret": HEX}, "engines": [{"kind": "vllm", "url": "http://h:8000"}]})
    text = to_toml(cfg)
    assert HEX not in text
    import tomllib

    doc = tomllib.loads(text)
    doc["p2p"]["secret"] = HEX
    again = from_mapping(doc)
    assert again.engines[0].url == "http://h:8000"
    assert isinstance(again, Config)


def test_daemon_exits_2_on_bad_config(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[p2p]\nlisten = ["/ip4/127.0.0.1/tcpp/1"]\n')
    r = subprocess.run(
        [sys.executable, "-m", "swarmd.daemon", "--config", str(f)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    assert "p2p.listen[0]" in r.stderr


def test_daemon_exits_2_on_bad_toml(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[p2p\n")
    r = subprocess.run(
        [sys.executable, "-m", "swarmd.daemon", "--config", str(f)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    assert "not valid TOML" in r.stderr


def test_join_token_round_trip() -> None:
    secret = bytes(range(32))
    tok = encode_join_token(secret, ["/ip4/10.0.0.1/tcp/4100/p2p/12D3KooX"])
    back = decode_join_token(tok)
    assert back.secret == secret and back.seeds == ("/ip4/10.0.0.1/tcp/4100/p2p/12D3KooX",)
    for bad in ["", "swarmd1:!!!", "swarmd2:abc", tok[:-6]]:
        with pytest.raises(JoinTokenError):
            decode_join_token(bad)
