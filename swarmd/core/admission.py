"""Swarm admission: a challenge-response proving both ends know the swarm secret.

Theory of operation
-------------------
Noise has already authenticated both libp2p peer ids when admission starts;
admission adds "and this peer belongs to my swarm".  The dialer (initiator,
A) and the listener (responder, B) each prove knowledge of the 32-byte swarm
secret with an HMAC-SHA256 over a transcript that names both peer ids, in
role order, and both fresh 32-byte nonces::

    A -> B  hello      {v: 1, t: "hello", n: nonce_a, s: swarm_id}
    B -> A  challenge  {v: 1, t: "chal",  n: nonce_b, m: mac_resp}
    A -> B  proof      {v: 1, t: "proof", m: mac_init}
    B -> A  result     {v: 1, t: "ok"}  |  {v: 1, t: "fail", r: reason}

    mac_resp = HMAC(secret, "swarmd-admit-v1|resp|" + lp(id_B) + lp(id_A) + nonce_a + nonce_b)
    mac_init = HMAC(secret, "swarmd-admit-v1|init|" + lp(id_A) + lp(id_B) + nonce_a + nonce_b)
    lp(s)    = 2-byte big-endian length + UTF-8 bytes

Why it holds: a recorded transcript is useless later (fresh nonces on both
sides), useless between other peers (both Noise-authenticated ids are in the
MAC: a relay that is not B cannot present B's id), and a MAC cannot be
reflected back (distinct "resp"/"init" labels).  MACs are compared in
constant time.  The swarm id lets a responder turn away a node of another
swarm without any MAC work and with a clear reason; it is the first 8 bytes
of SHA-256("swarmd-swarm-id|" + secret), which is safe to publish because the
secret is 32 random bytes.

Messages are msgpack maps (keys in the order shown), at most
:data:`MAX_MESSAGE` bytes.  A responder that refuses a peer first hands it a
``fail`` message (:attr:`AdmissionError.reply`) so the other side can log why.
This module is sans-IO: the caller moves the bytes, draws the nonces and
enforces deadlines.  Spec and golden vectors: protocol/admission.md,
protocol/vectors/admission.json.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgpack

VERSION = 1
PROTOCOL_ID = "/swarmd/admit/1.0.0"
NONCE_LEN = 32
MAC_LEN = 32
MAX_MESSAGE = 256

_RESP_LABEL = b"swarmd-admit-v1|resp|"
_INIT_LABEL = b"swarmd-admit-v1|init|"
_SWARM_LABEL = b"swarmd-swarm-id|"

#: Failure reasons carried in ``fail`` messages and :attr:`AdmissionError.reason`.
REASONS = ("malformed", "version", "swarm", "mac", "state", "refused")


class AdmissionError(Exception):
    """Admission failed.  ``reason`` is one of :data:`REASONS`; ``reply`` is a
    ``fail`` message to send to the peer before closing (responder only)."""

    def __init__(self, reason: str, detail: str, reply: bytes | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.reply = reply


def swarm_id(secret: bytes) -> str:
    """Public 16-hex-digit name of the swarm a secret defines."""
    return hashlib.sha256(_SWARM_LABEL + secret).digest()[:8].hex()


def _lp(peer_id: str) -> bytes:
    raw = peer_id.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("peer id too long")
    return len(raw).to_bytes(2, "big") + raw


def responder_mac(secret: bytes, responder: str, initiator: str, nonce_a: bytes,
                  nonce_b: bytes) -> bytes:
    msg = _RESP_LABEL + _lp(responder) + _lp(initiator) + nonce_a + nonce_b
    return hmac.new(secret, msg, hashlib.sha256).digest()


def initiator_mac(secret: bytes, initiator: str, responder: str, nonce_a: bytes,
                  nonce_b: bytes) -> bytes:
    msg = _INIT_LABEL + _lp(initiator) + _lp(responder) + nonce_a + nonce_b
    return hmac.new(secret, msg, hashlib.sha256).digest()


def _pack(doc: dict[str, Any]) -> bytes:
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def fail_message(reason: str) -> bytes:
    return _pack({"v": VERSION, "t": "fail", "r": reason})


def _unpack(data: bytes, expect: tuple[str, ...]) -> dict[str, Any]:
    """Decode one message; raise AdmissionError unless it is a v1 map of an expected type."""
    if len(data) > MAX_MESSAGE:
        raise AdmissionError("malformed", f"message of {len(data)} bytes")
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_MESSAGE,
                              max_str_len=MAX_MESSAGE, max_array_len=16, max_map_len=16)
    except Exception:
        raise AdmissionError("malformed", "not msgpack") from None
    if not isinstance(doc, dict):
        raise AdmissionError("malformed", "not a map")
    if doc.get("v") != VERSION:
        raise AdmissionError("version", f"unsupported version {doc.get('v')!r}")
    t = doc.get("t")
    if t == "fail" and "fail" not in expect:
        r = doc.get("r")
        raise AdmissionError("refused", f"peer refused us ({r if isinstance(r, str) else '?'})")
    if t not in expect:
        raise AdmissionError("malformed", f"unexpected message type {t!r}")
    return doc


def _bin(doc: dict[str, Any], key: str, size: int) -> bytes:
    v = doc.get(key)
    if not isinstance(v, bytes) or len(v) != size:
        raise AdmissionError("malformed", f"field {key!r} must be {size} bytes")
    return v


class Initiator:
    """The dialer's side: hello -> (challenge) -> proof -> (result)."""

    def __init__(self, secret: bytes, local_id: str, remote_id: str, nonce: bytes) -> None:
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"nonce must be {NONCE_LEN} bytes")
        self._secret = secret
        self._local = local_id
        self._remote = remote_id
        self._nonce_a = nonce
        self._state = "start"

    @property
    def admitted(self) -> bool:
        return self._state == "done"

    def hello(self) -> bytes:
        if self._state != "start":
            raise AdmissionError("state", "hello already sent")
        self._state = "hello"
        return _pack({"v": VERSION, "t": "hello", "n": self._nonce_a,
                      "s": swarm_id(self._secret)})

    def on_challenge(self, data: bytes) -> bytes:
        """Check the responder's proof; return ours (the ``proof`` message)."""
        if self._state != "hello":
            raise AdmissionError("state", "challenge not expected now")
        self._state = "failed"
        doc = _unpack(data, ("chal",))
        nonce_b = _bin(doc, "n", NONCE_LEN)
        mac = _bin(doc, "m", MAC_LEN)
        want = responder_mac(self._secret, self._remote, self._local, self._nonce_a, nonce_b)
        if not hmac.compare_digest(mac, want):
            raise AdmissionError("mac", "the peer does not know the swarm secret")
        self._state = "proved"
        return _pack({"v": VERSION, "t": "proof",
                      "m": initiator_mac(self._secret, self._local, self._remote,
                                         self._nonce_a, nonce_b)})

    def on_result(self, data: bytes) -> None:
        if self._state != "proved":
            raise AdmissionError("state", "result not expected now")
        self._state = "failed"
        _unpack(data, ("ok",))
        self._state = "done"


