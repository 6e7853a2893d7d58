"""The no-op sync short-circuit: an identical /model/info answer over an unchanged catalog.

A sync may skip parsing and diffing only while the catalog revision is unchanged; every write
(this catalog's edits, another replica's, plain SQL) must make the next sync do the full work.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from maaskit.errors import ValidationError
from maaskit.services.catalog import ConflictPolicy, DefaultModelCatalog, RevisionedCatalogStore
from maaskit.services.litellm import (
    DefaultLiteLLMService,
    FingerprintedModelSource,
    LiteLLMConfig,
    _fast_model,
    _model_from_entry,
    encode_json,
)
from maaskit.storage.sql import Database
from maaskit.storage.sql.catalog import SqlCatalogStore
from maaskit.testing.fake_litellm import FakeLiteLLM

MASTER = "sk-noop"


class Selects:
    """Counts full reads of the models table (the short-circuit skips them)."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        sa.event.listen(db.engine.sync_engine, "before_cursor_execute", self._on)

    def _on(self, _c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        text = " ".join(statement.split()).upper()
        if text.startswith("SELECT") and "FROM MAASKIT_CATALOG_MODELS" in text:
            self.count += 1


def make(db: Database) -> tuple[FakeLiteLLM, DefaultLiteLLMService, DefaultModelCatalog]:
    fake = FakeLiteLLM(master_key=MASTER)
    for i in range(5):
        fake.add_model(f"m{i}", input_cost_per_token="0.000001", output_cost_per_token="0.000002")
    litellm = DefaultLiteLLMService(
        LiteLLMConfig(base_url=fake.base_url, master_key=MASTER),
        httpx.AsyncClient(transport=fake.httpx_transport()),
    )
    return fake, litellm, DefaultModelCatalog(SqlCatalogStore(db))


async def test_identical_answer_over_unchanged_catalog_is_short_circuited(sql_db: Database) -> None:
    _fake, litellm, catalog = make(sql_db)
    assert isinstance(litellm, FingerprintedModelSource)
    assert isinstance(catalog.store, RevisionedCatalogStore)
    full = await catalog.sync_models(litellm)
    assert len(full.added) == 5
    reads = Selects(sql_db)
    again = await catalog.sync_models(litellm)
    assert reads.count == 0  # neither parsed nor diffed: the catalog was not even listed
    assert again.rows_written == 0
    assert again.unchanged == tuple(f"m{i}" for i in range(5))
    assert again.added == again.updated == again.unavailable == again.restored == ()


async def test_changed_answer_is_synced(sql_db: Database) -> None:
    fake, litellm, catalog = make(sql_db)
    await catalog.sync_models(litellm)
    await catalog.sync_models(litellm)
    fake.add_model("m1", input_cost_per_token="0.000003", output_cost_per_token="0.000002")
    report = await catalog.sync_models(litellm)
    assert report.updated == ("m1",)
    assert (await catalog.get("m1")).input_price == Decimal("0.000003")  # type: ignore[union-attr]


@pytest.mark.parametrize("replica", [False, True], ids=["same-catalog", "other-replica"])
async def test_availability_change_is_not_short_circuited(sql_db: Database, replica: bool) -> None:
    _fake, litellm, catalog = make(sql_db)
    await catalog.sync_models(litellm)
    await catalog.sync_models(litellm)  # the memo is in place
    editor = DefaultModelCatalog(SqlCatalogStore(sql_db)) if replica else catalog
    assert await editor.mark_unavailable(["m2"]) == ("m2",)
    report = await catalog.sync_models(litellm)
    assert report.restored == ("m2",)  # upstream still serves it: back to available
    assert report.rows_written == 1
    assert (await catalog.get("m2")).available  # type: ignore[union-attr]


@pytest.mark.parametrize("replica", [False, True], ids=["same-catalog", "other-replica"])
async def test_local_metadata_edit_is_not_short_circuited(sql_db: Database, replica: bool) -> None:
    _fake, litellm, catalog = make(sql_db)
    await catalog.sync_models(litellm)
    await catalog.sync_models(litellm)
    editor = DefaultModelCatalog(SqlCatalogStore(sql_db)) if replica else catalog
    await editor.update_model_metadata("m3", input_price=Decimal("0.5"))
    report = await catalog.sync_models(litellm)  # remote wins: the edit is reverted
    assert report.conflicts == ("m3: input_price",)
    assert report.updated == ("m3",)
    model = await catalog.get("m3")
    assert model is not None
    assert model.input_price == Decimal("0.000001")
    assert model.local_overrides == frozenset()


async def test_plain_sql_write_is_not_short_circuited(sql_db: Database) -> None:
    _fake, litellm, catalog = make(sql_db)
    await catalog.sync_models(litellm)
    await catalog.sync_models(litellm)
    async with sql_db.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE maaskit_catalog_models SET context_window = 7 WHERE model_id = 'm4'")
        )
    report = await catalog.sync_models(litellm)
    assert report.updated == ("m4",)
    assert (await catalog.get("m4")).context_window is None  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", list(ConflictPolicy))
