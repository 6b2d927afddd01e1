"""The provider: registers methods with a runtime and serves the calls routed to them."""

from __future__ import annotations

import inspect
from typing import AsyncIterable, Awaitable, Callable, Optional, Union

from . import frame as F
from . import trace as T
from .connection import (
    Connection,
    Handler,
    HandlerResult,
    IncomingCall,
    Message,
    Payload,
    RequestStream,
    Settings,
)
from .errors import InternalError, InvalidInputError, UnknownMethodError

#: Seconds :meth:`Provider.close` waits for the last spans to be exported.
CLOSE_FLUSH_TIMEOUT = 1.0

#: A method answering with a stream of replies: gets the call, returns an async
#: iterable of messages (bytes are raw) — usually it is an async generator function.
StreamHandler = Callable[[IncomingCall], Union[AsyncIterable[Message], Awaitable[AsyncIterable[Message]]]]


class Provider:
    """Serves methods on a connection to a runtime.

    Add methods with :meth:`add_method` (and the streaming ones with
    :meth:`add_server_stream`, :meth:`add_client_stream`, :meth:`add_bidi_stream`), then
    :meth:`start` registers them (REGISTER) and serving begins; calls run concurrently,
    each in its own task, and a CANCEL from the caller cancels it. The connection can
    also make calls (:attr:`client`).

    A call that carries a traceparent is served in a server span (``trace.py``):
    calls the handler makes continue the trace, and sampled spans are exported to the
    runtime under ``service_name`` (1..=128 bytes; :meth:`flush_spans`).
    """

    def __init__(self, endpoint: str, settings: Optional[Settings] = None, *,
                 service_name: str = T.DEFAULT_SERVICE) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.service_name = T.check_service_name(service_name)
        self._methods: dict[str, tuple[Callable, F.MethodEntry]] = {}
        self.connection: Optional[Connection] = None

    @classmethod
    async def connect(cls, endpoint: str, settings: Optional[Settings] = None, *,
                      service_name: str = T.DEFAULT_SERVICE) -> "Provider":
        """Connects to the runtime at ``HOST:PORT``; nothing is registered yet.
        ``service_name`` names the provider in the spans it records."""
        p = cls(endpoint, settings, service_name=service_name)
        p.connection = await Connection.open(endpoint, settings, p._dispatch, service_name=service_name)
        return p

    def add_method(self, full_name: str, handler: Handler, *, summary: str = "", input_hint: str = "",
                   output_hint: str = "", idempotent: bool = False) -> None:
        """Adds ``SERVICE.METHOD``, served by ``handler(call) -> Payload | bytes``.
        Registered by :meth:`start` (or at once when already started: call
        :meth:`start` again)."""
        self._add(full_name, handler, summary, input_hint, output_hint, idempotent, False, False)

    def add_server_stream(self, full_name: str, handler: StreamHandler, *, summary: str = "",
                          input_hint: str = "", output_hint: str = "", idempotent: bool = False) -> None:
        """Adds a method that answers with a stream of replies (REGISTER flag bit 2):
        ``handler(call)`` gets the one request in ``call.payload`` and returns an async
        iterable of replies (``Payload`` or raw ``bytes``) — an async generator::

            async def count(call):
                for i in range(int(call.payload)):
                    yield str(i).encode()

        The replies go out as they are yielded, within the caller's stream window (the
        generator is not resumed while the previous reply waits for the window); the
        end of the generator sends END, an exception ERROR (as for :meth:`add_method`).
        """
        self._add(full_name, handler, summary, input_hint, output_hint, idempotent, False, True)

    def add_client_stream(self, full_name: str, handler: Handler, *, summary: str = "",
                          input_hint: str = "", output_hint: str = "", idempotent: bool = False) -> None:
        """Adds a method that takes a stream of requests (REGISTER flag bit 1):
        ``handler(call) -> Payload | bytes`` reads them with ``async for request in
        call.requests`` (each a :class:`Payload`; the iteration ends at the caller's
        END) and returns the one reply. A call with a single unary request is seen as a
        stream of one."""
        self._add(full_name, handler, summary, input_hint, output_hint, idempotent, True, False)

    def add_bidi_stream(self, full_name: str, handler: StreamHandler, *, summary: str = "",
                        input_hint: str = "", output_hint: str = "", idempotent: bool = False) -> None:
        """Adds a method that takes a stream of requests and answers with a stream of
        replies (REGISTER flag bits 1 and 2): ``handler(call)`` reads ``call.requests``
        and yields replies, as for :meth:`add_client_stream` and
        :meth:`add_server_stream`::

            async def echo(call):
                async for request in call.requests:
                    yield request
        """
        self._add(full_name, handler, summary, input_hint, output_hint, idempotent, True, True)

    def _add(self, full_name: str, handler: Callable, summary: str, input_hint: str, output_hint: str,
             idempotent: bool, request_stream: bool, reply_stream: bool) -> None:
        if not F.valid_full_name(full_name):
            raise ValueError(f"{full_name!r} is not a valid SERVICE.METHOD name")
        self._methods[full_name] = (handler, F.MethodEntry(
            full_name, idempotent, summary, input_hint, output_hint, request_stream, reply_stream))

    @property
    def methods(self) -> list[str]:
        """The methods added."""
        return list(self._methods)

    async def start(self, timeout: float = 10.0) -> None:
        """Registers every method added so far; raises the runtime's refusal (for
        example :class:`polycall.AlreadyExistsError` for a runtime's own name)."""
        if self.connection is None:
            self.connection = await Connection.open(self.endpoint, self.settings, self._dispatch,
                                                    service_name=self.service_name)
        await self.connection.register([e for _, e in self._methods.values()], timeout)

    async def serve_forever(self) -> None:
        """Returns when the connection to the runtime ends."""
        if self.connection is not None:
            await self.connection.wait_closed()

    async def flush_spans(self, timeout: Optional[float] = None) -> None:
        """Exports the spans recorded so far and waits for the export (at most
        ``timeout`` seconds); failures are logged, never raised. For a program about to
        exit (:meth:`close` does it too, briefly)."""
        if self.connection is not None:
            await self.connection.flush_spans(timeout)

    async def close(self) -> None:
        """Closes the connection (calls in flight are abandoned), once the spans
        recorded are exported (waiting at most :data:`CLOSE_FLUSH_TIMEOUT` s)."""
        if self.connection is not None:
            if not self.connection.is_closed:
                await self.connection.flush_spans(CLOSE_FLUSH_TIMEOUT)
            self.connection.close("the provider stopped")
            await self.connection.wait_closed()

    async def _dispatch(self, call: IncomingCall) -> HandlerResult:
        entry = self._methods.get(call.method)
        if entry is None:
            raise UnknownMethodError(f"this provider does not serve {call.method}")
        handler, info = entry
        if call.requests is not None and not info.request_stream:
            raise InvalidInputError(f"{call.method} takes one request message ({info.kind}), not a stream")
        if info.request_stream and call.requests is None:
            call.requests = RequestStream.of([Payload(call.payload, call.content_type)])
        result = handler(call)
        if not info.reply_stream:
            return await result
        if inspect.isawaitable(result):
            result = await result
        if not hasattr(result, "__aiter__"):
            raise InternalError(
                f"{call.method} answers with a stream, but its handler returned {type(result).__name__}")
        return result

    @property
    def client(self):  # noqa: ANN201 - avoids an import cycle in the annotation
        """A :class:`polycall.Client` over the provider's own connection."""
        from .client import Client

        assert self.connection is not None, "connect first"
        return Client(self.connection)
