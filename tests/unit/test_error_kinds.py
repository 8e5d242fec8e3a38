"""The one error-kind table (swarmd.core.error_kinds) against the wire and HTTP."""

from swarmd.core import forward_wire as fw
from swarmd.core.error_kinds import KINDS, from_wire, kind_of_status, to_wire


def test_every_kind_travels_and_comes_back_the_same() -> None:
    for name, kind in KINDS.items():
        assert kind.wire in fw.ERROR_CODES
        assert from_wire(to_wire(name)) == name


def test_every_wire_code_has_a_kind() -> None:
    for code in fw.ERROR_CODES:
        assert from_wire(code) in KINDS


def test_engine_statuses() -> None:
    assert kind_of_status(429) == "saturated"
    assert kind_of_status(503) == "unavailable"
    assert kind_of_status(500) == kind_of_status(501) == "upstream"
    assert kind_of_status(200) is None and kind_of_status(404) is None
    assert KINDS["timeout"].status == 504 and not KINDS["cancelled"].retry
