"""API keys: their format, the replicated key table's entries, and scope rules (pure).

Theory of operation
-------------------
A key is ``sk-swarm-<id>_<secret>``: ``id`` (12 lowercase hex digits) names
its entry in the replicated ``keys`` table (:mod:`swarmd.core.replica`, last
writer wins, revocation a final tombstone), ``secret`` is 32 random bytes in
URL-safe base64.  The swarm stores only ``sha256(key)`` and a display prefix;
the key itself is shown once, when it is made.  Checking a presented key is a
dictionary lookup by id and one constant-time comparison of digests
(:func:`hmac.compare_digest`), so neither the lookup nor the comparison
tells an attacker how much of a guess was right.

Scopes (:data:`SCOPES`): ``inference`` (the client routes, limited to the
key's model globs), ``read`` (model lists, the key's own usage) and
``admin`` (keys, budgets, deployments; implies the other two).

The entry's value is a msgpack map (:func:`key_value`); :func:`parse_key`
reads one as untrusted input (a peer wrote it) and returns None for anything
malformed, which the table's ``validate`` hook turns into a dropped entry.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from swarmd.core.replica import TableSpec

__all__ = ["KEYS_TABLE", "KEY_PREFIX", "SCOPES", "KeyInfo", "check_secret", "key_id_of",
           "key_value", "make_key", "parse_key"]

KEY_PREFIX = "sk-swarm-"
SCOPES = ("inference", "read", "admin")
#: Name of the replicated table of keys.
KEYS_TABLE = "keys"
_KEY_RE = re.compile(r"^sk-swarm-([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_ID_RE = re.compile(r"^[0-9a-f]{12}$")
MAX_GLOBS = 32
MAX_FIELD = 128


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    hash: str  # sha256 of the whole key, hex
    prefix: str  # what lists show, e.g. "sk-swarm-3f2a9c01be77_Ab3d"
    scopes: tuple[str, ...]
    models: tuple[str, ...]  # globs; empty = every model
    user: str = ""
    project: str = ""
    rpm: int = 0  # requests per minute, swarm-wide; 0 = no limit
    tpm: int = 0  # tokens per minute, swarm-wide; 0 = no limit
    budget_tokens_day: int = 0
    budget_usd_day: float = 0.0
    budget_usd_month: float = 0.0
    created: float = 0.0  # unix seconds
    expires: float = 0.0  # unix seconds; 0 = never
    created_on: str = ""  # node id
    #: Nodes that mint this key's budget shares each period (escrow holders).
    holders: tuple[str, ...] = ()

    def allows_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def allows_model(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, g) for g in self.models)

    def expired(self, wall: float) -> bool:
        return bool(self.expires) and wall >= self.expires

    def public(self) -> dict[str, Any]:
        """What ``swarmctl keys list`` shows (never the hash)."""
        return {"id": self.id, "name": self.name, "prefix": self.prefix,
                "scopes": list(self.scopes), "models": list(self.models), "user": self.user,
                "project": self.project, "rpm": self.rpm, "tpm": self.tpm,
                "budget_tokens_day": self.budget_tokens_day,
                "budget_usd_day": self.budget_usd_day,
                "budget_usd_month": self.budget_usd_month, "created": self.created,
                "expires": self.expires or None, "created_on": self.created_on}


def make_key(random_id: bytes, random_secret: bytes) -> tuple[str, str]:
    """``(key_id, key)`` from 6 + 32 random bytes (the caller supplies them)."""
    if len(random_id) != 6 or len(random_secret) != 32:
        raise ValueError("need 6 id bytes and 32 secret bytes")
    kid = random_id.hex()
    secret = base64.urlsafe_b64encode(random_secret).rstrip(b"=").decode()
    return kid, f"{KEY_PREFIX}{kid}_{secret}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(presented: str) -> str | None:
    """The id part of a well-formed key, else None."""
    m = _KEY_RE.match(presented)
    return m.group(1) if m else None


def check_secret(info: KeyInfo, presented: str) -> bool:
    """Constant-time check of a presented key against the stored digest."""
    return hmac.compare_digest(info.hash.encode(), key_hash(presented).encode())


def key_value(*, key_id: str, key: str, name: str, scopes: Sequence[str],
              models: Sequence[str] = (), user: str = "", project: str = "", rpm: int = 0,
              tpm: int = 0, budget_tokens_day: int = 0, budget_usd_day: float = 0.0,
              budget_usd_month: float = 0.0, created: float = 0.0, expires: float = 0.0,
              created_on: str = "", holders: Sequence[str] = ()) -> dict[str, Any]:
    """The table value for a new key (raises ValueError on a bad argument)."""
    for s in scopes:
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r} (known: {', '.join(SCOPES)})")
    if not scopes:
        raise ValueError("a key needs at least one scope")
    if not name or len(name) > MAX_FIELD:
        raise ValueError("name must be 1-128 characters")
    for label, text in (("user", user), ("project", project)):
        if len(text) > MAX_FIELD:
            raise ValueError(f"{label} must be at most 128 characters")
    if len(models) > MAX_GLOBS:
        raise ValueError(f"at most {MAX_GLOBS} model globs")
    for label, n in (("rpm", rpm), ("tpm", tpm), ("budget_tokens_day", budget_tokens_day)):
        if n < 0:
            raise ValueError(f"{label} must be >= 0")
    for label, x in (("budget_usd_day", budget_usd_day), ("budget_usd_month", budget_usd_month)):
        if x < 0:
            raise ValueError(f"{label} must be >= 0")
    v: dict[str, Any] = {
        "name": name, "hash": key_hash(key), "prefix": key[:len(KEY_PREFIX) + 17],
        "scopes": list(scopes), "models": list(models), "created": float(created),
        "created_on": created_on,
    }
    for k, val in (("user", user), ("project", project), ("rpm", rpm), ("tpm", tpm),
                   ("budget_tokens_day", budget_tokens_day),
                   ("budget_usd_day", float(budget_usd_day)),
                   ("budget_usd_month", float(budget_usd_month)),
                   ("expires", float(expires)), ("holders", list(holders))):
        if val:
            v[k] = val
    assert parse_key(key_id, v) is not None
    return v


def _s(v: Any, default: str = "") -> str | None:
    if v is None:
        return default
    return v if isinstance(v, str) and len(v) <= MAX_FIELD else None


def _n(v: Any, kind: type) -> Any:
    if v is None:
        return kind(0)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        return None
    return kind(v) if kind is float else (v if isinstance(v, int) else None)


def parse_key(key_id: str, v: Mapping[str, Any]) -> KeyInfo | None:
    """A key entry's value, read as untrusted input; None if malformed."""
    if not _ID_RE.match(key_id):
        return None
    h = v.get("hash")
    if not isinstance(h, str) or not re.fullmatch(r"[0-9a-f]{64}", h):
        return None
    scopes, models, holders = v.get("scopes"), v.get("models", []), v.get("holders", [])
    if (not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes)
            or not isinstance(models, list) or len(models) > MAX_GLOBS
            or not all(isinstance(g, str) and 0 < len(g) <= MAX_FIELD for g in models)
            or not isinstance(holders, list) or len(holders) > 64
            or not all(isinstance(n, str) and 0 < len(n) <= 256 for n in holders)):
        return None
    strs = [_s(v.get(k)) for k in ("name", "prefix", "user", "project", "created_on")]
    nums = [_n(v.get(k), int) for k in ("rpm", "tpm", "budget_tokens_day")]
    floats = [_n(v.get(k), float) for k in ("budget_usd_day", "budget_usd_month", "created",
                                            "expires")]
    if any(x is None for x in (*strs, *nums, *floats)) or not strs[0]:
        return None
    name, prefix, user, project, created_on = (str(x) for x in strs)
    return KeyInfo(id=key_id, name=name, hash=h, prefix=prefix, scopes=tuple(scopes),
                   models=tuple(models), user=user, project=project, rpm=nums[0],
                   tpm=nums[1], budget_tokens_day=nums[2], budget_usd_day=floats[0],
                   budget_usd_month=floats[1], created=floats[2], expires=floats[3],
                   created_on=created_on, holders=tuple(holders))


def keys_spec() -> TableSpec:
    """The key table: LWW by HLC, revocation final, entries validated on arrival."""
    return TableSpec(KEYS_TABLE, kind="lww", final_tombstones=True, max_entries=50_000,
                     validate=lambda k, v: parse_key(k, v) is not None)