class Responder:
    """The listener's side: (hello) -> challenge -> (proof) -> result."""

    def __init__(self, secret: bytes, local_id: str, remote_id: str, nonce: bytes) -> None:
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"nonce must be {NONCE_LEN} bytes")
        self._secret = secret
        self._local = local_id
        self._remote = remote_id
        self._nonce_b = nonce
        self._nonce_a = b""
        self._state = "start"

    @property
    def admitted(self) -> bool:
        return self._state == "done"

    def _fail(self, exc: AdmissionError) -> AdmissionError:
        self._state = "failed"
        reason = exc.reason if exc.reason != "refused" else "malformed"
        exc.reply = fail_message(reason)
        return exc

    def on_hello(self, data: bytes) -> bytes:
        """Check the hello; return the ``chal`` message."""
        if self._state != "start":
            raise self._fail(AdmissionError("state", "hello not expected now"))
        try:
            doc = _unpack(data, ("hello",))
            self._nonce_a = _bin(doc, "n", NONCE_LEN)
            theirs = doc.get("s")
            if theirs != swarm_id(self._secret):
                raise AdmissionError("swarm", f"peer belongs to swarm {theirs!r}")
        except AdmissionError as exc:
            raise self._fail(exc) from None
        self._state = "challenged"
        return _pack({"v": VERSION, "t": "chal", "n": self._nonce_b,
                      "m": responder_mac(self._secret, self._local, self._remote,
                                         self._nonce_a, self._nonce_b)})

    def on_proof(self, data: bytes) -> bytes:
        """Check the initiator's proof; return the ``ok`` message (peer admitted)."""
        if self._state != "challenged":
            raise self._fail(AdmissionError("state", "proof not expected now"))
        try:
            doc = _unpack(data, ("proof",))
            mac = _bin(doc, "m", MAC_LEN)
            want = initiator_mac(self._secret, self._remote, self._local, self._nonce_a,
                                 self._nonce_b)
            if not hmac.compare_digest(mac, want):
                raise AdmissionError("mac", "the peer does not know the swarm secret")
        except AdmissionError as exc:
            raise self._fail(exc) from None
        self._state = "done"
        return _pack({"v": VERSION, "t": "ok"})
