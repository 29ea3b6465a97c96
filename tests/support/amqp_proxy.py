"""A proxy in front of RabbitMQ that knows where the broker's AMQP frames end.

Everything else is the real broker; the proxy only lets a test say what a
broker (or a man in the middle) might say and the local broker cannot be made
to say without disturbing everyone using it:

- ``inject(frame_bytes)`` slips bytes into what the broker sends to every
  connected client, between two whole frames (``connection.blocked`` when a
  resource alarm fires, a frame header announcing 4 GB);
- ``answer_with(data)`` makes the proxy answer new connections itself with
  ``data`` and hang up, instead of reaching the broker (a wrong port, an HTTP
  load balancer's error page), until ``restore()``.

It is a :class:`TcpProxy`, so ``cut``, ``refuse`` and ``stall`` work too.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

from pamqp import frame

from tests.support.tcp_proxy import TcpProxy, target_of

_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_OVERHEAD = _FRAME_HEAD.size + 1  # header and the frame-end octet


def amqp_frame(value: Any, channel: int = 0) -> bytes:
    """``value`` (a pamqp command) as the bytes of one frame."""
    return frame.marshal(value, channel)


def _whole_frames(buffer: bytearray) -> int:
    """How many leading bytes of ``buffer`` are whole frames."""
    end = 0
    while len(buffer) - end >= _FRAME_HEAD.size:
        _, _, size = _FRAME_HEAD.unpack_from(buffer, end)
        if len(buffer) - end < size + _FRAME_OVERHEAD:
            break
        end += size + _FRAME_OVERHEAD
    return end


class AmqpProxy(TcpProxy):
    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self._clients: set[asyncio.StreamWriter] = set()
        self._answer: bytes | None = None
        self.answered = 0

    @property
    def connected(self) -> int:
        """Clients connected through to the broker right now."""
        return sum(1 for c in self._clients if not c.is_closing())

    def inject(self, data: bytes) -> int:
        """Send ``data`` to every connected client now; how many got it."""
        clients = [c for c in self._clients if not c.is_closing()]
        for client in clients:
            client.write(data)
        return len(clients)

    def answer_with(self, data: bytes) -> None:
        self._answer = data

    def restore(self) -> None:
        self._answer = None
        super().restore()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._answer is None:
            await super()._accept(reader, writer)
            return
        self.answered += 1
        with contextlib.suppress(ConnectionError):
            await reader.read(8)  # the client's protocol header
            writer.write(self._answer)
            await writer.drain()
        writer.close()

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Forward only whole frames, so that whatever inject() writes in
        # between lands on a frame boundary.
        self._clients.add(writer)
        buffer = bytearray()
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                buffer.extend(data)
                whole = _whole_frames(buffer)
                if whole:
                    writer.write(bytes(buffer[:whole]))
                    del buffer[:whole]
                    await writer.drain()
        finally:
            self._clients.discard(writer)
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()


@contextlib.asynccontextmanager
async def amqp_proxy_for(url: str) -> AsyncIterator[AmqpProxy]:
    proxy = AmqpProxy(*target_of(url))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
