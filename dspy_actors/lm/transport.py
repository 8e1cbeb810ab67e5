"""The LM's HTTP transport: a few sync ``httpx.Client`` shards shared by all calling threads.

Why shards: one sync ``httpx.Client`` is thread-safe, but its connection pool does work
proportional to its open connections under one lock on every request. Measured on 2 cores
against a loopback server with 100 ms latency, 256 threads sharing one client reached ~135
req/s, while the same threads spread over 8 clients reached ~600 and over 32 ~1,090 (and
``AsyncClient`` collapsed past ~16 in flight, see DESIGN.md). So each calling thread sticks
to one of ``shards`` clients (assigned round-robin on its first call); the clients share one
TLS context, so creating them is cheap, and they are created only when first needed.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
from collections.abc import Mapping

import httpx

__all__ = ["ClientPool"]

DEFAULT_SHARDS = 32
# Per shard. With threads spread over the shards, a shard rarely holds more than a few.
_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0)
# Requests go out as a header write then a body write: without TCP_NODELAY the second
# one can wait for a delayed ACK.
_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class ClientPool:
    """``shards`` lazily created ``httpx.Client`` objects; :meth:`client` returns the one
    the calling thread is assigned to. Thread-safe; :meth:`close` closes them all (later
    calls open new ones)."""

    def __init__(
        self, *, headers: Mapping[str, str], timeout: float, shards: int = DEFAULT_SHARDS
    ) -> None:
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        self._headers = dict(headers)
        self._timeout = timeout
        self._clients: list[httpx.Client | None] = [None] * shards
        self._lock = threading.Lock()
        self._local = threading.local()
        self._next = itertools.count()
        self._generation = 0
        self._ssl: ssl.SSLContext | None = None

    def client(self) -> httpx.Client:
        """The calling thread's client (hot path: one thread-local read)."""
        local = self._local
        if getattr(local, "generation", -1) == self._generation:
            client: httpx.Client = local.client
            return client
        return self._assign()

    def _assign(self) -> httpx.Client:
        with self._lock:
            index = next(self._next) % len(self._clients)
            client = self._clients[index]
            if client is None:
                client = self._clients[index] = self._make()
            self._local.client = client
            self._local.generation = self._generation
            return client

    def _make(self) -> httpx.Client:
        if self._ssl is None:
            # Loading the CA bundle takes ~25 ms: once per pool, not once per shard.
            self._ssl = httpx.create_ssl_context()
        transport = httpx.HTTPTransport(
            verify=self._ssl, limits=_LIMITS, retries=0, socket_options=_SOCKET_OPTIONS
        )
        return httpx.Client(transport=transport, headers=self._headers, timeout=self._timeout)

    @property
    def open_clients(self) -> int:
        with self._lock:
            return sum(c is not None for c in self._clients)

    def close(self) -> None:
        """Close every client (and so every connection)."""
        with self._lock:
            clients = [c for c in self._clients if c is not None]
            self._clients = [None] * len(self._clients)
            self._generation += 1
        for client in clients:
            client.close()
