"""Admission state machines, against the golden vectors in protocol/vectors/admission.json."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import msgpack
import pytest

from swarmd.core import admission as ad
from swarmd.identity import Identity

V = json.loads((Path(__file__).parents[2] / "protocol/vectors/admission.json").read_text())
SECRET = bytes.fromhex(V["secret"])
A, B = V["initiator_id"], V["responder_id"]
NA, NB = bytes.fromhex(V["nonce_a"]), bytes.fromhex(V["nonce_b"])
MSG = {k: bytes.fromhex(v) for k, v in V["messages"].items()}
C = Identity.generate().peer_id


def _lp(s: str) -> bytes:
    return len(s).to_bytes(2, "big") + s.encode()


def test_vector_ids_follow_from_seeds() -> None:
    assert Identity.from_private_bytes(bytes.fromhex(V["initiator_seed"])).peer_id == A
    assert Identity.from_private_bytes(bytes.fromhex(V["responder_seed"])).peer_id == B


def test_macs_and_swarm_id_match_the_spec_formula() -> None:
    assert ad.swarm_id(SECRET) == V["swarm_id"]
    assert hashlib.sha256(b"swarmd-swarm-id|" + SECRET).hexdigest()[:16] == V["swarm_id"]
    resp = hmac.new(SECRET, b"swarmd-admit-v1|resp|" + _lp(B) + _lp(A) + NA + NB,
                    hashlib.sha256).hexdigest()
    init = hmac.new(SECRET, b"swarmd-admit-v1|init|" + _lp(A) + _lp(B) + NA + NB,
                    hashlib.sha256).hexdigest()
    assert resp == V["mac_resp"] and init == V["mac_init"]
    assert ad.responder_mac(SECRET, B, A, NA, NB).hex() == resp
    assert ad.initiator_mac(SECRET, A, B, NA, NB).hex() == init


def test_golden_exchange_bytes() -> None:
    ini = ad.Initiator(SECRET, A, B, NA)
    res = ad.Responder(SECRET, B, A, NB)
    assert ini.hello() == MSG["hello"]
    assert res.on_hello(MSG["hello"]) == MSG["chal"]
    assert ini.on_challenge(MSG["chal"]) == MSG["proof"]
    assert res.on_proof(MSG["proof"]) == MSG["ok"]
    ini.on_result(MSG["ok"])
    assert ini.admitted and res.admitted
    assert ad.fail_message("swarm") == MSG["fail_swarm"]
    assert ad.fail_message("mac") == MSG["fail_mac"]
    assert msgpack.unpackb(MSG["hello"]) == {"v": 1, "t": "hello", "n": NA, "s": V["swarm_id"]}


def _run(secret_a: bytes, secret_b: bytes) -> tuple[ad.Initiator, ad.Responder, bytes]:
    ini = ad.Initiator(secret_a, A, B, NA)
    res = ad.Responder(secret_b, B, A, NB)
    return ini, res, res.on_hello(ini.hello())


def test_good_secret_admits_both() -> None:
    ini, res, chal = _run(SECRET, SECRET)
    res.on_proof(ini.on_challenge(chal))
    assert res.admitted


def test_wrong_secret_refused_at_hello_with_reason() -> None:
    ini = ad.Initiator(bytes(32), A, B, NA)
    res = ad.Responder(SECRET, B, A, NB)
    with pytest.raises(ad.AdmissionError) as e:
        res.on_hello(ini.hello())
    assert e.value.reason == "swarm" and e.value.reply == MSG["fail_swarm"]
    with pytest.raises(ad.AdmissionError) as e2:
        ini.on_challenge(e.value.reply)
    assert e2.value.reason == "refused" and "swarm" in str(e2.value)
    assert not ini.admitted and not res.admitted


def test_wrong_secret_with_forged_swarm_id_fails_on_mac_both_ways() -> None:
    # An attacker who copies the public swarm id from mDNS still cannot prove the secret.
    evil = bytes(32)
    hello = msgpack.packb({"v": 1, "t": "hello", "n": NA, "s": ad.swarm_id(SECRET)})
    res = ad.Responder(SECRET, B, A, NB)
    chal = res.on_hello(hello)
    ini = ad.Initiator(evil, A, B, NA)
    ini.hello()
    with pytest.raises(ad.AdmissionError) as e:  # initiator sees B's MAC is not its swarm's
        ini.on_challenge(chal)
    assert e.value.reason == "mac"
    forged = msgpack.packb({"v": 1, "t": "proof", "m": ad.initiator_mac(evil, A, B, NA, NB)})
    with pytest.raises(ad.AdmissionError) as e2:
        res.on_proof(forged)
    assert e2.value.reason == "mac" and e2.value.reply == MSG["fail_mac"]


def test_replayed_transcript_with_other_ids_fails() -> None:
    # C replays A's recorded proof to B: B computes the MAC over C's Noise id.
    res = ad.Responder(SECRET, B, C, NB)
    res.on_hello(MSG["hello"])
    with pytest.raises(ad.AdmissionError) as e:
        res.on_proof(MSG["proof"])
    assert e.value.reason == "mac"
    # Swapped roles: B's responder MAC presented as an initiator proof (reflection).
    res2 = ad.Responder(SECRET, A, B, NB)
    res2.on_hello(MSG["hello"])
    reflected = msgpack.packb({"v": 1, "t": "proof", "m": bytes.fromhex(V["mac_resp"])})
    with pytest.raises(ad.AdmissionError):
        res2.on_proof(reflected)
    # A relay: A thinks it talks to C, but the challenge was made by B for A.
    ini = ad.Initiator(SECRET, A, C, NA)
    ini.hello()
    with pytest.raises(ad.AdmissionError) as e3:
        ini.on_challenge(MSG["chal"])
    assert e3.value.reason == "mac"


def test_replay_with_new_nonce_fails() -> None:
    res = ad.Responder(SECRET, B, A, b"\xcc" * 32)  # fresh nonce_b
    res.on_hello(MSG["hello"])
    with pytest.raises(ad.AdmissionError):
        res.on_proof(MSG["proof"])


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x93\x01\x02\x03", msgpack.packb({"v": 2, "t": "hello"}),
    msgpack.packb({"v": 1, "t": "proof"}), msgpack.packb({"v": 1, "t": "hello", "n": b"short"}),
    msgpack.packb({"v": 1, "t": "hello", "n": b"x" * 32, "s": "x" * 300}),
    msgpack.packb({1: 2}), b"\x84" + b"\xa1v" * 200,
])
def test_malformed_hello_is_refused_not_crashing(data: bytes) -> None:
    res = ad.Responder(SECRET, B, A, NB)
    with pytest.raises(ad.AdmissionError) as e:
        res.on_hello(data)
    assert e.value.reason in ad.REASONS and e.value.reply is not None
    assert not res.admitted


def test_out_of_order_messages_are_state_errors() -> None:
    ini = ad.Initiator(SECRET, A, B, NA)
    with pytest.raises(ad.AdmissionError, match="state"):
        ini.on_challenge(MSG["chal"])
    res = ad.Responder(SECRET, B, A, NB)
    with pytest.raises(ad.AdmissionError, match="state"):
        res.on_proof(MSG["proof"])
    with pytest.raises(ValueError):
        ad.Initiator(SECRET, A, B, b"short")


def test_initiator_refused_result() -> None:
    ini = ad.Initiator(SECRET, A, B, NA)
    ini.hello()
    ini.on_challenge(MSG["chal"])
    with pytest.raises(ad.AdmissionError, match="refused"):
        ini.on_result(MSG["fail_mac"])
    assert not ini.admitted
