"""The estimator's fast path for plain ``{"role", "content"}`` messages counts exactly like the general one."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from maaskit.services.tokens_estimate import CharTokenEstimator

text = st.text(max_size=40)
plain = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": text})
other = st.one_of(
    st.fixed_dictionaries({"role": st.just("user"), "content": text, "name": text}),
    st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.lists(st.fixed_dictionaries({"text": text}))}
    ),
    st.fixed_dictionaries({"content": text, "name": text}),  # two keys, but no role
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.none()}),
    st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": st.none(),
            "tool_calls": st.lists(
                st.fixed_dictionaries({"function": st.fixed_dictionaries({"name": text})})
            ),
        }
    ),
    st.just("not a message"),
    st.integers(),
)
messages = st.lists(st.one_of(plain, plain, other), max_size=8)


@given(messages=messages, chars_per_token=st.integers(1, 8), per_message=st.integers(0, 5))
def test_fast_and_general_message_counts_agree(
    messages: list[Any], chars_per_token: int, per_message: int
) -> None:
    estimator = CharTokenEstimator(chars_per_token=chars_per_token, per_message=per_message)
    assert estimator.prompt_tokens({"messages": messages}) == estimator._messages_tokens(messages)


def test_plain_messages_take_the_fast_path_and_count_characters() -> None:
    estimator = CharTokenEstimator()
    body = {"messages": [{"role": "system", "content": "abcd"}, {"role": "user", "content": "efghi"}]}
    assert estimator.prompt_tokens(body) == 3 + 2 * 4 + 3  # ceil(9 / 4) + two messages + request
