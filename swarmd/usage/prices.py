"""Model prices and the cost of a request.

Theory of operation
-------------------
``[[prices]]`` entries in the config each name a model glob and the USD per
million input (prompt) and output (completion) tokens::

    [[prices]]
    model = "gpt-4o-mini*"
    input = 0.15
    output = 0.60

A model's price is the *first* entry whose glob matches its id
(:func:`fnmatch.fnmatchcase`: case-sensitive, ``*``, ``?`` and ``[...]``), so
specific entries go before broad ones.  A model no entry matches costs 0:
local models are free unless priced.  Lookups are cached per model id (the
book is immutable).

Replicated counters and budgets count integer micro-USD (:func:`to_micro`):
integers add exactly and commute, floats do not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from swarmd.config_tree import ConfigError

_KEYS = ("model", "input", "output")
MICRO = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens for the models whose id matches ``model`` (a glob)."""

    model: str
    usd_per_1m_input: float
    usd_per_1m_output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.usd_per_1m_input
                + completion_tokens * self.usd_per_1m_output) / MICRO


def _amount(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise ConfigError(key, f"must be a non-negative number (USD per 1M tokens), "
                               f"got {value!r}")
    return float(value)


def parse_prices(raw: object) -> tuple[Price, ...]:
    """The ``[[prices]]`` array of tables -> Prices, in order.

    ``input`` and ``output`` default to 0 (an entry may price only one side,
    or pin a model to 0 ahead of a broader glob); ``model`` is required.
    Raises :class:`~swarmd.config.ConfigError` naming the key, for example
    ``prices[2].input``."""
    if not isinstance(raw, list):
        raise ConfigError("prices", "expected an array of tables ([[prices]])")
    out: list[Price] = []
    for i, item in enumerate(raw):
        key = f"prices[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(key, "expected a table")
        for k in item:
            if k not in _KEYS:
                raise ConfigError(f"{key}.{k}", f"unknown key (known: {', '.join(_KEYS)})")
        model = item.get("model")
        if model is None:
            raise ConfigError(f"{key}.model", "missing (required)")
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"{key}.model", f"expected a non-empty model id or glob, "
                                              f"got {model!r}")
        out.append(Price(model, _amount(f"{key}.input", item.get("input", 0)),
                         _amount(f"{key}.output", item.get("output", 0))))
    return tuple(out)


def to_micro(usd: float) -> int:
    """USD -> integer micro-USD, to the nearest (half to even)."""
    return int(round(usd * MICRO))


def from_micro(micro: int) -> float:
    return micro / MICRO


class PriceBook:
    """The configured prices, looked up by model id (first matching glob wins)."""

    def __init__(self, prices: Iterable[Price] = ()) -> None:
        self.prices: tuple[Price, ...] = tuple(prices)
        self._cache: dict[str, Price | None] = {}

    def price_of(self, model: str) -> Price | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = next((p for p in self.prices if fnmatchcase(model, p.model)), None)
        if len(self._cache) >= 4096:  # model ids come from requests: keep it bounded
            self._cache.clear()
        self._cache[model] = found
        return found

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for a request; 0.0 for a model no entry prices."""
        price = self.price_of(model)
        return 0.0 if price is None else price.cost(prompt_tokens, completion_tokens)

    def worst_case_cost(self, model: str, prompt_tokens: int, max_tokens: int) -> float:
        """The most a request may cost: its prompt plus ``max_tokens`` of output."""
        return self.cost(model, prompt_tokens, max_tokens)

    def cost_micro(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        return to_micro(self.cost(model, prompt_tokens, completion_tokens))

    def worst_case_micro(self, model: str, prompt_tokens: int, max_tokens: int) -> int:
        """:meth:`worst_case_cost` in micro-USD, rounded *up* (an admission
        bound must not be lowered by rounding)."""
        # round to nano-USD first so float noise (150000.00000000003) is not a micro-USD
        return math.ceil(round(self.worst_case_cost(model, prompt_tokens, max_tokens) * MICRO,
                               3))
