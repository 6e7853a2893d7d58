"""FakeLiteLLM: the LiteLLM proxy's admin API for tests, in-process or on a loopback port.

A real implementation of the subset of LiteLLM's HTTP interface maaskit uses (answers shaped
like LiteLLM's own, prices as exact JSON numbers), not a mock of maaskit's classes. The same
handler answers through ``httpx.MockTransport`` (no socket) and an ``aiohttp.web`` server on
``127.0.0.1`` (a random port).

Routes::

    GET  /health/liveliness  /health/readiness        (no key needed, as in LiteLLM)
    GET  /v1/models  /models  /model/info  /v1/model/info
    POST /key/generate  /key/update  /key/delete       GET /key/info?key=
    POST /team/new  /team/update  /team/delete         GET /team/info?team_id=
    POST /user/new                                     GET /user/info?user_id=

Every other route checks ``Authorization: Bearer <master_key>`` (401 otherwise). Scripted
failures for the next request(s): :meth:`FakeLiteLLM.fail_next` (status + body),
:meth:`~FakeLiteLLM.html_next`, :meth:`~FakeLiteLLM.truncate_next`, :meth:`~FakeLiteLLM.stall_next`
(never answers: a loopback client hits its read timeout; in-process raises ``httpx.ReadTimeout``),
:meth:`~FakeLiteLLM.raw_next` (any body) and :attr:`FakeLiteLLM.latency` (slow answers).

Example::

    import httpx
    from maaskit.services.litellm import DefaultLiteLLMService, LiteLLMConfig
    from maaskit.testing.fake_litellm import FakeLiteLLM

    fake = FakeLiteLLM(master_key="sk-master")
    fake.add_model("gpt-cheap", input_cost_per_token="0.00000015", output_cost_per_token="0.0000006")
    client = httpx.AsyncClient(transport=fake.httpx_transport())
    litellm = DefaultLiteLLMService(LiteLLMConfig(base_url=fake.base_url, master_key="sk-master"), client)

    async with fake.serve() as base_url:        # http://127.0.0.1:<port>
        ...
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import attrs

from maaskit.services.litellm import decode_json, encode_json

if TYPE_CHECKING:
    import httpx
    from aiohttp import web

__all__ = ["FakeLiteLLM", "FakeLiteLLMReply"]

_JSON = {"content-type": "application/json"}
_OPEN = frozenset({"/health/liveliness", "/health/readiness", "/health/liveness"})


@attrs.frozen
class FakeLiteLLMReply:
    """One scripted or computed answer."""

    status: int
    body: bytes
    headers: Mapping[str, str] = attrs.field(factory=lambda: dict(_JSON))
    stall: bool = False


def _json(status: int, data: Any) -> FakeLiteLLMReply:
    return FakeLiteLLMReply(status, encode_json(data))


def _error(status: int, message: str) -> FakeLiteLLMReply:
    return _json(
        status, {"error": {"message": message, "type": "fake_litellm", "param": None, "code": str(status)}}
    )


class _Stalled(Exception):
    pass


class FakeLiteLLM:
    """A LiteLLM proxy stand-in (see the module docs).

    Args:
        master_key: the key every admin route requires.
        base_url: the URL used in-process (``httpx_transport``).

    Attributes:
        models: ``model_name -> /model/info entry`` (edit through :meth:`add_model`).
        keys, teams, users: the management objects created through the API.
        requests: ``(method, path)`` of every request received.
        latency: seconds every answer is delayed.
    """

    def __init__(self, master_key: str = "sk-fake-master", *, base_url: str = "http://fake-litellm") -> None:
        self.master_key = master_key
        self.base_url = base_url
        self.models: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.teams: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.latency = 0.0
        self._script: deque[FakeLiteLLMReply] = deque()
        self._release = asyncio.Event()

    def __repr__(self) -> str:
        return f"FakeLiteLLM({len(self.models)} models)"

    # -- state ----------------------------------------------------------------------------

    def add_model(
        self,
        model_name: str,
        *,
        input_cost_per_token: Decimal | str | int | None = None,
        output_cost_per_token: Decimal | str | int | None = None,
        provider: str = "openai",
        upstream_model: str | None = None,
        max_input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        max_tokens: int | None = None,
        mode: str | None = "chat",
        supports: Mapping[str, bool] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Add (or replace) a model; prices are kept exact (give ``Decimal`` or strings)."""

        def price(value: Decimal | str | int | None) -> Decimal | None:
            return None if value is None else Decimal(str(value))

        info: dict[str, Any] = {
            "id": hashlib.sha256(model_name.encode()).hexdigest(),
            "db_model": False,
            "key": upstream_model or f"{provider}/{model_name}",
            "litellm_provider": provider,
            "mode": mode,
            "input_cost_per_token": price(input_cost_per_token),
            "output_cost_per_token": price(output_cost_per_token),
            "max_input_tokens": max_input_tokens,
            "max_output_tokens": max_output_tokens,
            "max_tokens": max_tokens,
        }
        for name, flag in (supports or {}).items():
            info[f"supports_{name}"] = flag
        info.update(extra or {})
        entry = {
            "model_name": model_name,
            "litellm_params": {"model": upstream_model or f"{provider}/{model_name}"},
            "model_info": info,
        }
        self.models[model_name] = entry
        return entry

    def remove_model(self, model_name: str) -> None:
        """Remove a model (it disappears from ``/model/info`` and ``/v1/models``)."""
        self.models.pop(model_name, None)

    # -- scripted failures ----------------------------------------------------------------

    def fail_next(self, status: int = 500, body: bytes | str | None = None, *, times: int = 1) -> None:
        """Answer the next *times* requests with *status* (default body: a LiteLLM error object)."""
        for _ in range(times):
            if body is None:
                self._script.append(_error(status, "scripted failure"))
            else:
                raw = body.encode() if isinstance(body, str) else body
                self._script.append(FakeLiteLLMReply(status, raw, {"content-type": "text/plain"}))

    def html_next(self, times: int = 1) -> None:
        """Answer 200 with an HTML page (a login wall, a misrouted ingress)."""
        for _ in range(times):
            self._script.append(
                FakeLiteLLMReply(
                    200, b"<!doctype html><html><body>Sign in</body></html>", {"content-type": "text/html"}
                )
            )

    def truncate_next(self, times: int = 1) -> None:
        """Answer 200 with the first half of the real JSON body."""
        for _ in range(times):
            self._script.append(FakeLiteLLMReply(200, b"", {"x-fake-truncate": "1"}))

    def raw_next(self, body: bytes | str | Any, *, status: int = 200) -> None:
        """Answer 200 (or *status*) with *body*: bytes/str as they are, anything else as JSON."""
        if isinstance(body, str):
            body = body.encode()
        raw = body if isinstance(body, bytes) else encode_json(body)
        self._script.append(FakeLiteLLMReply(status, raw))

    def stall_next(self, times: int = 1) -> None:
        """Never answer the next request(s) (released when the server stops)."""
        for _ in range(times):
            self._script.append(FakeLiteLLMReply(0, b"", stall=True))

    def reset(self) -> None:
        """Drop scripted failures and latency."""
        self._script.clear()
        self.latency = 0.0

    # -- the handler ----------------------------------------------------------------------

    async def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> FakeLiteLLMReply:
        """Answer one request (shared by both front ends)."""
        self.requests.append((method, path))
        if self.latency:
            await asyncio.sleep(self.latency)
        if self._script:
            scripted = self._script.popleft()
            if scripted.stall:
                raise _Stalled
            if scripted.headers.get("x-fake-truncate"):
                real = self._route(method, path, query, body)
                return FakeLiteLLMReply(200, real.body[: max(1, len(real.body) // 2)])
            return scripted
        if path not in _OPEN:
            auth = headers.get("authorization") or headers.get("Authorization") or ""
            if not secrets.compare_digest(auth.encode(), f"Bearer {self.master_key}".encode()):
                return _error(401, "Authentication Error, invalid proxy server token passed")
        return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: str, body: bytes) -> FakeLiteLLMReply:
        args = {k: v[0] for k, v in parse_qs(query).items()}
        try:
            data = decode_json(body) if body else {}
        except ValueError:
            return _error(400, "invalid JSON body")
        if not isinstance(data, dict):
            return _error(400, "expected a JSON object")
        route = (method, path)
        if route == ("GET", "/health/liveliness") or route == ("GET", "/health/liveness"):
            return FakeLiteLLMReply(200, b'"I\'m alive!"')
        if route == ("GET", "/health/readiness"):
            return _json(200, {"status": "healthy", "db": "Not connected"})
        if route in (("GET", "/v1/models"), ("GET", "/models")):
            return _json(
                200,
                {
                    "data": [
                        {
                            "id": name,
                            "object": "model",
                            "created": 1677610602,
                            "owned_by": e["model_info"]["litellm_provider"],
                        }
                        for name, e in self.models.items()
                    ],
                    "object": "list",
                },
            )
        if route in (("GET", "/model/info"), ("GET", "/v1/model/info")):
            return _json(200, {"data": list(self.models.values())})
        handlers: dict[tuple[str, str], Callable[[dict[str, Any]], FakeLiteLLMReply]] = {
            ("POST", "/key/generate"): self._key_generate,
            ("POST", "/key/update"): self._key_update,
            ("POST", "/key/delete"): self._key_delete,
            ("GET", "/key/info"): lambda d: self._key_info(args),
            ("POST", "/team/new"): self._team_new,
            ("POST", "/team/update"): self._team_update,
            ("POST", "/team/delete"): self._team_delete,
            ("GET", "/team/info"): lambda d: self._team_info(args),
            ("POST", "/user/new"): self._user_new,
            ("GET", "/user/info"): lambda d: self._user_info(args),
        }
        handler = handlers.get(route)
        if handler is None:
            return _json(404, {"detail": "Not Found"})
        return handler(data)

    # keys: stored by token (sha256 of the key), like LiteLLM

    def _key_generate(self, data: dict[str, Any]) -> FakeLiteLLMReply:
        key = data.get("key") or f"sk-{secrets.token_urlsafe(16)}"
        token = hashlib.sha256(key.encode()).hexdigest()
        if token in self.keys:
            return _error(400, "key already exists")
        record = {
            "token": token,
            "key_alias": data.get("key_alias"),
            "user_id": data.get("user_id"),
            "team_id": data.get("team_id"),
            "models": list(data.get("models") or []),
            "max_budget": data.get("max_budget"),
            "spend": Decimal(0),
            "metadata": data.get("metadata") or {},
        }
        self.keys[token] = record
        return _json(200, {**record, "key": key})

    def _token(self, key: object) -> str | None:
        if not isinstance(key, str):
            return None
        return key if len(key) == 64 and key in self.keys else hashlib.sha256(key.encode()).hexdigest()

    def _key_update(self, data: dict[str, Any]) -> FakeLiteLLMReply:
        token = self._token(data.get("key"))
        if token is None or token not in self.keys:
            return _error(404, "key not found")
        record = self.keys[token]
        for name, value in data.items():
            if name != "key":
                record[name] = value
        return _json(200, record)

    def _key_delete(self, data: dict[str, Any]) -> FakeLiteLLMReply:
        keys = data.get("keys")
        if not isinstance(keys, list) or not keys:
            return _json(422, {"detail": "At least one of 'keys' or 'key_aliases' must be provided."})
        deleted = []
        for key in keys:
            token = self._token(key)
            if token is None or token not in self.keys:
                return _error(404, "key not found")
            deleted.append(key)
        for key in keys:
            self.keys.pop(self._token(key) or "", None)
        return _json(200, {"deleted_keys": deleted})

    def _key_info(self, args: Mapping[str, str]) -> FakeLiteLLMReply:
        token = self._token(args.get("key"))
        if token is None or token not in self.keys:
            return _error(404, "key not found")
        info = {k: v for k, v in self.keys[token].items() if k != "token"}
        return _json(200, {"key": args.get("key"), "info": info})

    def _team_new(self, data: dict[str, Any]) -> FakeLiteLLMReply:
        team_id = data.get("team_id") or f"team-{secrets.token_hex(6)}"
        if team_id in self.teams:
            return _error(400, "team already exists")
        record = {
            "team_id": team_id,
            "team_alias": data.get("team_alias"),
            "models": list(data.get("models") or []),
            "max_budget": data.get("max_budget"),
            "metadata": data.get("metadata") or {},
        }
        self.teams[team_id] = record
        return _json(200, record)

    def _team_update(self, data: dict[str, Any]) -> FakeLiteLLMReply:
        team = self.teams.get(str(data.get("team_id")))
        if team is None:
            return _error(404, "team not found")
        team.update({k: v for k, v in data.items() if k != "team_id"})
        return _json(200, {"data": team})

    def _team_delete(self, data: dict[str, Any]) -> FakeLiteLLMReply:
        ids = data.get("team_ids")
        if not isinstance(ids, list) or any(t not in self.teams for t in ids):
            return _error(404, "team not found")
        for team_id in ids:
            del self.teams[team_id]
        return _json(200, {"deleted_teams": ids})

    def _team_info(self, args: Mapping[str, str]) -> FakeLiteLLMReply:
        team = self.teams.get(args.get("team_id", ""))
        if team is None:
            return _error(404, "team not found")
        return _json(200, {"team_id": team["team_id"], "team_info": team, "keys": []})

    def _user_new(self, data: dict[str, Any]) -> FakeLiteLLMReply:
        user_id = data.get("user_id") or f"user-{secrets.token_hex(6)}"
        if user_id in self.users:
            return _error(400, "user already exists")
        record = {
            "user_id": user_id,
            "user_email": data.get("user_email"),
            "user_role": data.get("user_role") or "internal_user",
            "models": list(data.get("models") or []),
            "max_budget": data.get("max_budget"),
        }
        self.users[user_id] = record
        return _json(200, record)

    def _user_info(self, args: Mapping[str, str]) -> FakeLiteLLMReply:
        user = self.users.get(args.get("user_id", ""))
        if user is None:
            return _error(404, "user not found")
        return _json(200, {"user_id": user["user_id"], "user_info": user, "keys": [], "teams": []})

    # -- in-process: httpx ----------------------------------------------------------------

    def httpx_transport(self) -> httpx.MockTransport:
        """An ``httpx.MockTransport`` answering through this fake (a stall raises ``ReadTimeout``)."""
        import httpx

        async def handler(request: httpx.Request) -> httpx.Response:
            try:
                reply = await self.handle(
                    request.method,
                    request.url.path,
                    request.url.query.decode(),
                    request.headers,
                    request.content,
                )
            except _Stalled:
                raise httpx.ReadTimeout("no answer (scripted stall)", request=request) from None
            return httpx.Response(reply.status, headers=dict(reply.headers), content=reply.body)

        return httpx.MockTransport(handler)

    # -- loopback: aiohttp.web ------------------------------------------------------------

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on a loopback port; yields ``http://127.0.0.1:<port>``."""
        from aiohttp import web

        if not (host.startswith("127.") or host in ("localhost", "::1")):
            raise ValueError("FakeLiteLLM serves on loopback only")
        self._release = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._web_handler)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            yield f"http://{host}:{runner.addresses[0][1]}"
        finally:
            self._release.set()
            await runner.cleanup()

    async def _web_handler(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        body = await request.read()
        try:
            reply = await self.handle(
                request.method, request.path, request.query_string, request.headers, body
            )
        except _Stalled:
            await self._release.wait()
            return web.Response(status=503)
        return web.Response(status=reply.status, headers=dict(reply.headers), body=reply.body)
