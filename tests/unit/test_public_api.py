import subprocess
import sys

import pytest

import maaskit
import maaskit.testing


def test_all_is_sorted_and_unique() -> None:
    assert list(maaskit.__all__) == sorted(set(maaskit.__all__))
    assert list(maaskit.testing.__all__) == sorted(set(maaskit.testing.__all__))


def test_every_public_name_resolves() -> None:
    for name in maaskit.__all__:
        assert getattr(maaskit, name) is not None, name
    for name in maaskit.testing.__all__:
        assert getattr(maaskit.testing, name) is not None, name


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        maaskit.no_such_thing  # noqa: B018


def test_importing_maaskit_is_light() -> None:
    code = (
        "import sys, maaskit; heavy = [m for m in ('sqlalchemy', 'aiohttp', 'httpx', 'sqlmodel', "
        "'redis', 'starlette', 'maaskit.adapters') if m in sys.modules]; import maaskit.app; "
        "heavy += [m for m in sys.modules if m.startswith('maaskit.adapters')]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
