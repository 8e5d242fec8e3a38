"""swarmd's command line: config errors exit 2, a join token is kept."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from swarmd.config import load
from swarmd.daemon import _apply_flags, _parser, main
from swarmd.join_token import encode_join_token
from swarmd.swarm_secret import load_secret


def test_unknown_engine_kind_is_a_config_error_naming_the_key(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[engines]]\nkind = "lamacpp"\nurl = "http://127.0.0.1:8080"\n')
    assert main(["--config", str(cfg), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swarmd: config error at engines[0].kind: unknown engine kind 'lamacpp'")
    assert "llamacpp" in err and "Traceback" not in err


def test_bad_capability_is_a_config_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[engines]]\nkind = "llamacpp"\nurl = "http://127.0.0.1:8080"\n'
                   'capabilities = ["chat", "vision"]\n')
    assert main(["--config", str(cfg), "--print-config"]) == 2
    assert "engines[0].capabilities[1]" in capsys.readouterr().err


def test_unknown_kind_exit_code_from_the_real_binary(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[engines]]\nkind = "nope"\nurl = "http://127.0.0.1:8080"\n')
    r = subprocess.run([sys.executable, "-m", "swarmd.daemon", "--config", str(cfg),
                        "--data-dir", str(tmp_path / "d")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_join_once_stay_joined(tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret = bytes(range(32))
    token = encode_join_token(secret, ["10.0.0.1:4100", "10.0.0.2:4101"])
    ns = _parser().parse_args(["--data-dir", str(data), "--join", token])
    cfg = _apply_flags(load(None), ns)
    assert cfg.p2p.secret == secret.hex()
    from swarmd.swarm_secret import save_join

    save_join(data, secret, ("10.0.0.1:4100", "10.0.0.2:4101"))
    assert stat.S_IMODE((data / "swarm.secret").stat().st_mode) == 0o600
    # Restart with no flags: the saved secret and seeds.
    ns = _parser().parse_args(["--data-dir", str(data)])
    cfg = _apply_flags(load(None), ns)
    assert cfg.p2p.seeds == ("10.0.0.1:4100", "10.0.0.2:4101")
    assert load_secret(cfg)[0] == secret
    # A configured secret is someone else's choice: saved seeds are not added.
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text(json.dumps({}).replace("{}", f'[p2p]\nsecret = "{"ab" * 32}"\n'))
    cfg = _apply_flags(load(cfgfile), _parser().parse_args(["--data-dir", str(data)]))
    assert cfg.p2p.seeds == ()


def test_main_with_join_saves_the_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    token = encode_join_token(b"\x07" * 32, ["127.0.0.1:1"])
    # --print-config exits before anything is written ...
    assert main(["--data-dir", str(data), "--join", token, "--print-config"]) == 0
    assert not (data / "swarm.secret").exists()
