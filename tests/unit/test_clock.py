from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.clock import to_utc

OFFSETS = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(st.datetimes(timezones=OFFSETS))
def test_to_utc_is_the_same_instant_in_utc_or_out_of_range(value: datetime) -> None:
    offset = value.utcoffset()
    assert offset is not None
    local = value.replace(tzinfo=None)  # UTC is local - offset: representable within min..max
    representable = local - datetime.min >= offset and datetime.max - local >= -offset
    if representable:
        converted = to_utc(value)
        assert converted.tzinfo is UTC
        assert converted == value
    else:
        with pytest.raises(ValueError, match="out of range"):
            to_utc(value)


def test_to_utc_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_utc(datetime(2026, 1, 1))
