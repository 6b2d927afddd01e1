"""The client: calls methods through a runtime (or any polycall server)."""

from __future__ import annotations

from typing import Any, Optional

from . import codec
from . import frame as F
from .connection import Connection, Payload, Settings


class Client:
    """A client over one multiplexed connection.

    >>> async with await Client.connect("127.0.0.1:7464") as c:   # doctest: +SKIP
    ...     await c.call("debug.echo", b"hi")
    b'hi'
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @classmethod
    async def connect(cls, endpoint: str, settings: Optional[Settings] = None) -> "Client":
        """Connects to ``HOST:PORT`` (handshake included)."""
        return cls(await Connection.open(endpoint, settings))

    async def call(self, method: str, data: bytes = b"", *, timeout: Optional[float] = None,
                   priority: Optional[str] = None, idempotent: bool = False,
                   content_type: int = F.RAW) -> bytes:
        """Calls ``SERVICE.METHOD`` with a raw message; returns the reply's bytes.

        ``timeout`` (seconds) sets the deadline; ``priority`` is critical, high, normal or
        low. Errors raise :class:`polycall.PolycallError` subclasses; cancelling the
        awaiting task cancels the call (CANCEL frame).
        """
        reply = await self.connection.call(method, data, content_type=content_type, timeout=timeout,
                                           priority=priority, idempotent=idempotent)
        return reply.data

    async def call_payload(self, method: str, payload: Payload, *, timeout: Optional[float] = None,
                           priority: Optional[str] = None, idempotent: bool = False) -> Payload:
        """Like :meth:`call`, with the content type of both messages."""
        return await self.connection.call(method, payload.data, content_type=payload.content_type,
                                          timeout=timeout, priority=priority, idempotent=idempotent)

    async def call_json(self, method: str, value: Any = None, *, timeout: Optional[float] = None,
                        priority: Optional[str] = None, idempotent: bool = False) -> Any:
        """Calls with a JSON message (``value``; None sends ``{}``) and decodes the JSON
        reply (an empty reply is ``{}``)."""
        data = codec.encode_json({} if value is None else value)
        reply = await self.connection.call(method, data, content_type=F.JSON, timeout=timeout,
                                           priority=priority, idempotent=idempotent)
        return codec.decode_json(reply.data, f"the reply of {method}")

    async def close(self) -> None:
        """Closes the connection."""
        self.connection.close()
        await self.connection.wait_closed()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
