"""What a model name may look like, in one place (admission, API keys, pricing share it).

Names like ``gpt-4o-mini``, ``openai/gpt-4o`` or ``meta-llama/Llama-3.1-8B:q4`` are well formed;
path tricks (``..``, a leading ``/``, backslashes), URLs (``http://...``), whitespace, control
characters and names longer than :data:`MAX_MODEL_NAME_LENGTH` are not.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_MODEL_NAME_LENGTH", "is_valid_model_name"]

#: Longest model name accepted.
MAX_MODEL_NAME_LENGTH: Final = 256
# letters, digits and . _ : - @ +, with single '/' between namespace segments
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+\-]*(/[A-Za-z0-9][A-Za-z0-9._:@+\-]*)*")


def is_valid_model_name(name: object) -> bool:
    """``True`` when *name* is a well-formed model name (see the module docstring)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_MODEL_NAME_LENGTH
        and _MODEL_RE.fullmatch(name) is not None
        and ".." not in name
        and "://" not in name
    )