async def test_replayed_report_equals_the_full_one(sql_db: Database, policy: ConflictPolicy) -> None:
    fake, litellm, catalog = make(sql_db)
    await catalog.sync_models(litellm, policy=policy)
    await catalog.update_model_metadata("m0", input_price=Decimal("0.25"))
    fake.remove_model("m4")
    fake.raw_next(
        {"data": [*fake.models.values(), {"model_name": "../evil", "model_info": {}}]}
    )  # one refused entry
    first = await catalog.sync_models(litellm, policy=policy, on_invalid="skip")
    assert first.errors
    fake.raw_next({"data": [*fake.models.values(), {"model_name": "../evil", "model_info": {}}]})
    replayed = await catalog.sync_models(litellm, policy=policy, on_invalid="skip")
    fresh = DefaultModelCatalog(SqlCatalogStore(sql_db))  # no memo: parses and diffs
    fake.raw_next({"data": [*fake.models.values(), {"model_name": "../evil", "model_info": {}}]})
    full = await fresh.sync_models(litellm, policy=policy, on_invalid="skip")
    assert replayed.rows_written == full.rows_written == 0
    assert attr_tuple(replayed) == attr_tuple(full)


def attr_tuple(report: Any) -> tuple[Any, ...]:
    return (
        report.added,
        report.updated,
        report.unchanged,
        report.unavailable,
        report.restored,
        report.conflicts,
        report.errors,
        report.source,
    )


async def test_memo_is_per_policy_and_on_invalid(sql_db: Database) -> None:
    _fake, litellm, catalog = make(sql_db)
    await catalog.sync_models(litellm)
    await catalog.update_model_metadata("m0", input_price=Decimal("0.25"))
    kept = await catalog.sync_models(litellm, policy=ConflictPolicy.LOCAL_WINS)
    assert kept.conflicts == ("m0: input_price",)
    assert kept.rows_written == 0
    reverted = await catalog.sync_models(litellm, policy=ConflictPolicy.REMOTE_WINS)
    assert reverted.updated == ("m0",)


# -- the cheap /model/info path equals the validated one --------------------------------------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2**41),
    st.decimals(allow_nan=True, allow_infinity=True, places=20),
    st.decimals(min_value=0, max_value=1, places=18),
    st.text(max_size=8),
    st.sampled_from(["openai", "a\x00b", "x" * 300, "", "caf\u00e9", "\u2028"]),
)
_names = st.one_of(
    st.sampled_from(["gpt-4o", "org/m-1", "../x", "http://x", "a//b", "", "x" * 257, "a b"]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9./:_-]{0,12}", fullmatch=True),
    st.integers(),
)
_caps = st.dictionaries(
    st.sampled_from(["supports_vision", "supports_Bad", "supports_", "supports_tools", "other"]),
    st.one_of(st.booleans(), st.none(), st.just(1)),
)


@settings(max_examples=300, deadline=None)
@given(
    name=_names,
    info=st.dictionaries(
        st.sampled_from(
            [
                "litellm_provider",
                "id",
                "mode",
                "input_cost_per_token",
                "output_cost_per_token",
                "max_input_tokens",
                "max_output_tokens",
                "max_tokens",
            ]
        ),
        _values,
    ),
    caps=_caps,
    upstream=_values,
)
def test_fast_entry_parse_matches_full_validation(
    name: Any, info: dict[str, Any], caps: Any, upstream: Any
) -> None:
    entry = {"model_name": name, "model_info": {**info, **caps}, "litellm_params": {"model": upstream}}
    try:
        expected = _model_from_entry(entry)
    except ValidationError:
        expected = None
    fast = _fast_model(entry)
    if fast is not None:
        assert expected is not None
        assert fast == expected
        assert repr(fast) == repr(expected)  # same Decimal forms, same None-for-empty


@given(
    st.dictionaries(
        st.text(max_size=5), st.one_of(st.text(), st.decimals(allow_nan=False, allow_infinity=False))
    )
)
def test_encode_json_never_confuses_a_string_with_a_number(data: dict[str, Any]) -> None:
    from maaskit.services.litellm import decode_json

    assert decode_json(encode_json(data)) == data
