"""Register your own service next to maaskit's, and swap it for a fake in a test.

Run: python examples/own_service.py
"""

import asyncio

from maaskit.clock import Clock
from maaskit.registry import Registry
from maaskit.testing import FakeClock, build_test_app


class Greeter:
    """An application service that depends on a maaskit one (the clock)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def greet(self, name: str) -> str:
        return f"hello {name}, it is {self.clock.now():%H:%M} UTC"


def configure(registry: Registry) -> None:
    registry.register_class(Greeter)


async def main() -> None:
    clock = FakeClock()
    async with build_test_app(clock=clock, configure=configure) as app:
        greeter = await app.aget(Greeter)
        print(greeter.greet("ada"))
        clock.advance(hours=2, minutes=30)
        print(greeter.greet("ada"))


if __name__ == "__main__":
    asyncio.run(main())
