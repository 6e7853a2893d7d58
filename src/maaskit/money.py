"""Exact money: integer micro-units in storage and counters, ``Decimal`` at the edges.

One US dollar is ``1_000_000`` micro-dollars. Floats never touch money: a float passed
where money is expected is refused, because ``0.1`` is not one tenth.

Example::

    from decimal import Decimal
    from maaskit.money import to_micros, from_micros

    assert to_micros(Decimal("1.25")) == 1_250_000
    assert from_micros(1_250_000) == Decimal("1.25")
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, DecimalException, InvalidOperation
from typing import Final

from maaskit.errors import ValidationError

__all__ = [
    "MAX_MICROS",
    "MICROS_PER_UNIT",
    "Micros",
    "ceil_micros",
    "format_money",
    "from_micros",
    "micros_to_str",
    "parse_micros",
    "to_micros",
]

Micros = int
MICROS_PER_UNIT: Final = 1_000_000
_ONE: Final = Decimal(1)
#: The largest amount maaskit accepts (fits a signed 64-bit column): about 9.2 trillion units.
MAX_MICROS: Final = 2**63 - 1
_MAX_UNITS: Final = Decimal(MAX_MICROS + 1) / MICROS_PER_UNIT  # exact: 9223372036854.775808


def to_micros(
    amount: Decimal | int | str, *, field: str = "amount", rounding: str = ROUND_HALF_EVEN
) -> Micros:
    """Convert a currency amount to integer micro-units.

    Args:
        amount: a ``Decimal``, an ``int`` (whole units) or a decimal string. Floats are refused.
        field: the name reported in the error when the value is bad.
        rounding: how fractions of a micro-unit are rounded (banker's rounding by default).

    Raises:
        ValidationError: ``money.invalid`` for floats, NaN, infinities, garbage or out-of-range values.
    """
    if isinstance(amount, bool | float):
        raise ValidationError("money.invalid", field=field, reason="floats are not accepted for money")
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(str(amount).strip())
    except (InvalidOperation, ValueError):
        raise ValidationError("money.invalid", field=field, reason="not a decimal number") from None
    if not value.is_finite():
        raise ValidationError("money.invalid", field=field, reason="must be finite")
    # the range first: scaling "1e999999" (or converting it to an int) would overflow the decimal
    # context or build a million-digit integer
    if value.copy_abs() > _MAX_UNITS:
        raise ValidationError("money.invalid", field=field, reason="out of range")
    try:
        micros = int((value * MICROS_PER_UNIT).to_integral_value(rounding=rounding))
    except DecimalException:  # e.g. a rounding mode the context cannot apply
        raise ValidationError("money.invalid", field=field, reason="not a decimal number") from None
    if abs(micros) > MAX_MICROS:
        raise ValidationError("money.invalid", field=field, reason="out of range")
    return micros


def parse_micros(value: object, *, field: str = "amount", allow_negative: bool = False) -> Micros:
    """Validate an amount that is already in micro-units (an ``int``).

    Raises:
        ValidationError: ``money.invalid`` unless *value* is an ``int`` in range (and not negative,
            unless *allow_negative*).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("money.invalid", field=field, reason="micro-units must be an integer")
    if abs(value) > MAX_MICROS:
        raise ValidationError("money.invalid", field=field, reason="out of range")
    if value < 0 and not allow_negative:
        raise ValidationError("money.invalid", field=field, reason="must not be negative")
    return value


def from_micros(micros: Micros) -> Decimal:
    """Convert micro-units back to a ``Decimal`` amount (exact, no trailing zeros).

    Its ``str()`` is plain decimal notation: ``from_micros(10_000_000)`` is ``Decimal("10")``,
    never ``Decimal("1E+1")``.
    """
    if not micros:
        return Decimal(0)
    value = Decimal(micros).scaleb(-6).normalize()
    return value if value.as_tuple().exponent <= 0 else value.quantize(_ONE)  # type: ignore[operator]


def micros_to_str(micros: Micros) -> str:
    """``str(from_micros(micros))`` with integer arithmetic only (for hot paths such as headers).

    Example: ``micros_to_str(1_500_000) == "1.5"``, ``micros_to_str(10_000_000) == "10"``.
    """
    if micros < 0:
        return "-" + micros_to_str(-micros)
    units, fraction = divmod(micros, MICROS_PER_UNIT)
    if not fraction:
        return str(units)
    return f"{units}.{fraction:06d}".rstrip("0")


def ceil_micros(value: Decimal) -> Micros:
    """Round a fractional micro-unit amount up (used for reservations: never under-reserve)."""
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def format_money(micros: Micros, currency: str = "USD") -> str:
    """Human-readable amount, e.g. ``"1.250000 USD"``."""
    return f"{Decimal(micros).scaleb(-6):.6f} {currency}"
