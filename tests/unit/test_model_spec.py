"""Source spec grammar: the golden vectors in protocol/vectors/models/specs.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmd.models import spec as S

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "protocol/vectors/models/specs.json").read_text())


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["text"])
def test_valid_specs(case: dict) -> None:
    got = S.parse_spec(case["text"])
    assert type(got).__name__ == case["kind"]
    assert vars(got) == case["fields"]
    assert S.format_spec(got) == case["canonical"]
    assert S.parse_spec(S.format_spec(got)) == got  # canonical form round-trips


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: repr(c["text"]))
def test_invalid_specs_say_why(case: dict) -> None:
    with pytest.raises(S.SpecError) as err:
        S.parse_spec(case["text"])
    assert str(err.value) == case["error"]


def test_names() -> None:
    assert S.valid_name("gemma3:270m") and S.valid_name("google/gemma-3-270m-GGUF:Q4_K_M")
    for bad in ("", "../x", "a//b", "-x", "a b", "x" * 200):
        assert not S.valid_name(bad)
