"""The framework-neutral HTTP helpers every adapter shares (``maaskit.adapters._http``)."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.adapters._http import (
    MAX_AUTHORIZATION_LENGTH,
    _checked_bearer_credential,
    bearer_credential,
    error_body,
    error_response,
    rate_limit_headers,
)
from maaskit.errors import (
    ConflictError,
    ForbiddenError,
    InternalError,
    MaasError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
    UpstreamError,
    ValidationError,
)

SECRET = "mk_4fQ9zLr2VxW8pT1sKd7Yh3Bn6Mc0Ja5Ge"


def _refused(authorization: str | None, *, api_key_header: str | None = None) -> UnauthenticatedError:
    with pytest.raises(UnauthenticatedError) as caught:
        bearer_credential(authorization, api_key_header=api_key_header)
    return caught.value


def _assert_secret_absent(error: MaasError, secret: str = SECRET) -> None:
    for text in (
        str(error),
        repr(error),
        error.render("de"),
        json.dumps(error.to_dict()),
        repr(error.params),
    ):
        assert secret not in text
    _status, body, headers = error_response(error)
    assert secret.encode() not in body
    assert all(secret not in value for value in headers.values())


# -- bearer_credential: accepted ---------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {SECRET}",
        f"bearer {SECRET}",
        f"BEARER {SECRET}",
        f"  Bearer {SECRET}  ",
        f"Bearer    {SECRET}",
    ],
)
def test_bearer_credential_accepts_the_bearer_scheme(header: str) -> None:
    assert bearer_credential(header) == SECRET


def test_api_key_header_is_used_only_without_authorization() -> None:
    assert bearer_credential(None, api_key_header=SECRET) == SECRET
    assert bearer_credential("Bearer mk_other", api_key_header=SECRET) == "mk_other"


# -- bearer_credential: refused ----------------------------------------------------------------


def test_missing_header_is_auth_missing() -> None:
    assert _refused(None).code == "auth.missing"
    assert _refused(None, api_key_header="").code == "auth.missing"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (f"Basic {SECRET}", "expected the Bearer scheme"),
        (f"Token {SECRET}", "expected the Bearer scheme"),
        (SECRET, "expected the Bearer scheme"),
        (f"Bearer{SECRET}", "expected the Bearer scheme"),
        (f"Bearer\t{SECRET}", "expected the Bearer scheme"),
        ("Bearer", "empty credential"),
        ("Bearer ", "empty credential"),
        ("Bearer \t  ", "empty credential"),
        ("", "expected the Bearer scheme"),
        (f"Bearer {SECRET[:10]} {SECRET[10:]}", "invalid characters"),
        (f"Bearer {SECRET[:10]}\t{SECRET[10:]}", "invalid characters"),
        (f"Bearer {SECRET[:10]}\x00{SECRET[10:]}", "invalid characters"),
        (f"Bearer {SECRET[:10]}\n{SECRET[10:]}", "invalid characters"),
        (f"Bearer {SECRET[:10]}\u00e9{SECRET[10:]}", "invalid characters"),
        (f"Bearer {SECRET[:10]}\u200b{SECRET[10:]}", "invalid characters"),
        (f"Bearer {SECRET}\x7f", "invalid characters"),
        (f"Bearer Bearer {SECRET}", "doubled Bearer"),
        (f"Bearer Bearer{SECRET}", "doubled Bearer"),
        ("Bearer bearer", "doubled Bearer"),
    ],
)
def test_malformed_headers_are_refused_without_the_credential(header: str, reason: str) -> None:
    error = _refused(header)
    assert error.code == "auth.malformed"
    assert error.params == {"reason": reason}
    _assert_secret_absent(error)


def test_a_one_megabyte_header_is_refused_before_parsing() -> None:
    error = _refused("Bearer " + SECRET + "A" * (1024 * 1024))
    assert error.code == "auth.malformed"
    assert error.params == {"reason": "too long"}
    _assert_secret_absent(error)


def test_the_length_limit_is_exact() -> None:
    padding = MAX_AUTHORIZATION_LENGTH - len("Bearer ")
    assert bearer_credential("Bearer " + "a" * padding) == "a" * padding
    assert _refused("Bearer " + "a" * (padding + 1)).params == {"reason": "too long"}


def test_api_key_header_gets_the_same_strictness() -> None:
    for value in (f"{SECRET} x", f"{SECRET}\x00", "x" * (MAX_AUTHORIZATION_LENGTH + 1), f"Bearer {SECRET}"):
        error = _refused(None, api_key_header=value)
        assert error.code == "auth.malformed"
        _assert_secret_absent(error)


# secret-like: long enough that no message could contain it by chance
_TOKEN = st.builds(
    lambda body, tail: "mk_" + body + tail,
    st.text(alphabet=string.ascii_letters + string.digits, min_size=24, max_size=48),
    st.text(alphabet="_-.~+/=", max_size=4),
)


_PREFIX = st.one_of(
    st.sampled_from(["Bearer ", "bearer  ", " BEARER ", "Basic ", "", "Bearer Bearer ", "Bearer\t"]),
    st.builds(lambda a, b: a + b, st.sampled_from(["Bearer ", ""]), st.text(max_size=10)),
)


@given(prefix=_PREFIX, token=_TOKEN, suffix=st.one_of(st.just(""), st.text(max_size=10)))
def test_any_header_yields_a_clean_credential_or_a_refusal_without_it(
    prefix: str, token: str, suffix: str
) -> None:
    header = prefix + token + suffix
    refusal: UnauthenticatedError | None = None
    try:
        got = bearer_credential(header)
    except UnauthenticatedError as error:
        refusal = error
    if refusal is not None:
        assert refusal.code in ("auth.missing", "auth.malformed")
        _assert_secret_absent(refusal, token)
        return
    assert got
    assert got.isascii()
    assert got.isprintable()
    assert " " not in got
    assert not got.lower().startswith("bearer")
    assert got in header


def _outcome(parse: object, header: str) -> tuple[str, str]:
    try:
        return ("ok", parse(header))  # type: ignore[operator]
    except UnauthenticatedError as error:
        return (error.code, str(error.params.get("reason")))


@given(
    header=st.one_of(
        st.builds(
            lambda a, b: a + b, st.sampled_from(["Bearer ", "Bearer  ", "Bearer\t"]), st.text(max_size=40)
        ),
        st.builds(lambda t: "Bearer " + t, _TOKEN),
        st.builds(lambda t: "Bearer " + t, st.text(alphabet=string.printable, max_size=300)),
        st.builds(lambda t: "Bearer bearer" + t, _TOKEN),
    )
)
def test_the_fast_path_answers_exactly_as_the_checked_path(header: str) -> None:
    """``bearer_credential``'s shortcut for ``Bearer <token>`` never changes an answer."""
    assert _outcome(bearer_credential, header) == _outcome(
        lambda h: _checked_bearer_credential(h, None), header
    )


