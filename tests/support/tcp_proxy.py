"""A TCP proxy in front of RabbitMQ or Postgres, to fail the connection like a network would.

``cut()`` drops every open connection at once (the client sees the socket
die mid-stream); ``refuse()`` makes new connections fail until ``restore()``;
``stall()`` keeps connections open but holds every byte back until
``restore()`` (a broker that stopped answering: no error, no confirm; it also
stops reading, so the client's writes back up). With ``server_ssl`` the proxy
terminates TLS: clients speak TLS to it, it speaks plain TCP to the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    def __init__(
        self, target_host: str, target_port: int, *, server_ssl: ssl.SSLContext | None = None
    ) -> None:
        self._target = (target_host, target_port)
        self._server_ssl = server_ssl
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0
        # Connections accepted and passed on to the target (TLS ones once the
        # handshake succeeded).
        self.accepted = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, ssl=self._server_ssl
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def refuse(self) -> None:
        self._refusing = True
        self.cut()

    def stall(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        self._refusing = False
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer),
            self._downstream(up_reader, writer),
            return_exceptions=True,
        )

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """What the target sends to the client."""
        await self._pipe(reader, writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()


def target_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default_port = {"amqp": 5672, "postgresql": 5432}[parts.scheme]
    return parts.hostname or "127.0.0.1", parts.port or default_port


@contextlib.asynccontextmanager
async def proxy_for(
    url: str, *, server_ssl: ssl.SSLContext | None = None
) -> AsyncIterator[TcpProxy]:
    """A running proxy in front of the host and port of ``url``."""
    proxy = TcpProxy(*target_of(url), server_ssl=server_ssl)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def via_proxy(
    url: str, proxy: TcpProxy, *, scheme: str | None = None, host: str = "127.0.0.1"
) -> str:
    """``url`` (same credentials, database or vhost) reached through ``proxy``;
    ``scheme`` replaces the URL's (``amqps`` for a TLS-terminating proxy)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{host}:{proxy.port}"
    return urlunsplit(
        parts._replace(
            scheme=scheme or parts.scheme,
            netloc=f"{credentials}@{netloc}" if credentials else netloc,
        )
    )
