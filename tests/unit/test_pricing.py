"""Pricing: validation, exact costs rounded up, and their invariants."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.errors import NotFoundError, ValidationError
from maaskit.services.pricing import ModelPrice, PricingService, StaticPricing


def _price(**kw: object) -> ModelPrice:
    args: dict[str, object] = {"model": "m", "input_per_token": "0.000001", "output_per_token": "0.000002"}
    args.update(kw)
    return ModelPrice(**args)  # type: ignore[arg-type]


def test_cost_is_exact_and_rounded_up() -> None:
    pricing = StaticPricing({"m": _price(input_per_token="0.00000015", output_per_token="0.0000006")})
    assert isinstance(pricing, PricingService)
    assert pricing.cost_micros("m", 1000, 500) == 450
    assert pricing.cost_micros("m", 1, 0) == 1  # 0.15 micro-dollars -> 1, never 0
    assert pricing.cost_micros("m", 0, 0) == 0
    assert pricing.max_cost_micros("m", 1000, 4096) == 150 + 2458  # 2457.6 rounds up
    assert pricing.price("m") is not None
    assert pricing.price("unknown") is None


def test_per_request_price_and_decimal_inputs() -> None:
    price = _price(input_per_token=Decimal("0.00001"), output_per_token=3, per_request="0.0001")
    assert price.cost_micros(10, 0) == 100 + 100
    assert price.cost_micros(0, 1) == 3_000_100
    assert price.exact_cost(10, 0) == Decimal("0.0002")


@pytest.mark.parametrize(
    "bad",
    [
        0.5,
        float("nan"),
        True,
        "-0.1",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e9",
        "abc",
        None,
        "1E-30",
        "1e-999999999",
    ],
)
def test_bad_prices_are_refused(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        _price(input_per_token=bad)
    assert info.value.code == "pricing.invalid"


@pytest.mark.parametrize("model", ["", "a\x00b", "x" * 300, 5])
def test_bad_model_names_are_refused(model: object) -> None:
    with pytest.raises(ValidationError):
        _price(model=model)


@pytest.mark.parametrize("tokens", [-1, 1.0, True, 2**41, "3"])
def test_bad_token_counts_are_refused(tokens: object) -> None:
    with pytest.raises(ValidationError) as info:
        _price().cost_micros(tokens, 0)  # type: ignore[arg-type]
    assert info.value.code == "pricing.invalid_tokens"


def test_unknown_model_and_bad_mapping() -> None:
    pricing = StaticPricing({})
    with pytest.raises(NotFoundError) as info:
        pricing.cost_micros("gpt-x", 1, 1)
    assert info.value.code == "pricing.unknown_model"
    with pytest.raises(NotFoundError):
        pricing.max_cost_micros("gpt-x", 1, 1)
    with pytest.raises(ValidationError):
        StaticPricing({"a": _price(model="b")})
    with pytest.raises(ValidationError):
        StaticPricing({"a": "not a price"})  # type: ignore[dict-item]


prices = st.decimals(min_value=0, max_value=Decimal("0.01"), places=12, allow_nan=False, allow_infinity=False)
tokens = st.integers(min_value=0, max_value=10**7)


@given(prices, prices, tokens, tokens, tokens, tokens)
def test_cost_invariants(pi: Decimal, po: Decimal, p1: int, c1: int, p2: int, c2: int) -> None:
    price = _price(input_per_token=pi, output_per_token=po)
    cost = price.cost_micros
    exact = (pi * p1 + po * c1) * 1_000_000
    assert cost(p1, c1) >= 0
    assert exact <= cost(p1, c1) < exact + 1  # exact, rounded up
    # monotonic in both counts
    assert cost(p1, c1) <= cost(p1 + p2, c1)
    assert cost(p1, c1) <= cost(p1, c1 + c2)
    # additive within one micro-dollar (two round-ups at most one more than one)
    whole = cost(p1 + p2, c1 + c2)
    parts = cost(p1, c1) + cost(p2, c2)
    assert whole <= parts <= whole + 1
