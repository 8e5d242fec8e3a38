"""The swarm secret: from config, from a file, or generated on first start.

Every node of a swarm shares one 32-byte secret; admission proves knowledge of
it.  With none configured, the first start writes a random one to
``data_dir/swarm.secret`` (mode 0600) and ``swarmctl join`` prints a line
carrying it to another machine.

Join once, stay joined: ``swarmd --join TOKEN`` writes the token's secret to
``data_dir/swarm.secret`` and its seeds to ``data_dir/join-seeds`` (one per
line), so a later start with no flags rejoins the same swarm.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from swarmd.config import Config, ConfigError, parse_secret

SECRET_FILE = "swarm.secret"
SEEDS_FILE = "join-seeds"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_join(data_dir: Path, secret: bytes, seeds: tuple[str, ...]) -> None:
    """Keep a join token's secret and seeds in ``data_dir`` (mode 0600)."""
    try:
        _write_private(data_dir / SECRET_FILE, secret.hex() + "\n")
        _write_private(data_dir / SEEDS_FILE, "".join(s + "\n" for s in seeds))
    except OSError as exc:
        raise ConfigError("node.data_dir",
                          f"cannot save the join token in {data_dir}: {exc.strerror}") from None


def saved_seeds(data_dir: Path) -> tuple[str, ...]:
    """Seeds saved by an earlier ``--join`` (empty when none)."""
    try:
        text = (data_dir / SEEDS_FILE).read_text()
    except OSError:
        return ()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def load_secret(cfg: Config) -> tuple[bytes, str]:
    """(secret bytes, where it came from) for this node."""
    if cfg.p2p.secret:
        return parse_secret(cfg.p2p.secret), "config"
    if cfg.p2p.secret_file:
        path = Path(cfg.p2p.secret_file).expanduser()
        return _read(path, "p2p.secret_file"), str(path)
    path = cfg.node.data_dir / SECRET_FILE
    if path.exists():
        return _read(path, "node.data_dir"), str(path)
    value = secrets.token_bytes(32)
    _write_private(path, value.hex() + "\n")
    return value, f"{path} (generated)"


def _read(path: Path, key: str) -> bytes:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(key, f"cannot read secret file {path}: {exc.strerror}") from None
    try:
        return parse_secret(text)
    except ValueError as exc:
        raise ConfigError(key, f"secret file {path}: {exc}") from None
