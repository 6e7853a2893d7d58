"""Properties of the API key format: generated keys parse, mutations are refused, parse never crashes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.errors import UnauthenticatedError
from maaskit.services.api_keys import (
    _ALPHABET,
    KEY_LENGTH,
    _key_from_random,
    is_well_formed_key,
    parse_key,
)

random_bytes = st.binary(min_size=32, max_size=32)


@given(random_bytes)
def test_generated_keys_always_parse(raw: bytes) -> None:
    key = _key_from_random(raw)
    assert len(key) == KEY_LENGTH
    assert parse_key(key) == key


@given(random_bytes, st.integers(min_value=0, max_value=KEY_LENGTH - 1), st.characters())
def test_any_single_character_change_is_refused_or_is_another_key(raw: bytes, index: int, ch: str) -> None:
    key = _key_from_random(raw)
    mutated = key[:index] + ch + key[index + 1 :]
    if mutated == key:
        return
    if is_well_formed_key(mutated):
        # A CRC32 collision inside the base62 alphabet: rare, and then simply a different key.
        assert mutated != key
        assert all(c in _ALPHABET for c in mutated[3:])
    else:
        with pytest.raises(UnauthenticatedError):
            parse_key(mutated)


@given(random_bytes, st.integers(min_value=3, max_value=KEY_LENGTH - 1), st.sampled_from(_ALPHABET))
def test_single_base62_substitutions_are_caught_by_the_checksum(raw: bytes, index: int, ch: str) -> None:
    key = _key_from_random(raw)
    mutated = key[:index] + ch + key[index + 1 :]
    # CRC32 detects every error burst of up to 32 bits in the body; a change in the checksum
    # characters themselves changes the encoded value. Either way: refused.
    assert is_well_formed_key(mutated) == (mutated == key)


@given(
    st.one_of(st.text(), st.text(alphabet=_ALPHABET + "_mkMK \x00é"), st.binary(), st.none(), st.integers())
)
def test_parse_raises_only_unauthenticated(text: object) -> None:
    if is_well_formed_key(text):
        assert parse_key(text) == text
    else:
        with pytest.raises(UnauthenticatedError) as info:  # any other exception fails the test
            parse_key(text)
        assert info.value.code == "api_key.malformed"
