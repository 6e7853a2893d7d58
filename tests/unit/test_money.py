from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.errors import ValidationError
from maaskit.money import MAX_MICROS, format_money, from_micros, micros_to_str, parse_micros, to_micros


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


@pytest.mark.parametrize(
    "huge", ["1e999999999", "-1e999999999", "1e99999", "9" * 5000, Decimal("9223372036854.775808")]
)
def test_amounts_beyond_the_range_are_refused_before_any_arithmetic(huge: object) -> None:
    # "1e999999999" overflowed the decimal context (a 500 in the gateway); "1e99999" was
    # converted to a 100,000-digit integer before the range check
    with pytest.raises(ValidationError) as info:
        to_micros(huge)  # type: ignore[arg-type]
    assert info.value.code == "money.invalid"
    assert "out of range" in str(info.value)


def test_the_range_ends_exactly_at_max_micros() -> None:
    assert to_micros("9223372036854.775807") == MAX_MICROS
    assert to_micros("-9223372036854.775807") == -MAX_MICROS
    assert to_micros("1e-999999999") == 0  # rounds to zero micro-units, like any tiny amount


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


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (10_000_000, "10"),
        (120_000_000, "120"),
        (1_500_000, "1.5"),
        (1, "0.000001"),
        (0, "0"),
        (-2_000_000, "-2"),
    ],
)
def test_amounts_print_in_plain_decimal_notation(micros: int, text: str) -> None:
    # normalize() alone turned 10 USD into "1E+1" (seen in the admin API and the budget header)
    assert str(from_micros(micros)) == text
    assert micros_to_str(micros) == text


@given(st.integers(min_value=-MAX_MICROS, max_value=MAX_MICROS))
def test_micros_to_str_is_str_of_from_micros(micros: int) -> None:
    text = micros_to_str(micros)
    assert text == str(from_micros(micros))
    assert "E" not in text
    assert Decimal(text) == from_micros(micros)
