"""Identity key: created 0600 and atomically, reloaded with the same id, bad files refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from swarmd.config import ConfigError
from swarmd.identity import KEY_FILE, Identity, IdentityError, load_or_create_identity


def test_created_0600_and_reloaded_same_id(tmp_path: Path) -> None:
    d = tmp_path / "data" / "nested"
    ident = load_or_create_identity(d)
    key = d / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert ident.peer_id.startswith("12D3KooW") and len(ident.private_bytes) == 32
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_identity(d)
    assert again == ident
    assert [p.name for p in d.iterdir()] == [KEY_FILE]  # no temp file left behind


def test_peer_id_matches_libp2p(tmp_path: Path) -> None:
    from libp2p.peer.id import ID

    ident = load_or_create_identity(tmp_path)
    kp = ident.libp2p_keypair()
    assert str(ID.from_pubkey(kp.public_key)) == ident.peer_id
    assert kp.public_key.to_bytes() == ident.public_bytes


def test_fixed_seed_gives_fixed_id() -> None:
    # Also pinned in protocol/vectors/admission.json.
    ident = Identity.from_private_bytes(b"\x01" * 32)
    assert ident.peer_id == "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    key = tmp_path / KEY_FILE
    key.write_bytes(b"not a key\n")
    key.chmod(0o600)
    with pytest.raises(IdentityError, match="is corrupt") as e:
        load_or_create_identity(tmp_path)
    assert isinstance(e.value, ConfigError) and e.value.key == "node.data_dir"
    assert key.read_bytes() == b"not a key\n"  # never silently replaced


def test_non_ed25519_key_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    key = tmp_path / KEY_FILE
    key.write_bytes(pem)
    key.chmod(0o600)
    with pytest.raises(IdentityError, match="not an Ed25519 key"):
        load_or_create_identity(tmp_path)


def test_group_readable_key_refused_with_fix(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    key = tmp_path / KEY_FILE
    key.chmod(0o644)
    with pytest.raises(IdentityError, match=r"mode 0644\); run: chmod 600"):
        load_or_create_identity(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key_is_a_clear_error(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    key = tmp_path / KEY_FILE
    key.chmod(0o000)
    with pytest.raises(IdentityError, match="cannot read identity key"):
        load_or_create_identity(tmp_path)


def test_dangling_symlink_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).symlink_to(tmp_path / "gone.key")
    with pytest.raises(IdentityError, match="cannot read identity key .*No such file"):
        load_or_create_identity(tmp_path)


def test_directory_in_place_of_key(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).mkdir(mode=0o700)
    with pytest.raises(IdentityError):
        load_or_create_identity(tmp_path)


def test_race_loser_loads_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    winner = Identity.generate()
    real_link = os.link

    def link_after_other_process(src: str, dst: str) -> None:
        # Another daemon creates the key between our exists-check and our link.
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, winner.to_pem())
        os.close(fd)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_other_process)
    assert load_or_create_identity(tmp_path).peer_id == winner.peer_id
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]
