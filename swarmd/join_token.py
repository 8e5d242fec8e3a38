"""Join tokens: one string that carries the swarm secret and seed addresses.

``swarmctl join`` prints ``swarmd --join swarmd1:<base64url>``; the token is
msgpack ``{"v": 1, "secret": bytes(32), "seeds": [multiaddr, ...]}``.  Treat a
token like a password: whoever holds it can join the swarm.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

PREFIX = "swarmd1:"


class JoinTokenError(ValueError):
    pass


@dataclass(frozen=True)
class JoinToken:
    secret: bytes
    seeds: tuple[str, ...]


def encode_join_token(secret: bytes, seeds: Sequence[str]) -> str:
    raw = msgpack.packb({"v": 1, "secret": secret, "seeds": list(seeds)}, use_bin_type=True)
    return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_join_token(token: str) -> JoinToken:
    token = token.strip()
    if not token.startswith(PREFIX):
        raise JoinTokenError(f"a join token starts with {PREFIX!r}")
    body = token[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        doc = msgpack.unpackb(raw, raw=False)
    except Exception:
        raise JoinTokenError("the join token is corrupt (bad base64 or msgpack)") from None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise JoinTokenError("unsupported join token version")
    secret, seeds = doc.get("secret"), doc.get("seeds")
    if not isinstance(secret, bytes) or len(secret) != 32:
        raise JoinTokenError("the join token carries no valid secret")
    if not isinstance(seeds, list) or not all(isinstance(s, str) for s in seeds):
        raise JoinTokenError("the join token carries no valid seed list")
    return JoinToken(secret=secret, seeds=tuple(seeds))
