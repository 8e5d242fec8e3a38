"""swarmd.usage.prices: [[prices]] parsing, first-match globs, cost and micro-USD."""

from __future__ import annotations

import pytest
import tomli

from swarmd.config import ConfigError
from swarmd.usage.prices import (
    Price,
    PriceBook,
    from_micro,
    parse_prices,
    to_micro,
)

TOML = """
[[prices]]
model = "gpt-4o-mini*"
input = 0.15
output = 0.6

[[prices]]
model = "gpt-4o*"
input = 2.5
output = 10

[[prices]]
model = "local-free"

[[prices]]
model = "claude-?-[hs]*"
output = 15
"""


def test_parse_from_toml_in_order_with_defaults() -> None:
    prices = parse_prices(tomli.loads(TOML)["prices"])
    assert prices == (
        Price("gpt-4o-mini*", 0.15, 0.6),
        Price("gpt-4o*", 2.5, 10.0),
        Price("local-free", 0.0, 0.0),
        Price("claude-?-[hs]*", 0.0, 15.0),
    )
    assert all(isinstance(p.usd_per_1m_output, float) for p in prices)
    assert parse_prices([]) == ()


@pytest.mark.parametrize(("raw", "key", "words"), [
    ({"model": "m"}, "prices", "array of tables"),
    (["m"], "prices[0]", "expected a table"),
    ([{"model": "a"}, {"input": 1}], "prices[1].model", "missing"),
    ([{"model": 3}], "prices[0].model", "non-empty"),
    ([{"model": "  "}], "prices[0].model", "non-empty"),
    ([{"model": "a"}, {"model": "b"}, {"model": "c", "input": -1}], "prices[2].input",
     "must be a non-negative number"),
    ([{"model": "a", "output": "1.5"}], "prices[0].output", "non-negative number"),
    ([{"model": "a", "output": True}], "prices[0].output", "non-negative number"),
    ([{"model": "a", "input": float("nan")}], "prices[0].input", "non-negative number"),
    ([{"model": "a", "input": float("inf")}], "prices[0].input", "non-negative number"),
    ([{"model": "a", "inptu": 1}], "prices[0].inptu", "unknown key"),
])
def test_bad_prices_name_the_key(raw: object, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_prices(raw)
    assert ei.value.key == key
    assert words in ei.value.problem
    assert str(ei.value).startswith(f"config error at {key}: ")


def test_first_matching_glob_wins_and_is_case_sensitive() -> None:
    book = PriceBook(parse_prices(tomli.loads(TOML)["prices"]))
    assert book.price_of("gpt-4o-mini-2024-07-18") == Price("gpt-4o-mini*", 0.15, 0.6)
    assert book.price_of("gpt-4o") == Price("gpt-4o*", 2.5, 10.0)
    assert book.price_of("GPT-4o") is None
    assert book.price_of("claude-3-haiku") == Price("claude-?-[hs]*", 0.0, 15.0)
    assert book.price_of("claude-3-opus") is None
    assert book.price_of("llama-3-8b") is None
    # the broad glob first shadows the specific one
    shadowed = PriceBook([Price("gpt-4o*", 2.5, 10), Price("gpt-4o-mini*", 0.15, 0.6)])
    assert shadowed.price_of("gpt-4o-mini").usd_per_1m_input == 2.5  # type: ignore[union-attr]


def test_cost_and_worst_case() -> None:
    book = PriceBook([Price("gpt-4o-mini*", 0.15, 0.6), Price("free", 0, 0)])
    assert book.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert book.cost("gpt-4o-mini", 1000, 500) == pytest.approx((1000 * 0.15 + 500 * 0.6) / 1e6)
    assert book.cost("llama-3-8b", 10**9, 10**9) == 0.0  # unpriced: local models cost 0
    assert book.cost("free", 10**6, 10**6) == 0.0
    assert book.worst_case_cost("gpt-4o-mini", 1000, 4000) == book.cost("gpt-4o-mini", 1000, 4000)
    assert book.worst_case_cost("llama-3-8b", 1000, 4000) == 0.0


def test_micro_usd() -> None:
    assert to_micro(0.15) == 150_000
    assert to_micro(1e-7) == 0 and to_micro(6e-7) == 1
    assert to_micro(0.1 + 0.2) == 300_000
    assert from_micro(1_500_000) == 1.5
    book = PriceBook([Price("m", 0.15, 0.6)])
    assert book.cost_micro("m", 1_000_000, 0) == 150_000
    # the bound rounds up to a whole micro-USD, but float noise does not add one
    assert book.worst_case_micro("m", 1, 0) == 1  # 0.15 micro-USD
    assert book.worst_case_micro("m", 1_000_000, 0) == 150_000
    assert book.worst_case_micro("m", 3, 1) == 2  # 0.45 + 0.6 = 1.05 micro-USD
    assert book.worst_case_micro("x", 10**6, 10**6) == 0


def test_lookups_are_cached_and_bounded() -> None:
    book = PriceBook([Price("a*", 1, 1)])
    assert book.price_of("abc") is book.price_of("abc")
    assert "abc" in book._cache
    for i in range(5000):
        book.price_of(f"model-{i}")
    assert len(book._cache) <= 4096
    assert book.price_of("abc") == Price("a*", 1, 1)
