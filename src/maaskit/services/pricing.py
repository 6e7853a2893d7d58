"""Model prices and exact cost in micro-dollars.

A :class:`ModelPrice` holds a model's USD price per input (prompt) token, per output
(completion) token and, optionally, per request, as :class:`~decimal.Decimal`. A
:class:`PricingService` turns token counts into an integer cost in micro-dollars
(1 USD = 1,000,000 micro-dollars).

Rounding: the exact decimal cost is computed with integer arithmetic (no float, no
precision loss) and rounded **up** to the whole micro-dollar, so maaskit never
under-charges. ``max_cost_micros`` uses the same formula with the request's
``max_tokens`` as the completion count: it is the budget reservation that the actual cost
can never exceed (the cost is monotonic in both token counts).

Example::

    from decimal import Decimal
    from maaskit.services.pricing import ModelPrice, StaticPricing

    pricing = StaticPricing({
        "gpt-4o-mini": ModelPrice("gpt-4o-mini", input_per_token="0.00000015",
                                  output_per_token="0.0000006"),
    })
    assert pricing.cost_micros("gpt-4o-mini", 1000, 500) == 450   # 0.00015 + 0.0003 USD
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Final, Protocol, runtime_checkable

import attrs

from maaskit.errors import NotFoundError, ValidationError

__all__ = [
    "MAX_PRICE_PER_REQUEST",
    "MAX_PRICE_PER_TOKEN",
    "MAX_TOKENS",
    "ModelPrice",
    "PricingService",
    "StaticPricing",
    "validate_price",
    "validate_tokens",
]

#: The highest accepted price per token in USD (far above any real model: a guard against typos).
MAX_PRICE_PER_TOKEN: Final = Decimal(1000)
#: The highest accepted price per request in USD.
MAX_PRICE_PER_REQUEST: Final = Decimal(1_000_000)
#: The highest accepted token count in one cost computation.
MAX_TOKENS: Final = 2**40
#: At most this many decimal places in a price (keeps the integer arithmetic small).
_MAX_PLACES: Final = 24
_MAX_MODEL_LEN: Final = 256


def validate_price(value: object, *, field: str, maximum: Decimal = MAX_PRICE_PER_TOKEN) -> Decimal:
    """Check one USD price and return it as a ``Decimal``.

    Accepts a ``Decimal``, an ``int`` or a decimal string. Refuses floats (``0.1`` is not one
    tenth), booleans, NaN, infinities, negative values, values above *maximum* and more than
    24 decimal places.

    Raises:
        ValidationError: ``pricing.invalid`` naming *field* and the reason.
    """
    if isinstance(value, bool | float):
        raise ValidationError("pricing.invalid", field=field, reason="floats are not accepted for prices")
    if isinstance(value, Decimal):
        price = value
    elif isinstance(value, int | str):
        try:
            price = Decimal(str(value).strip())
        except (InvalidOperation, ValueError):
            raise ValidationError("pricing.invalid", field=field, reason="not a decimal number") from None
    else:
        raise ValidationError("pricing.invalid", field=field, reason="expected a Decimal, int or string")
    if not price.is_finite():
        raise ValidationError("pricing.invalid", field=field, reason="must be finite")
    if price < 0:
        raise ValidationError("pricing.invalid", field=field, reason="must not be negative")
    if price > maximum:
        raise ValidationError("pricing.invalid", field=field, reason=f"must not exceed {maximum}")
    exponent = price.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if -exponent > _MAX_PLACES:
        normalized = price.normalize()
        exp = normalized.as_tuple().exponent
        assert isinstance(exp, int)
        # (a price below the context's smallest exponent normalises to zero: still too precise)
        if -exp > _MAX_PLACES or (price and not normalized):
            raise ValidationError(
                "pricing.invalid", field=field, reason=f"at most {_MAX_PLACES} decimal places"
            )
        price = normalized
    return price


def validate_tokens(value: object, *, field: str) -> int:
    """Check a token count: a non-negative ``int`` (not ``bool``) no larger than :data:`MAX_TOKENS`.

    Raises:
        ValidationError: ``pricing.invalid_tokens``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("pricing.invalid_tokens", field=field, reason="must be an integer")
    if value < 0:
        raise ValidationError("pricing.invalid_tokens", field=field, reason="must not be negative")
    if value > MAX_TOKENS:
        raise ValidationError("pricing.invalid_tokens", field=field, reason="too large")
    return value