# -- error_response ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValidationError("http.invalid_request", reason="x"), 400),
        (UnauthenticatedError("auth.missing"), 401),
        (ForbiddenError("admission.model_not_allowed", model="m"), 403),
        (NotFoundError("http.not_found"), 404),
        (ConflictError("http.invalid_request", reason="x"), 409),
        (
            RateLimitedError(
                "rate_limit.exceeded", kind="requests", limit=1, period_seconds=60, retry_after=1
            ),
            429,
        ),
        (QuotaExceededError("http.invalid_request", reason="x"), 429),
        (UpstreamError("http.invalid_request", reason="x"), 502),
        (UnavailableError("app.not_started"), 503),
        (InternalError("http.invalid_request", reason="x"), 500),
    ],
)
def test_error_response_status_and_openai_body(error: MaasError, status: int) -> None:
    got_status, body, headers = error_response(error)
    assert got_status == status
    assert headers["content-type"] == "application/json"
    parsed = json.loads(body)
    assert parsed == error_body(error)
    assert parsed["error"] == {
        "message": str(error),
        "type": error.type.value,
        "code": error.code,
        "param": None,
    }
    assert ("www-authenticate" in headers) is (status == 401)


def test_401_asks_for_bearer() -> None:
    _status, _body, headers = error_response(UnauthenticatedError("auth.missing"))
    assert headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(2.1, "3"), (3, "3"), (0.2, "1"), (0, "1"), (-5, "1"), ("7", "7"), (59.0001, "60")],
)
def test_retry_after_on_429_rounds_up_to_at_least_one_second(retry_after: object, header: str) -> None:
    error = RateLimitedError(
        "rate_limit.exceeded", kind="requests", limit=1, period_seconds=60, retry_after=retry_after
    )
    _status, _body, headers = error_response(error)
    assert headers["retry-after"] == header


