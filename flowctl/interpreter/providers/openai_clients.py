"""The SDK clients of the `openai` provider: one TLS context per process, clients shared per event loop.

Stage: interpreter (providers). Loading the CA store takes tens of milliseconds, so the TLS context is built once per
process (for each value of SSL_CERT_FILE / SSL_CERT_DIR) and handed to every client. An httpx client's connections
belong to the event loop that opened them, so providers share a client only with the same endpoint, key and timeout
on the same loop; the last one to give it back closes it. With openai_provider.py, the only module that imports
`openai`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import weakref
from dataclasses import dataclass, field

import httpx2
import openai


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to call: the resolved base URL, its host (for messages) and the API key."""

    base_url: str
    host: str
    api_key: str = field(repr=False)
    key_env: str


_TLS_CONTEXTS: dict[tuple[str | None, str | None], ssl.SSLContext] = {}


def tls_context() -> ssl.SSLContext:
    """The TLS context every client uses: httpx's default (the system's CA store, or SSL_CERT_FILE / SSL_CERT_DIR),
    built once per process for each value of those variables. Loading the CA store takes tens of milliseconds; an
    `SSLContext` may be shared by clients, event loops and threads."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    context = _TLS_CONTEXTS.get(key)
    if context is None:
        context = _TLS_CONTEXTS[key] = httpx2.create_ssl_context()
    return context


@dataclass(slots=True)
class _Shared:
    client: openai.AsyncOpenAI
    users: int = 0


_ClientKey = tuple[str, str, float]  # base URL, API key, timeout

# Clients in use, per event loop: an httpx client's connections belong to the loop that opened them, so clients are
# shared only within one loop; a loop that is gone takes its entry with it.
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_ClientKey, _Shared]] = weakref.WeakKeyDictionary()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None on another backend."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # another anyio backend: clients are not shared
        return None


def new_client(endpoint: Endpoint, timeout: float) -> openai.AsyncOpenAI:
    """An SDK client that never retries (the policies do), on the shared TLS context, with the SDK's own connection
    limits and redirects."""
    http_client = openai.DefaultAsyncHttpxClient(verify=tls_context(), timeout=timeout)
    return openai.AsyncOpenAI(
        api_key=endpoint.api_key,
        base_url=endpoint.base_url,
        max_retries=0,
        timeout=timeout,
        http_client=http_client,
    )


def acquire(endpoint: Endpoint, timeout: float, loop: asyncio.AbstractEventLoop | None) -> openai.AsyncOpenAI:
    """The client for these settings on `loop` (built on first use), one user more; without a loop, a new one."""
    if loop is None:
        return new_client(endpoint, timeout)
    clients = _SHARED.setdefault(loop, {})
    key = (endpoint.base_url, endpoint.api_key, timeout)
    shared = clients.get(key)
    if shared is None:
        shared = clients[key] = _Shared(new_client(endpoint, timeout))
    shared.users += 1
    return shared.client


def release(client: openai.AsyncOpenAI, loop: asyncio.AbstractEventLoop | None) -> bool:
    """One user fewer; True when nobody uses `client` any more (it is no longer shared, and should be closed)."""
    clients = _SHARED.get(loop) if loop is not None else None
    if clients is None:
        return True
    for key, shared in list(clients.items()):
        if shared.client is client:
            shared.users -= 1
            if shared.users > 0:
                return False
            del clients[key]
            return True
    return True


async def release_and_close(client: openai.AsyncOpenAI, loop: asyncio.AbstractEventLoop | None) -> None:
    """Give `client` back; close it when nobody uses it any more."""
    if release(client, loop):
        await client.close()
