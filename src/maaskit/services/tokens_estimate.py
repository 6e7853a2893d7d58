"""Token estimates for when an upstream reports no usage.

maaskit bills from the usage the upstream reports. When it reports none (an upstream that
ignores ``stream_options.include_usage``, a client that disconnected before the usage chunk),
:class:`CharTokenEstimator` estimates it without a tokenizer dependency:

* text: ``ceil(characters / chars_per_token)`` with ``chars_per_token = 4`` (OpenAI's rule of
  thumb for English; it over-counts code a little and under-counts CJK text);
* a chat prompt: the text of every message (string content, the ``text`` parts of list
  content, names, tool-call arguments) plus ``per_message`` tokens for each message and
  ``per_request`` tokens for the reply's priming, as in OpenAI's published counting recipe;
* an embeddings / completions input: the text of ``input`` / ``prompt`` (string or list).

Estimates are marked ``source="estimated"`` in :class:`maaskit.services.ai_api.Usage`.

Example::

    from maaskit.services.tokens_estimate import CharTokenEstimator

    est = CharTokenEstimator()
    est.count_text("Hello there")                                          # 3
    est.prompt_tokens({"messages": [{"role": "user", "content": "Hi"}]})   # 1 + 4 + 3 = 8
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

__all__ = ["CharTokenEstimator", "TokenEstimator", "text_of_content"]


@runtime_checkable
class TokenEstimator(Protocol):
    """Estimates token counts from text."""

    def count_text(self, text: str) -> int:
        """Tokens in *text* (``0`` for the empty string)."""
        ...

    def count_chars(self, chars: int) -> int:
        """Tokens in a text of *chars* characters."""
        ...

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        """Tokens of a request body's input (chat ``messages``, ``input`` or ``prompt``)."""
        ...


def text_of_content(content: Any) -> str:
    """The text of a chat message ``content``: a string, or the ``text`` of its list parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return ""


def _tool_call_chars(tool_calls: Any) -> int:
    total = 0
    if isinstance(tool_calls, list):
        for call in tool_calls:
            if isinstance(call, Mapping):
                function = call.get("function")
                if isinstance(function, Mapping):
                    for key in ("name", "arguments"):
                        value = function.get(key)
                        if isinstance(value, str):
                            total += len(value)
    return total


@attrs.frozen
class CharTokenEstimator:
    """The characters-per-token heuristic (see the module docs).

    Attributes:
        chars_per_token: characters counted as one token (default 4).
        per_message: overhead tokens per chat message (default 4).
        per_request: overhead tokens per chat request (default 3).
    """

    chars_per_token: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    per_message: int = attrs.field(default=4, validator=attrs.validators.ge(0))
    per_request: int = attrs.field(default=3, validator=attrs.validators.ge(0))

    def count_chars(self, chars: int) -> int:
        """``ceil(chars / chars_per_token)``."""
        if chars <= 0:
            return 0
        return -(-chars // self.chars_per_token)

    def count_text(self, text: str) -> int:
        """Tokens in *text*."""
        return self.count_chars(len(text))

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        """Tokens of *body*'s input: chat ``messages``, or ``input`` / ``prompt`` text."""
        messages = body.get("messages")
        if messages.__class__ is list:
            # the common case: every message is exactly {"role": ..., "content": "text"}
            chars = 0
            for message in messages:
                if message.__class__ is dict and len(message) == 2:
                    content = message.get("content")
                    if content.__class__ is str and "role" in message:
                        chars += len(content)
                        continue
                return self._messages_tokens(messages)
            tokens = -(-chars // self.chars_per_token) if chars > 0 else 0
            return tokens + len(messages) * self.per_message + self.per_request
        if isinstance(messages, list):
            return self._messages_tokens(messages)
        for key in ("input", "prompt"):
            value = body.get(key)
            if isinstance(value, str):
                return self.count_text(value)
            if isinstance(value, list):
                return sum(self.count_text(item) for item in value if isinstance(item, str))
        return 0

    def _messages_tokens(self, messages: list[Any]) -> int:
        """Tokens of chat *messages* of any shape (names, tool calls, content parts)."""
        chars = 0
        count = 0
        for message in messages:
            if message.__class__ is not dict and not isinstance(message, Mapping):
                continue
            count += 1
            content = message.get("content")
            chars += len(content) if content.__class__ is str else len(text_of_content(content))
            if len(message) != 2 or "content" not in message or "role" not in message:
                # anything beyond role and content may carry a name or tool calls
                name = message.get("name")
                if name is not None and isinstance(name, str):
                    chars += len(name)
                tool_calls = message.get("tool_calls")
                if tool_calls is not None:
                    chars += _tool_call_chars(tool_calls)
        tokens = -(-chars // self.chars_per_token) if chars > 0 else 0
        return tokens + count * self.per_message + self.per_request
