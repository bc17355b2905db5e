"""Credentials for remote MCP servers, against calc over streamable HTTP behind a bearer token (and, for the OAuth
client-credentials flow, calc as its own authorization server): a refused token is one clear error naming the server,
never retried; `auth.bearer` and the client-credentials flow get through; `${VAR}` in them is expanded."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.ir import ClientCredentials, ServerDef, Transport
from flowctl.interpreter.errors import ServerAuthError
from flowctl.interpreter.mcp.mcp_pool import McpPool
from tests.support.net import free_port, wait_listening

CALC = str(Path(__file__).resolve().parents[1] / "support" / "mcp_servers" / "calc_server.py")
SPAN = Span("pipeline.yaml", 3, 3)
TOKEN = "tok-0123456789abcdef"

pytestmark = pytest.mark.anyio


@contextmanager
def guarded_calc(*extra: str, transport: str = "--http") -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, CALC, transport, "--port", str(port), "--token", TOKEN, *extra]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield f"http://127.0.0.1:{port}/{'mcp' if transport == '--http' else 'sse'}"
    finally:
        process.kill()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with guarded_calc("--client", "flowctl-test:s3cret-client") as url:
        yield url


def remote(url: str, **overrides: object) -> ServerDef:
    options: dict[str, object] = {"startup_timeout": 60.0, "read_timeout": 60.0} | overrides
    return ServerDef("docs", Transport.STREAMABLE_HTTP, SPAN, url=url, **options)  # type: ignore[arg-type]


async def test_no_credentials_is_a_clear_error_naming_the_server_and_what_to_set(url: str) -> None:
    async with McpPool(env={}) as pool:
        with pytest.raises(ServerAuthError) as caught:
            await pool.list_tools(remote(url))
    error = caught.value
    assert error.retryable is False
    assert error.code == "server-auth-error"
    assert error.span == SPAN
    assert "server 'docs' requires credentials, and none were given, during initialize" in error.message
    assert "HTTP 401 Unauthorized" in error.message
    assert "auth: {bearer: ${TOKEN}}" in error.message
    assert url in error.message


async def test_a_refused_bearer_token_names_the_setting_and_never_shows_the_token(url: str) -> None:
    server = remote(url, bearer="${DOCS_TOKEN}")
    async with McpPool(env={"DOCS_TOKEN": "wrong-token-value"}) as pool:
        with pytest.raises(ServerAuthError) as caught:
            await pool.list_tools(server)
    assert "server 'docs' refused flowctl's credentials during initialize: HTTP 401" in caught.value.message
    assert "`auth.bearer`" in caught.value.message
    assert "wrong-token-value" not in caught.value.message


async def test_403_says_the_credentials_do_not_allow_it(url: str) -> None:
    async with McpPool(env={"T": "forbidden"}) as pool:
        with pytest.raises(ServerAuthError) as caught:
            await pool.list_tools(remote(url, bearer="${T}"))
    assert "HTTP 403 Forbidden" in caught.value.message


async def test_bearer_from_the_environment_gets_through(url: str) -> None:
    server = remote(url, bearer="${DOCS_TOKEN}")
    async with McpPool(env={"DOCS_TOKEN": TOKEN}) as pool:
        assert "add" in {tool.name for tool in await pool.list_tools(server)}
        assert (await pool.call_tool(server, "add", {"a": 2, "b": 3})).value == {"result": 5.0}


async def test_an_authorization_header_gets_through_too(url: str) -> None:
    server = remote(url, headers={"Authorization": "Bearer ${DOCS_TOKEN:-nope}"})
    async with McpPool(env={"DOCS_TOKEN": TOKEN}) as pool:
        assert (await pool.call_tool(server, "echo", {"text": "hi"})).text == "hi"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_oauth_client_credentials_fetch_a_token_and_get_through(url: str, method: str) -> None:
    base = url.removesuffix("/mcp")
    credentials = ClientCredentials("${CLIENT_ID}", "${CLIENT_SECRET}", issuer=base, auth_method=method)
    server = remote(url, client_credentials=credentials)
    env = {"CLIENT_ID": "flowctl-test", "CLIENT_SECRET": "s3cret-client"}
    async with McpPool(env=env) as pool:
        assert (await pool.call_tool(server, "add", {"a": 1, "b": 2})).value == {"result": 3.0}


async def test_oauth_with_a_wrong_client_secret_is_an_auth_error(url: str) -> None:
    credentials = ClientCredentials("flowctl-test", "${CLIENT_SECRET}", issuer=url.removesuffix("/mcp"))
    async with McpPool(env={"CLIENT_SECRET": "not-the-secret"}) as pool:
        with pytest.raises(ServerAuthError) as caught:
            await pool.list_tools(remote(url, client_credentials=credentials))
    assert "auth.client_credentials" in caught.value.message
    assert "not-the-secret" not in caught.value.message


async def test_sse_refused_and_accepted() -> None:
    with guarded_calc(transport="--sse") as url:
        sse = ServerDef("docs", Transport.SSE, SPAN, url=url, bearer="${T}", startup_timeout=60.0, read_timeout=60.0)
        async with McpPool(env={"T": "wrong-token-value"}) as pool:
            with pytest.raises(ServerAuthError) as caught:
                await pool.list_tools(sse)
        assert "server 'docs' refused flowctl's credentials" in caught.value.message
        assert "HTTP 401 Unauthorized" in caught.value.message
        async with McpPool(env={"T": TOKEN}) as pool:
            assert (await pool.call_tool(sse, "add", {"a": 1, "b": 1})).value == {"result": 2.0}
