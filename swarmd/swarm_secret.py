"""The swarm secret: from config, from a file, or generated on first start.

Every node of a swarm shares one 32-byte secret; admission proves knowledge of
it.  With none configured, the first start writes a random one to
``data_dir/swarm.secret`` (mode 0600) and ``swarmctl join`` prints a line
carrying it to another machine.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from swarmd.config import Config, ConfigError, parse_secret

SECRET_FILE = "swarm.secret"


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
    cfg.node.data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value.hex() + "\n")
    os.replace(tmp, path)
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
