"""Everything an application's tests need to run maaskit without a network.

* :func:`build_test_app` - a full app on in-memory SQLite with memory backends and a fake clock;
* :class:`FakeClock` - time that moves only when the test says so;
* fakes of the external systems, each a real implementation of the same interface.

The pytest plugin (installed with maaskit, entry point ``pytest11``) offers fixtures over these:
``maaskit_clock``, ``maaskit_settings``, ``maaskit_app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maaskit.testing.clock import FakeClock

if TYPE_CHECKING:
    from maaskit.testing.app import build_test_app, test_settings
    from maaskit.testing.fake_hub import FakeHub
    from maaskit.testing.fake_keyring import FakeKeyring
    from maaskit.testing.fake_litellm import FakeLiteLLM
    from maaskit.testing.fake_upstream import FakeUpstream
    from maaskit.testing.gateway import running_gateway

__all__ = [
    "FakeClock",
    "FakeHub",
    "FakeKeyring",
    "FakeLiteLLM",
    "FakeUpstream",
    "build_test_app",
    "running_gateway",
    "test_settings",
]

_LAZY = {
    "build_test_app": "maaskit.testing.app",
    "test_settings": "maaskit.testing.app",
    "FakeHub": "maaskit.testing.fake_hub",
    "FakeKeyring": "maaskit.testing.fake_keyring",
    "FakeLiteLLM": "maaskit.testing.fake_litellm",
    "FakeUpstream": "maaskit.testing.fake_upstream",
    "running_gateway": "maaskit.testing.gateway",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'maaskit.testing' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
