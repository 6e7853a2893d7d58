from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.errors import ValidationError
from maaskit.money import MAX_MICROS, format_money, from_micros, parse_micros, to_micros


def test_whole_and_fractional_amounts() -> None:
    assert to_micros(Decimal("1.25")) == 1_250_000
    assert to_micros("0.000001") == 1
    assert to_micros(3) == 3_000_000
    assert from_micros(1_250_000) == Decimal("1.25")
    assert format_money(1_250_000) == "1.250000 USD"


@pytest.mark.parametrize("bad", [0.1, float("nan"), "nan", "inf", "-inf", "abc", "", True, Decimal("1e30")])
def test_bad_amounts_are_refused(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        to_micros(bad)  # type: ignore[arg-type]
    assert info.value.code == "money.invalid"


@pytest.mark.parametrize("bad", [1.0, -1, "5", None, True, MAX_MICROS + 1])
def test_parse_micros_refuses_non_integers_and_negatives(bad: object) -> None:
    with pytest.raises(ValidationError):
        parse_micros(bad)


def test_parse_micros_may_allow_negative() -> None:
    assert parse_micros(-5, allow_negative=True) == -5


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_micros_round_trip(micros: int) -> None:
    assert to_micros(from_micros(micros)) == micros


@given(st.decimals(min_value=Decimal(-(10**9)), max_value=Decimal(10**9), places=6, allow_nan=False))
def test_six_decimal_places_are_exact(amount: Decimal) -> None:
    assert from_micros(to_micros(amount)) == amount