def test_retry_after_on_503_and_quota_errors() -> None:
    _s, _b, unavailable = error_response(UnavailableError("app.not_started", retry_after=4.5))
    assert unavailable["retry-after"] == "5"
    _s, _b, quota = error_response(QuotaExceededError("http.invalid_request", reason="x", retry_after=10))
    assert quota["retry-after"] == "10"


def test_no_retry_after_without_the_param_or_on_other_statuses() -> None:
    _s, _b, limited = error_response(
        RateLimitedError("rate_limit.exceeded", kind="requests", limit=1, period_seconds=60)
    )
    assert "retry-after" not in limited
    _s, _b, invalid = error_response(ValidationError("http.invalid_request", reason="x", retry_after=3))
    assert "retry-after" not in invalid


@pytest.mark.parametrize("retry_after", [float("nan"), float("inf"), "soon"])
def test_non_finite_retry_after_still_renders(retry_after: object) -> None:
    error = RateLimitedError(
        "rate_limit.exceeded", kind="requests", limit=1, period_seconds=60, retry_after=retry_after
    )
    status, _body, headers = error_response(error)
    assert status == 429
    assert "retry-after" not in headers


def test_huge_retry_after_is_capped_at_a_day() -> None:
    error = RateLimitedError(
        "rate_limit.exceeded", kind="requests", limit=1, period_seconds=60, retry_after=1e12
    )
    assert error_response(error)[2]["retry-after"] == "86400"


def test_error_body_carries_param_and_the_callers_language() -> None:
    error = ValidationError("http.invalid_request", reason="bad model", param="model")
    english = json.loads(error_response(error, "en")[1])["error"]
    german = json.loads(error_response(error, "de")[1])["error"]
    assert english["param"] == german["param"] == "model"
    assert english["code"] == german["code"] == "http.invalid_request"
    assert english["message"] != german["message"]
    assert "bad model" in german["message"]


# -- rate_limit_headers ------------------------------------------------------------------------


def test_rate_limit_headers_render_every_field() -> None:
    headers = rate_limit_headers(
        {
            "limit_requests": 60,
            "remaining_requests": 59,
            "reset_requests": 1.0,
            "limit_tokens": 10_000,
            "remaining_tokens": 9_950.7,
            "reset_tokens": 0.0125,
        }
    )
    assert headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1.000s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "9950",
        "x-ratelimit-reset-tokens": "0.013s",
    }


def test_rate_limit_headers_leave_out_missing_values_and_clamp_negative_resets() -> None:
    assert rate_limit_headers({}) == {}
    assert rate_limit_headers({"remaining_requests": None, "limit_tokens": 5}) == {
        "x-ratelimit-limit-tokens": "5"
    }
    assert rate_limit_headers({"reset_requests": -3}) == {"x-ratelimit-reset-requests": "0.000s"}