def _validate_model(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_MODEL_LEN:
        raise ValidationError("pricing.invalid", field="model", reason="must be a non-empty name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValidationError("pricing.invalid", field="model", reason="must not contain control characters")
    return value


def _token_price(value: object) -> Decimal:
    return validate_price(value, field="price_per_token")


def _request_price(value: object) -> Decimal:
    return validate_price(value, field="price_per_request", maximum=MAX_PRICE_PER_REQUEST)


def _scaled(price: Decimal, scale: int) -> int:
    """``price * 10**(6 + scale)`` as an exact int (the price has at most *scale*+6 places)."""
    return int(price.scaleb(6 + scale))


def _places(price: Decimal) -> int:
    exponent = price.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


@attrs.frozen
class ModelPrice:
    """The price of one model in USD (validated; see :func:`validate_price`).

    Attributes:
        model: the model name the price applies to.
        input_per_token: USD per prompt token.
        output_per_token: USD per completion token.
        per_request: USD charged once per request (default 0).

    Raises:
        ValidationError: ``pricing.invalid`` for a float, negative, NaN, infinite or absurdly
            large price, or an empty model name.
    """

    model: str = attrs.field(converter=_validate_model)
    input_per_token: Decimal = attrs.field(converter=_token_price)
    output_per_token: Decimal = attrs.field(converter=_token_price)
    per_request: Decimal = attrs.field(default=Decimal(0), converter=_request_price)
    # Exact integer form: cost_micros = ceil((p*_in + c*_out + _req) / _den).
    _in: int = attrs.field(init=False, repr=False, eq=False)
    _out: int = attrs.field(init=False, repr=False, eq=False)
    _req: int = attrs.field(init=False, repr=False, eq=False)
    _den: int = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        places = max(_places(self.input_per_token), _places(self.output_per_token), _places(self.per_request))
        scale = max(0, places - 6)
        object.__setattr__(self, "_in", _scaled(self.input_per_token, scale))
        object.__setattr__(self, "_out", _scaled(self.output_per_token, scale))
        object.__setattr__(self, "_req", _scaled(self.per_request, scale))
        object.__setattr__(self, "_den", 10**scale)

    def cost_micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Exact cost in micro-dollars, rounded up to the whole micro-dollar.

        Raises:
            ValidationError: ``pricing.invalid_tokens`` for a negative, non-int or huge count.
        """
        # exact ints in range pass at once; anything else gets the full check (and its error)
        if prompt_tokens.__class__ is not int or not 0 <= prompt_tokens <= MAX_TOKENS:
            validate_tokens(prompt_tokens, field="prompt_tokens")
        if completion_tokens.__class__ is not int or not 0 <= completion_tokens <= MAX_TOKENS:
            validate_tokens(completion_tokens, field="completion_tokens")
        scaled = prompt_tokens * self._in + completion_tokens * self._out + self._req
        return -(-scaled // self._den)

    def exact_cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """The unrounded cost in USD (for reports; charging uses :meth:`cost_micros`)."""
        validate_tokens(prompt_tokens, field="prompt_tokens")
        validate_tokens(completion_tokens, field="completion_tokens")
        scaled = prompt_tokens * self._in + completion_tokens * self._out + self._req
        return Decimal(scaled).scaleb(-6 - len(str(self._den)) + 1)


@runtime_checkable
class PricingService(Protocol):
    """Looks up model prices and computes costs in micro-dollars (rounded up)."""

    def price(self, model: str) -> ModelPrice | None:
        """The price of *model*, or ``None`` when it has none."""
        ...

    def cost_micros(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost of a finished call in micro-dollars, rounded up.

        Raises:
            NotFoundError: ``pricing.unknown_model`` when *model* has no price.
            ValidationError: ``pricing.invalid_tokens`` for a bad token count.
        """
        ...

    def max_cost_micros(self, model: str, prompt_tokens_estimate: int, max_tokens: int) -> int:
        """The most a call can cost (the amount to reserve): prompt estimate plus *max_tokens* output.

        Raises:
            NotFoundError: ``pricing.unknown_model`` when *model* has no price.
            ValidationError: ``pricing.invalid_tokens`` for a bad token count.
        """
        ...


class StaticPricing:
    """A :class:`PricingService` over a fixed mapping of model name to :class:`ModelPrice`.

    Args:
        prices: ``{model: ModelPrice}``; each key must equal its price's ``model``.

    Raises:
        ValidationError: ``pricing.invalid`` when a value is not a ``ModelPrice`` or its model
            name differs from its key.
    """

    __slots__ = ("_prices",)

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        table: dict[str, ModelPrice] = {}
        for name, price in prices.items():
            if not isinstance(price, ModelPrice):
                raise ValidationError("pricing.invalid", field="prices", reason="values must be ModelPrice")
            if price.model != name:
                raise ValidationError("pricing.invalid", field="prices", reason="key differs from model name")
            table[name] = price
        self._prices = table

    def __repr__(self) -> str:
        return f"StaticPricing({len(self._prices)} models)"

    def price(self, model: str) -> ModelPrice | None:
        """The price of *model*, or ``None``."""
        return self._prices.get(model)

    def _require(self, model: str) -> ModelPrice:
        price = self._prices.get(model)
        if price is None:
            raise NotFoundError("pricing.unknown_model", model=str(model)[:_MAX_MODEL_LEN])
        return price

    def cost_micros(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost of a finished call in micro-dollars, rounded up (see :class:`PricingService`)."""
        price = self._prices.get(model)
        if price is None:
            price = self._require(model)
        return price.cost_micros(prompt_tokens, completion_tokens)

    def max_cost_micros(self, model: str, prompt_tokens_estimate: int, max_tokens: int) -> int:
        """The reservation for a call (see :class:`PricingService`)."""
        price = self._prices.get(model)
        if price is None:
            price = self._require(model)
        return price.cost_micros(prompt_tokens_estimate, max_tokens)
