"""``Usage.from_reported``'s fast path for a parsed ``dict`` answers exactly like the general one."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from maaskit.services.ai_api import Usage

value = st.one_of(
    st.integers(min_value=-5, max_value=2**70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
)
fields = st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens", "other"])


@given(st.dictionaries(fields, value))
def test_a_dict_and_the_same_mapping_give_the_same_usage(reported: dict[str, Any]) -> None:
    # a read-only proxy is a Mapping but not a dict: it always takes the general path
    assert Usage.from_reported(reported) == Usage.from_reported(MappingProxyType(reported))


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**40))
def test_a_well_formed_usage_is_taken_as_reported(prompt: int, completion: int, total: int) -> None:
    got = Usage.from_reported(
        {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
    )
    assert got == Usage(prompt, completion, total, "reported")
