"""``Usage.from_reported``'s fast path for a parsed ``dict`` answers exactly like the general one."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from maaskit.services.ai_api import Usage
from maaskit.services.pricing import MAX_TOKENS

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


@given(st.dictionaries(fields, value))
def test_a_reported_usage_is_within_what_pricing_accepts_and_never_invents_a_zero_completion(
    reported: dict[str, Any],
) -> None:
    # a count of 2**40 or more made settle raise after the upstream call (a 500 and a leaked
    # reservation); a missing completion_tokens was billed as 0
    got = Usage.from_reported(reported)
    if got is None:
        return
    assert got.source == "reported"
    for count in (got.prompt_tokens, got.completion_tokens, got.total_tokens):
        assert count.__class__ is int
        assert 0 <= count <= MAX_TOKENS
    assert got.prompt_tokens == reported["prompt_tokens"]
    completion = reported.get("completion_tokens")
    if completion is None:  # only known from the total
        assert got.completion_tokens == reported["total_tokens"] - reported["prompt_tokens"]
    else:
        assert got.completion_tokens == completion
    if reported.get("total_tokens") is None:
        assert got.total_tokens == got.prompt_tokens + got.completion_tokens
    else:
        assert got.total_tokens == reported["total_tokens"]


def test_embeddings_usage_has_no_completion() -> None:
    assert Usage.from_reported({"prompt_tokens": 8, "total_tokens": 8}) == Usage(8, 0, 8, "reported")
    assert Usage.from_reported({"prompt_tokens": 8}) is None  # unknown: estimated instead
    assert Usage.from_reported({"prompt_tokens": 2**40, "completion_tokens": 1}) is None  # sum too large
