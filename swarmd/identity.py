"""This node's long-lived identity: an Ed25519 key in ``data_dir/identity.key``.

Theory of operation
-------------------
The libp2p peer id (``12D3KooW...``) is derived from the Ed25519 public key, so
the key *is* the node's name in the swarm: keep it and the node keeps its id
across restarts; lose it and the node comes back as a stranger.

* File: ``data_dir/identity.key``, PKCS#8 PEM (``openssl pkey -in identity.key
  -noout -text`` reads it), mode 0600, in a directory created 0700.
* First start: the key is written to a temporary file opened ``O_EXCL`` with
  mode 0600, fsynced, then hard-linked to the final name.  ``link`` fails if
  the name exists, so two daemons racing on one data_dir end up with the same
  key (the loser loads the winner's) and a crash never leaves a half-written
  key under the final name.
* Policy on load: a key file that group or others can read or write is
  refused (like OpenSSH does with private keys) with an error that says the
  ``chmod`` to run; so is a file that cannot be read or parsed, or that holds
  a key that is not Ed25519.  The daemon never silently replaces a bad key:
  that would change the node's id behind the operator's back.

The peer id is computed here without libp2p (identity multihash of the
protobuf-encoded public key, base58btc) so that light tools can show it; the
libp2p ``KeyPair`` is built on demand by :meth:`Identity.libp2p_keypair`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from swarmd.config import ConfigError

KEY_FILE = "identity.key"

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class IdentityError(ConfigError):
    """The identity key cannot be used; the message says why and what to do."""

    def __init__(self, problem: str) -> None:
        super().__init__("node.data_dir", problem)


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def peer_id_from_public(public_raw: bytes) -> str:
    """libp2p peer id of an Ed25519 public key (32 raw bytes).

    PublicKey protobuf: field 1 (Type) = 1 (Ed25519), field 2 (Data) = key;
    it is 36 bytes, short enough to be inlined with the identity multihash
    (code 0x00, length 0x24).
    """
    if len(public_raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    proto = b"\x08\x01\x12\x20" + public_raw
    return _b58encode(b"\x00" + bytes([len(proto)]) + proto)


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair and the libp2p peer id it names."""

    private_bytes: bytes  # 32-byte Ed25519 seed
    public_bytes: bytes  # 32-byte Ed25519 public key
    peer_id: str
    path: Path | None = field(default=None, compare=False)

    @classmethod
    def from_private_bytes(cls, seed: bytes, path: Path | None = None) -> Identity:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        pub = key.public_key().public_bytes_raw()
        return cls(private_bytes=seed, public_bytes=pub, peer_id=peer_id_from_public(pub),
                   path=path)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity (tests, ephemeral nodes)."""
        return cls.from_private_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes_raw())

    def libp2p_keypair(self) -> Any:
        """The ``libp2p.crypto.keys.KeyPair`` for this identity."""
        from libp2p.crypto.ed25519 import create_new_key_pair

        return create_new_key_pair(self.private_bytes)

    def to_pem(self) -> bytes:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(self.private_bytes)
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _parse(path: Path, data: bytes) -> Identity:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(
            f"identity key {path} is corrupt ({exc}); restore it from a backup, or delete "
            "it to start as a new node (the node gets a new peer id)"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(f"identity key {path} is not an Ed25519 key")
    return Identity.from_private_bytes(key.private_bytes_raw(), path)


def load_identity(path: Path) -> Identity:
    """Load an existing key file, enforcing the permission policy."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise IdentityError(f"cannot read identity key {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"identity key {path} is not a regular file")
        if st.st_mode & 0o077:
            raise IdentityError(
                f"identity key {path} is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        try:
            data = os.read(fd, 64 * 1024)
        except OSError as exc:
            raise IdentityError(f"cannot read identity key {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return _parse(path, data)


def load_or_create_identity(data_dir: Path) -> Identity:
    """This node's identity from ``data_dir/identity.key``; created on first start."""
    data_dir = Path(data_dir).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    path = data_dir / KEY_FILE
    if os.path.lexists(path):
        return load_identity(path)
    ident = Identity.generate()
    tmp = data_dir / f".{KEY_FILE}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, ident.to_pem())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_identity(path)  # another process won the race
    except OSError as exc:
        raise IdentityError(f"cannot write identity key {path}: {exc.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    _fsync_dir(data_dir)
    return Identity.from_private_bytes(ident.private_bytes, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
