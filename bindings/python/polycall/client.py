"""The client: calls methods through a runtime (or any polycall server)."""

from __future__ import annotations

from typing import Any, AsyncIterable, AsyncIterator, Iterable, Optional, Union

from . import codec
from . import frame as F
from . import trace as T
from .connection import Connection, Payload, ReplyStream, Requests, Settings, as_async_iterator


#: Seconds :meth:`Client.close` waits for the last spans to be exported.
CLOSE_FLUSH_TIMEOUT = 1.0


def _data(p: Payload) -> bytes:
    return p.data


def _json_decoder(method: str) -> Any:
    def decode(p: Payload) -> Any:
        return codec.decode_json(p.data, f"a reply of {method}")
    return decode


async def _json_messages(values: Union[AsyncIterable[Any], Iterable[Any]]) -> AsyncIterator[Payload]:
    it = as_async_iterator(values)
    try:
        async for v in it:
            yield Payload(codec.encode_json({} if v is None else v), F.JSON)
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


class Client:
    """A client over one multiplexed connection.

    >>> async with await Client.connect("127.0.0.1:7464") as c:   # doctest: +SKIP
    ...     await c.call("debug.echo", b"hi")
    b'hi'

    Calls made within a trace (in a provider's handler serving a traced call, or under
    ``polycall.trace.use``) carry its context and record client spans (``trace.py``).
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @classmethod
    async def connect(cls, endpoint: str, settings: Optional[Settings] = None, *,
                      service_name: str = T.DEFAULT_SERVICE) -> "Client":
        """Connects to ``HOST:PORT`` (handshake included). ``service_name`` (1..=128
        bytes) names this program in the spans it records."""
        return cls(await Connection.open(endpoint, settings, service_name=service_name))

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

    # Streaming calls (the peer must have negotiated streaming, else
    # :class:`polycall.UnsupportedError`). Each returns, or awaits, a
    # :class:`polycall.ReplyStream`: the call opens when iteration starts; ``timeout``
    # covers the whole call; leaving the iteration early (``break``, ``aclose()``,
    # cancelling the awaiting task) sends CANCEL. An ERROR from the callee raises its
    # :class:`polycall.PolycallError` subclass.

    def server_stream(self, method: str, data: bytes = b"", *, timeout: Optional[float] = None,
                      priority: Optional[str] = None, idempotent: bool = False,
                      content_type: int = F.RAW) -> ReplyStream:
        """Calls a method that answers with a stream of replies: one raw request, the
        replies' bytes as an async iterator.

        >>> async for chunk in client.server_stream("files.read", b"/etc/hosts"):  # doctest: +SKIP
        ...     print(chunk)
        """
        return self.connection.stream(method, data, content_type=content_type, timeout=timeout,
                                      priority=priority, idempotent=idempotent, decode=_data)

    def server_stream_json(self, method: str, value: Any = None, *, timeout: Optional[float] = None,
                           priority: Optional[str] = None, idempotent: bool = False) -> ReplyStream:
        """Like :meth:`server_stream` with a JSON request (None sends ``{}``); yields
        each reply's decoded JSON."""
        data = codec.encode_json({} if value is None else value)
        return self.connection.stream(method, data, content_type=F.JSON, timeout=timeout,
                                      priority=priority, idempotent=idempotent,
                                      decode=_json_decoder(method))

    async def client_stream(self, method: str, requests: Requests, *, timeout: Optional[float] = None,
                            priority: Optional[str] = None, idempotent: bool = False,
                            content_type: int = F.RAW) -> bytes:
        """Calls a method that takes a stream of requests: ``requests`` (an async or
        plain iterable of bytes — sent as ``content_type`` — or :class:`Payload`) are
        sent as they come, END after the last; returns the one reply's bytes."""
        return await self.connection.stream(
            method, requests=requests, content_type=content_type, timeout=timeout, priority=priority,
            idempotent=idempotent, decode=_data).single()

    async def client_stream_json(self, method: str, values: Union[AsyncIterable[Any], Iterable[Any]], *,
                                 timeout: Optional[float] = None, priority: Optional[str] = None,
                                 idempotent: bool = False) -> Any:
        """Like :meth:`client_stream` with JSON requests (each value encoded, None as
        ``{}``); returns the decoded JSON reply."""
        return await self.connection.stream(
            method, requests=_json_messages(values), content_type=F.JSON, timeout=timeout,
            priority=priority, idempotent=idempotent, decode=_json_decoder(method)).single()

    def bidi_stream(self, method: str, requests: Requests, *, timeout: Optional[float] = None,
                    priority: Optional[str] = None, idempotent: bool = False,
                    content_type: int = F.RAW) -> ReplyStream:
        """Calls a method that takes a stream of requests and answers with a stream of
        replies: ``requests`` are sent as they come (as for :meth:`client_stream`) while
        the replies' bytes arrive through the returned async iterator."""
        return self.connection.stream(method, requests=requests, content_type=content_type,
                                      timeout=timeout, priority=priority, idempotent=idempotent,
                                      decode=_data)

    def bidi_stream_json(self, method: str, values: Union[AsyncIterable[Any], Iterable[Any]], *,
                         timeout: Optional[float] = None, priority: Optional[str] = None,
                         idempotent: bool = False) -> ReplyStream:
        """Like :meth:`bidi_stream` with JSON requests and replies."""
        return self.connection.stream(method, requests=_json_messages(values), content_type=F.JSON,
                                      timeout=timeout, priority=priority, idempotent=idempotent,
                                      decode=_json_decoder(method))

    async def flush_spans(self, timeout: Optional[float] = None) -> None:
        """Exports the spans recorded so far and waits for the export (at most
        ``timeout`` seconds); failures are logged, never raised."""
        await self.connection.flush_spans(timeout)

    async def close(self) -> None:
        """Closes the connection, once the spans recorded are exported (waiting at most
        :data:`CLOSE_FLUSH_TIMEOUT` s)."""
        if not self.connection.is_closed:
            await self.connection.flush_spans(CLOSE_FLUSH_TIMEOUT)
        self.connection.close()
        await self.connection.wait_closed()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
