"""One polycall connection over asyncio streams (the connecting side).

It owns the protocol for its socket: the preface and HELLO/WELCOME negotiation, call ids
(odd, increasing), method-name interning in both directions, fragmentation of large
messages into DATA frames within the peer's ``max_frame``, reassembly within the local
``max_message``, flow-control credit both ways, compression (zstd when negotiated),
CANCEL, GOAWAY, PING/PONG, calls the peer opens (a provider's incoming calls), and
streaming calls (docs/protocol.md §3, §6.1): further messages as DATA with FIRST, END,
and a window per streaming direction, returned with STREAM_CREDIT. Calls carry the W3C
trace context of the code making them, and served calls continue the caller's (see
``trace.py``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import struct
import time
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Optional, Union

from . import codec
from . import frame as F
from . import trace as T
from .errors import CancelledError as CallCancelledError
from .errors import (
    DeadlineExceededError,
    InternalError,
    InvalidInputError,
    MalformedError,
    PolycallError,
    TooLargeError,
    UnavailableError,
    UnknownMethodError,
    UnsupportedError,
    error_for,
)

VERSION = "0.1.0"
PROTOCOL_VERSION = 1
HANDSHAKE_MAX_FRAME = 16 * 1024
MAX_INTERNED = 4096
#: Messages up to this size travel whole in their CALL frame.
INLINE_MAX = 8 * 1024
#: Feature bit 0: CRC32C trailers. Not offered (see crc32c.py).
FEATURE_CRC32C = 1 << 0
#: Feature bit 1: streaming calls (STREAM, EMPTY, DATA with FIRST, END, STREAM_CREDIT).
FEATURE_STREAMING = 1 << 1
#: Feature bits this binding offers by default.
FEATURES = FEATURE_STREAMING


@dataclasses.dataclass
class Settings:
    """What this side offers and accepts."""

    limits: F.Limits = dataclasses.field(default_factory=F.Limits)
    agent: str = f"polycall-python/{VERSION}"
    #: Offer zstd (only when ``zstandard`` imports).
    zstd: bool = dataclasses.field(default_factory=codec.zstd_available)
    #: Largest payload fragment per frame (capped by the peer's max_frame).
    fragment_size: int = 64 * 1024
    #: Seconds allowed for connecting and the handshake.
    connect_timeout: float = 10.0
    #: Compress outgoing messages of at least this many bytes with zstd when both sides
    #: read it (None: never compress).
    compress_min: Optional[int] = None
    #: Offer streaming calls (feature bit 1).
    streaming: bool = True

    def hello(self) -> F.Hello:
        """The HELLO of these settings."""
        comps = [F.ZSTD, F.NONE] if (self.zstd and codec.zstd_available()) else [F.NONE]
        features = FEATURES if self.streaming else FEATURES & ~FEATURE_STREAMING
        return F.Hello(
            PROTOCOL_VERSION, PROTOCOL_VERSION, features, self.limits,
            [F.JSON, F.RAW], comps, [0], self.agent,
        )


@dataclasses.dataclass
class Negotiated:
    """What the handshake agreed."""

    version: int
    features: int
    peer_limits: F.Limits
    codecs: list[int]
    compressions: list[int]
    peer_agent: str


class CallContext:
    """What a provider's method knows about the call it serves."""

    __slots__ = ("method", "meta", "deadline", "call_id", "trace")

    def __init__(self, method: str, meta: F.Meta, deadline: Optional[float], call_id: int) -> None:
        #: ``SERVICE.METHOD`` as called.
        self.method = method
        #: The call's metadata entries.
        self.meta = meta
        #: ``time.monotonic()`` value of the deadline, or None.
        self.deadline = deadline
        #: The call id on the connection.
        self.call_id = call_id
        #: The server span's trace context while the call is served, when the caller
        #: sent a traceparent (calls the handler makes are its children), else None.
        self.trace: Optional[T.TraceContext] = None

    def remaining(self) -> Optional[float]:
        """Seconds left until the deadline (None: no deadline)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    @property
    def priority(self) -> str:
        """critical, high, normal or low."""
        return F.PRIORITIES[2 if self.meta.priority is None else self.meta.priority]

    @property
    def idempotent(self) -> bool:
        """Whether the caller marked the call idempotent."""
        return self.meta.idempotent

    @property
    def principal(self) -> Optional[str]:
        """Who the call runs as (trusted only from an authenticated runtime)."""
        return self.meta.principal


@dataclasses.dataclass
class IncomingCall:
    """A call the peer opened. For a unary request, ``payload`` is the whole request
    message; when the caller streams its requests (CALL with STREAM), ``requests``
    yields them as they arrive and ``payload`` is empty."""

    method: str
    payload: bytes
    content_type: int
    context: CallContext
    requests: Optional["RequestStream"] = None


@dataclasses.dataclass
class Payload:
    """A message and how it is encoded (``frame.RAW`` or ``frame.JSON``)."""

    data: bytes
    content_type: int = F.RAW


#: A message as an application hands it over: raw bytes, or a :class:`Payload`.
Message = Union[Payload, bytes]
#: What a handler returns: the reply message (bytes are raw), or an async iterable of
#: them — a stream of replies.
HandlerResult = Union[Payload, bytes, AsyncIterable[Message]]
#: A handler of incoming calls: gets the call, returns the reply (or reply stream).
Handler = Callable[[IncomingCall], Awaitable[HandlerResult]]
#: Requests of a streaming call: an async or plain iterable of messages.
Requests = Union[AsyncIterable[Message], Iterable[Message]]


class _Rx:
    """A message being reassembled."""

    __slots__ = ("buf", "filled", "content_type", "compression")

    def __init__(self, total: int, content_type: int, compression: int) -> None:
        self.buf = bytearray(total)
        self.filled = 0
        self.content_type = content_type
        self.compression = compression


class _Inbox:
    """The receiving side of a call's messages from the peer (its request stream, or
    the replies of a streaming call): complete messages the application has not taken
    yet, the stream's window, and how it ended. ``streaming``: the peer's direction
    carried STREAM, so its bytes count against ``window`` (§6.1)."""

    __slots__ = ("call_id", "initial", "messages", "held", "window", "unreturned",
                 "streaming", "finished", "error", "event")

    def __init__(self, call_id: int, initial: int, streaming: bool) -> None:
        self.call_id = call_id
        #: This side's initial_window: the stream window's size.
        self.initial = initial
        #: Complete messages not yet taken, with their size on the wire.
        self.messages: collections.deque[tuple[Payload, int]] = collections.deque()
        #: Wire bytes of ``messages``.
        self.held = 0
        #: Bytes the peer may still send on the stream.
        self.window = initial
        #: Bytes received whose stream credit is not returned yet.
        self.unreturned = 0
        self.streaming = streaming
        #: No message follows: END (``error`` None), or the call failed with ``error``.
        self.finished = False
        self.error: Optional[BaseException] = None
        self.event = asyncio.Event()

    def push(self, message: Payload, size: int) -> None:
        self.messages.append((message, size))
        self.held += size
        self.event.set()

    def finish(self, error: Optional[BaseException] = None) -> None:
        if not self.finished:
            self.finished = True
            self.error = error
            self.event.set()


class _Tx:
    """The sending side of a streaming direction: the bytes the peer still accepts on
    it (its initial_window plus STREAM_CREDIT, less what was sent)."""

    __slots__ = ("window", "event", "done")

    def __init__(self, window: int) -> None:
        self.window = window
        self.event = asyncio.Event()
        #: END was sent, or the call ended: nothing more is sent.
        self.done = False


class _Pending:
    """A call this side opened. Unary calls (:meth:`Connection.call`) complete
    ``future``; streaming calls collect replies in ``inbox`` and send their request
    stream through ``tx`` from the ``pump`` task."""

    __slots__ = ("future", "rx", "sending", "inbox", "tx", "pump", "timer", "replied")

    def __init__(self, future: Optional[asyncio.Future]) -> None:
        self.future = future
        self.rx: Optional[_Rx] = None
        self.sending = True
        self.inbox: Optional[_Inbox] = None
        self.tx: Optional[_Tx] = None
        self.pump: Optional[asyncio.Task] = None
        self.timer: Optional[asyncio.TimerHandle] = None
        self.replied = False


class _Incoming:
    """A call the peer opened. ``inbox``: its request stream (CALL with STREAM);
    ``tx``: this side's reply stream, once opened."""

    __slots__ = ("method", "meta", "deadline", "rx", "task", "inbox", "tx")

    def __init__(self, method: str, meta: F.Meta, deadline: Optional[float]) -> None:
        self.method = method
        self.meta = meta
        self.deadline = deadline
        self.rx: Optional[_Rx] = None
        self.task: Optional[asyncio.Task] = None
        self.inbox: Optional[_Inbox] = None
        self.tx: Optional[_Tx] = None


class ProtocolViolation(Exception):
    """The peer broke the protocol: the connection ends."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) → (host, port)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


#: What :func:`_next_item` returns at the end of an iterator.
_DONE: Any = object()


async def _next_item(it: AsyncIterator[Any]) -> Any:
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return _DONE


async def _from_sync(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def as_async_iterator(items: Union[AsyncIterable[Any], Iterable[Any]]) -> AsyncIterator[Any]:
    """An async iterator over an async or plain iterable."""
    if hasattr(items, "__aiter__"):
        return items.__aiter__()  # type: ignore[union-attr]
    if isinstance(items, (bytes, bytearray, memoryview, str, Payload)) or not hasattr(items, "__iter__"):
        raise TypeError(f"expected an iterable of messages, got {type(items).__name__}")
    return _from_sync(items)  # type: ignore[arg-type]


def _to_payload(item: Any, content_type: int) -> Payload:
    if isinstance(item, Payload):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Payload(bytes(item), content_type)
    raise TypeError(f"a stream message must be bytes or a Payload, not {type(item).__name__}")


def _is_stream(result: Any) -> bool:
    return hasattr(result, "__aiter__") and not isinstance(result, (Payload, bytes, bytearray, memoryview))


async def _take(conn: Optional["Connection"], inbox: _Inbox) -> Optional[Payload]:
    """The next message of ``inbox`` (None at its END; its error raises)."""
    while not inbox.messages:
        if inbox.finished:
            if inbox.error is not None:
                raise inbox.error
            return None
        inbox.event.clear()
        await inbox.event.wait()
    message, size = inbox.messages.popleft()
    inbox.held -= size
    if conn is not None:
        conn._stream_taken(inbox)
    return message


class Connection:
    """A polycall connection (the connecting side: odd call ids).

    Spans of sampled calls (served, or made within a trace) are recorded under
    ``service_name`` by :attr:`span_recorder` and exported to the runtime on this
    connection (``trace.py``).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: Settings, negotiated: Negotiated, handler: Optional[Handler],
                 leftover: bytes = b"", *, service_name: str = T.DEFAULT_SERVICE) -> None:
        self._reader = reader
        self._writer = writer
        self.settings = settings
        self.negotiated = negotiated
        self._handler = handler
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._incoming: dict[int, _Incoming] = {}
        self._highest_peer_id = 0
        self._tx_names: dict[str, int] = {}
        self._rx_names: dict[int, str] = {}
        self._send_credit = negotiated.peer_limits.initial_window
        self._credit_event = asyncio.Event()
        self._recv_credit = settings.limits.initial_window
        self._credit_to_return = 0
        self._streaming = bool(negotiated.features & FEATURE_STREAMING)
        #: Receiving streams with stream credit to return (paused ones included).
        self._credit_due: set[_Inbox] = set()
        self._closed: Optional[PolycallError] = None
        self._closed_event = asyncio.Event()
        self._going_away: Optional[int] = None
        self._pings: dict[int, asyncio.Future] = {}
        self._leftover = leftover
        self._fragment = max(1024, min(settings.fragment_size, negotiated.peer_limits.max_frame))
        #: Buffers this connection's finished spans and exports them (``sys.trace.export``).
        self.span_recorder = T.SpanRecorder(self, service_name)
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    # ---------------------------------------------------------------- opening

    @classmethod
    async def open(cls, endpoint: str, settings: Optional[Settings] = None,
                   handler: Optional[Handler] = None, *,
                   service_name: str = T.DEFAULT_SERVICE) -> "Connection":
        """Connects to ``HOST:PORT`` and completes the handshake. ``service_name``
        (1..=128 bytes) names this program in the spans it records."""
        T.check_service_name(service_name)
        settings = settings or Settings()
        host, port = parse_endpoint(endpoint)
        try:
            async with asyncio.timeout(settings.connect_timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
                try:
                    negotiated, leftover = await cls._handshake(reader, writer, settings)
                except BaseException:
                    writer.close()
                    raise
        except TimeoutError:
            raise UnavailableError(
                f"connecting to {endpoint} took over {settings.connect_timeout} s") from None
        except OSError as e:
            raise UnavailableError(f"cannot connect to {endpoint}: {e}") from None
        conn = cls(reader, writer, settings, negotiated, handler, leftover, service_name=service_name)
        return conn

    @staticmethod
    async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         settings: Settings) -> tuple[Negotiated, bytes]:
        hello = settings.hello()
        writer.write(F.PREFACE + F.encode(hello))
        await writer.drain()
        try:
            preface = await reader.readexactly(len(F.PREFACE))
        except asyncio.IncompleteReadError:
            raise UnavailableError("the peer closed the connection during the handshake") from None
        if preface != F.PREFACE:
            raise MalformedError(
                f"the peer does not speak polycall (its first bytes are {preface.hex()})")
        buf = bytearray()
        while True:
            got = F.decode(buf, HANDSHAKE_MAX_FRAME, False)
            if got is not None:
                break
            chunk = await reader.read(HANDSHAKE_MAX_FRAME)
            if not chunk:
                raise UnavailableError("the peer closed the connection during the handshake")
            buf.extend(chunk)
        f, used = got
        if isinstance(f, F.Error):
            raise error_for(f.code, f"handshake refused: {f.message}")
        if not isinstance(f, F.Welcome):
            raise MalformedError(f"expected WELCOME, got {type(f).__name__}")
        bad = None
        if f.version != PROTOCOL_VERSION:
            bad = f"version {f.version} outside 1..=1"
        elif f.features & ~hello.features:
            bad = f"features 0x{f.features & ~hello.features:x} not offered"
        elif f.auth_method not in hello.auth_methods:
            bad = f"auth method {f.auth_method} not offered"
        elif any(c not in hello.compressions for c in f.compressions if c != F.NONE):
            bad = "a compression not offered"
        elif f.limits.validate():
            bad = f"server limits refused: {f.limits.validate()}"
        if bad:
            raise MalformedError(f"server's WELCOME is not within the client's offer: {bad}")
        comps = [c for c in f.compressions if c in F.COMPRESSIONS]
        if F.NONE not in comps:
            comps.append(F.NONE)
        codecs = [c for c in f.codecs if c in F.CONTENT_TYPES]
        if F.RAW not in codecs:
            codecs.append(F.RAW)
        return Negotiated(f.version, f.features, f.limits, codecs, comps, f.agent), bytes(buf[used:])

    # ---------------------------------------------------------------- state

    @property
    def is_closed(self) -> bool:
        """Whether the connection has ended."""
        return self._closed is not None

    @property
    def close_reason(self) -> Optional[PolycallError]:
        """Why the connection ended (None while it is open): for example a
        :class:`MalformedError` naming the peer's protocol violation."""
        return self._closed

    @property
    def streaming(self) -> bool:
        """Whether streaming calls were negotiated (feature bit 1)."""
        return self._streaming

    async def wait_closed(self) -> None:
        """Returns when the connection has ended."""
        await self._closed_event.wait()

    @property
    def in_flight(self) -> int:
        """Calls this side opened that have not completed."""
        return len(self._pending)

    async def flush_spans(self, timeout: Optional[float] = None) -> None:
        """Exports the spans recorded so far (``sys.trace.export``) and waits for the
        export; gives up quietly after ``timeout`` seconds. Never raises for a failed
        export (failures are logged)."""
        try:
            async with asyncio.timeout(timeout):
                await self.span_recorder.flush()
        except TimeoutError:
            T.log.warning("flushing spans took over %s s; %d left unexported", timeout,
                          self.span_recorder.pending)

    def close(self, reason: str = "closed by the application") -> None:
        """Ends the connection: tells the peer (ERROR on call 0), fails open calls with
        ``unavailable``. Spans not exported yet are dropped: flush them first
        (:meth:`flush_spans`; :meth:`polycall.Client.close` and
        :meth:`polycall.Provider.close` do)."""
        if self._closed is None:
            try:
                self._write(F.Error(0, UnavailableError.CODE, reason))
            except Exception:  # noqa: BLE001 - the socket may be gone already
                pass
        self._shutdown(UnavailableError(f"connection closed: {reason}"))

    def _shutdown(self, err: PolycallError) -> None:
        if self._closed is not None:
            return
        self._closed = err
        self.span_recorder.stop()
        for p in list(self._pending.values()):
            gone = UnavailableError(f"connection ended before the call completed: {err.message}")
            if p.inbox is not None:
                self._stop_call(p, gone)
            elif p.future is not None and not p.future.done():
                p.future.set_exception(gone)
        self._pending.clear()
        for inc in list(self._incoming.values()):
            if inc.task is not None:
                inc.task.cancel()
            if inc.inbox is not None:
                inc.inbox.finish(UnavailableError(f"connection ended: {err.message}"))
            if inc.tx is not None:
                inc.tx.done = True
                inc.tx.event.set()
        self._incoming.clear()
        self._credit_due.clear()
        self._credit_event.set()
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            current = asyncio.current_task()
        except RuntimeError:  # closed outside the event loop
            current = None
        if self._reader_task is not current:
            self._reader_task.cancel()
        self._closed_event.set()

    # ---------------------------------------------------------------- writing

    def _write(self, f: F.Frame) -> None:
        self._writer.writelines(F.encode_parts(f))

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError, AssertionError):
            # The read loop notices the end and fails the calls.
            pass

    def _take_credit(self, n: int, tx: Optional[_Tx] = None) -> None:
        self._send_credit -= n
        if tx is not None:
            tx.window -= n

    async def _wait_credit(self, want: int, tx: Optional[_Tx] = None) -> None:
        """Waits for ``want`` bytes of connection credit and, for a streaming direction
        ``tx``, some room in its window (or its end). Never for more than a quarter of
        the peer's window: the peer returns credit by quarters, so waiting for more
        could wait forever."""
        want = min(want, max(1, self.negotiated.peer_limits.initial_window // 4))
        while True:
            if self._closed is not None:
                raise self._closed
            if self._send_credit < want:
                self._credit_event.clear()
                await self._credit_event.wait()
            elif tx is not None and tx.window <= 0 and not tx.done:
                tx.event.clear()
                await tx.event.wait()
            else:
                return

    def _maybe_compress(self, data: bytes, content_type: int) -> tuple[int, bytes]:
        m = self.settings.compress_min
        if (m is not None and len(data) >= m and F.ZSTD in self.negotiated.compressions
                and codec.zstd_available() and content_type != F.RAW):
            z = codec.compress(F.ZSTD, data)
            if len(z) < len(data):
                return F.ZSTD, z
        return F.NONE, data

    async def _send_rest(self, call_id: int, data: memoryview, offset: int,
                         alive: Callable[[], bool], tx: Optional[_Tx] = None) -> None:
        """Sends ``data[offset:]`` as DATA continuation frames, within credit (and the
        stream window ``tx``)."""
        total = len(data)
        while offset < total:
            left = total - offset
            await self._wait_credit(min(left, 1024), tx)
            if not alive():
                return
            n = min(left, self._fragment, self._send_credit)
            if tx is not None:
                n = min(n, tx.window)
            if n <= 0:
                return
            more = offset + n < total
            self._take_credit(n, tx)
            self._write(F.Data(call_id, None, more, None, bytes(data[offset:offset + n])))
            offset += n
            await self._drain()

    async def _send_message(self, call_id: int, tx: _Tx, message: Payload, alive: Callable[[], bool],
                            opens_reply: bool = False) -> None:
        """Sends one further message of a stream — DATA with FIRST, continued by DATA —
        or (``opens_reply``) the REPLY(STREAM) opening a reply stream with its first
        message; within the peer's max_frame, the connection credit and the stream's
        window."""
        peer = self.negotiated.peer_limits
        if len(message.data) > peer.max_message:
            raise TooLargeError(
                f"a stream message of {len(message.data)} bytes exceeds the peer's limit of {peer.max_message}")
        ct = message.content_type
        compression, wire = self._maybe_compress(message.data, ct)
        total = len(wire)
        cap = min(self._fragment, peer.max_frame - 6)

        def first(more: bool, fragment: bytes) -> F.Frame:
            n = total if more else None
            if opens_reply:
                return F.Reply(call_id, ct, compression, more, n, True, fragment)
            return F.Data(call_id, (ct, compression), more, n, fragment)

        if total:
            await self._wait_credit(min(total, 1024), tx)
            if not alive():
                return
        room = min(self._send_credit, tx.window)
        if total <= cap and total <= room:
            self._take_credit(total, tx)
            self._write(first(False, wire))
            await self._drain()
            return
        n = max(0, min(total - 1, cap, room))
        self._take_credit(n, tx)
        view = memoryview(wire)
        self._write(first(True, bytes(view[:n])))
        await self._send_rest(call_id, view, n, alive, tx)

    # ---------------------------------------------------------------- calling

    def _check_open(self) -> None:
        if self._closed is not None:
            raise UnavailableError(f"the connection has ended: {self._closed.message}")
        if self._going_away is not None:
            raise UnavailableError("the peer is going away; open a new connection")

    def _call_meta(self, meta: Optional[F.Meta], timeout: Optional[float], priority: Optional[str],
                   idempotent: bool) -> F.Meta:
        m = meta or F.Meta()
        if timeout is not None:
            m.timeout_us = max(0, int(timeout * 1_000_000))
        if priority is not None and priority != "normal":
            if priority not in F.PRIORITY_NUMBERS:
                raise ValueError(f"priority {priority!r}: use critical, high, normal or low")
            m.priority = F.PRIORITY_NUMBERS[priority]
        if idempotent:
            m.idempotent = True
        return m

    def _method_ref(self, method: str) -> tuple[int, Optional[str]]:
        """(method id, name to send): bind on first use, name per call past the limit."""
        mid = self._tx_names.get(method)
        if mid is not None:
            return mid, None
        if len(self._tx_names) < MAX_INTERNED:
            mid = len(self._tx_names) + 1
            self._tx_names[method] = mid
            return mid, method
        return 0, method

    def _write_call(self, call_id: int, mid: int, name: Optional[str], content_type: int,
                    compression: int, m: F.Meta, wire: bytes, stream: bool, tx: Optional[_Tx]) -> int:
        """Writes the CALL with as much of ``wire`` as fits now (the rest follows as DATA
        within credit); returns how many bytes it carried."""
        empty = F.Call(call_id, mid, name, content_type, compression, m, False, None, stream, b"")
        fields = len(F.encode(empty)) - F.HEADER_LEN + 4
        room = max(0, self.negotiated.peer_limits.max_frame - fields)
        total = len(wire)
        credit = self._send_credit if tx is None else min(self._send_credit, tx.window)
        if total <= min(INLINE_MAX, room, self._fragment) and total <= credit:
            self._take_credit(total, tx)
            self._write(F.Call(call_id, mid, name, content_type, compression, m, False, None, stream, wire))
            return total
        n = min(total - 1 if total else 0, room, self._fragment, max(0, credit))
        self._take_credit(n, tx)
        self._write(F.Call(call_id, mid, name, content_type, compression, m, True, total, stream,
                           bytes(memoryview(wire)[:n])))
        return n

    def _client_span(self, method: str, meta: Optional[F.Meta],
                     parent: T.TraceContext) -> tuple[T.OpenSpan, F.Meta]:
        """The client span of a call made in ``parent``, and a copy of ``meta`` carrying
        its traceparent (``meta`` itself is never changed)."""
        span = T.OpenSpan.client(self.span_recorder, method, parent)
        m = F.Meta() if meta is None else dataclasses.replace(meta, extensions=list(meta.extensions))
        m.traceparent = span.traceparent
        if m.tracestate is None:
            m.tracestate = parent.state
        return span, m

    async def _traced_call(self, parent: T.TraceContext, method: str, data: bytes, content_type: int,
                           timeout: Optional[float], priority: Optional[str], idempotent: bool,
                           meta: Optional[F.Meta]) -> Payload:
        """:meth:`call` in a client span, a child of ``parent``."""
        span, m = self._client_span(method, meta, parent)
        try:
            reply = await self.call(method, data, content_type=content_type, timeout=timeout,
                                    priority=priority, idempotent=idempotent, meta=m)
        except BaseException as e:
            span.finish(e)
            raise
        span.finish()
        return reply

    async def call(self, method: str, data: bytes = b"", *, content_type: int = F.RAW,
                   timeout: Optional[float] = None, priority: Optional[str] = None,
                   idempotent: bool = False, meta: Optional[F.Meta] = None) -> Payload:
        """Calls ``SERVICE.METHOD`` and returns the reply message.

        ``timeout``: seconds until the deadline (sent to the callee, enforced here:
        :class:`DeadlineExceededError`). Cancelling the awaiting task sends CANCEL.
        Failures raise :class:`PolycallError` subclasses.

        Made within a trace (``trace.CURRENT`` set: in a handler serving a traced call,
        or under ``trace.use``), the call opens a client span — a child of the current
        span, sent as the callee's parent — recorded when it ends if the trace is
        sampled. A traceparent given in ``meta`` is sent as is, with no span.
        """
        if meta is None or meta.traceparent is None:
            parent = T.CURRENT.get()
            if parent is not None:
                return await self._traced_call(parent, method, data, content_type, timeout, priority,
                                               idempotent, meta)
        self._check_open()
        if not F.valid_full_name(method):
            raise UnknownMethodError(f"{method!r} is not a valid SERVICE.METHOD name")
        if len(data) > self.negotiated.peer_limits.max_message:
            raise TooLargeError(
                f"message of {len(data)} bytes exceeds the peer's limit of "
                f"{self.negotiated.peer_limits.max_message}")
        m = self._call_meta(meta, timeout, priority, idempotent)
        compression, wire = self._maybe_compress(data, content_type)
        call_id = self._next_id
        self._next_id += 2
        mid, name = self._method_ref(method)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        pending = _Pending(fut)
        self._pending[call_id] = pending
        # The CALL frame leaves at once (call ids increase on the wire), carrying as much
        # of the message as fits, the rest follows as DATA within credit.
        n = self._write_call(call_id, mid, name, content_type, compression, m, wire, False, None)
        pending.sending = n < len(wire)

        def alive() -> bool:
            return call_id in self._pending and self._closed is None

        deadline = None if timeout is None else loop.time() + timeout
        try:
            if pending.sending:
                if deadline is None:
                    await self._send_rest(call_id, memoryview(wire), n, alive)
                else:
                    async with asyncio.timeout_at(deadline):
                        await self._send_rest(call_id, memoryview(wire), n, alive)
                pending.sending = False
            if deadline is None:
                return await fut
            async with asyncio.timeout_at(deadline):
                return await fut
        except TimeoutError:
            self._abandon(call_id)
            raise DeadlineExceededError(
                f"{method}: the deadline of {timeout} s passed before the reply arrived") from None
        except asyncio.CancelledError:
            self._abandon(call_id)
            raise
        except PolycallError:
            self._pending.pop(call_id, None)
            raise

    def _abandon(self, call_id: int) -> None:
        """The caller gave up: forget the call and tell the peer."""
        if self._pending.pop(call_id, None) is not None and self._closed is None:
            try:
                self._write(F.Cancel(call_id))
            except Exception:  # noqa: BLE001
                pass

    # ---------------------------------------------------------------- streaming calls

    def stream(self, method: str, data: bytes = b"", requests: Optional[Requests] = None, *,
               content_type: int = F.RAW, timeout: Optional[float] = None,
               priority: Optional[str] = None, idempotent: bool = False,
               meta: Optional[F.Meta] = None,
               decode: Optional[Callable[[Payload], Any]] = None) -> "ReplyStream":
        """A streaming call of ``SERVICE.METHOD``: its replies, as a :class:`ReplyStream`
        (an async iterator of :class:`Payload`, or of ``decode(payload)``).

        Without ``requests`` the request is the one message ``data`` (a server stream).
        With ``requests`` — an async or plain iterable of messages (bytes are sent as
        ``content_type``) — the requests are a stream: CALL(STREAM) carries the first
        message, or CALL(STREAM, EMPTY) when the iterable has none ready; each further
        one goes as DATA with FIRST, within the peer's stream window; END follows the
        last. The call opens when iteration starts (or on ``async with``).

        ``timeout`` covers the whole call (:class:`DeadlineExceededError`, and CANCEL
        to the peer); ``priority`` and ``idempotent`` as for :meth:`call`. Raises
        :class:`UnsupportedError` when the peer did not negotiate streaming.

        Tracing as for :meth:`call`: the trace context is the one current when
        ``stream`` is called; the client span runs from the call's opening to the end
        of its replies (END, ERROR, cancel).
        """
        if not F.valid_full_name(method):
            raise UnknownMethodError(f"{method!r} is not a valid SERVICE.METHOD name")
        if requests is not None and (
                isinstance(requests, (bytes, bytearray, memoryview, str, Payload))
                or not (hasattr(requests, "__aiter__") or hasattr(requests, "__iter__"))):
            raise TypeError(f"requests must be an iterable of messages, not {type(requests).__name__}")
        span: Optional[T.OpenSpan] = None
        if meta is None or meta.traceparent is None:
            parent = T.CURRENT.get()
            if parent is not None:
                span, meta = self._client_span(method, meta, parent)
        m = self._call_meta(meta, timeout, priority, idempotent)
        return ReplyStream(self, method, bytes(data), requests, content_type, timeout, m, decode, span)

    def _check_streaming(self) -> None:
        if not self._streaming:
            raise UnsupportedError(
                f"the peer ({self.negotiated.peer_agent}) did not negotiate streaming (feature bit 1)")

    async def _open_stream(self, method: str, data: bytes, requests: Optional[Requests],
                           content_type: int, timeout: Optional[float],
                           m: F.Meta) -> tuple[int, _Pending]:
        """Opens a streaming call (see :meth:`stream`); returns its id and state."""
        self._check_open()
        self._check_streaming()
        peer = self.negotiated.peer_limits
        loop = asyncio.get_running_loop()
        it: Optional[AsyncIterator[Any]] = None
        first: Any = None
        first_task: Optional[asyncio.Task] = None
        try:
            if requests is None:
                first = Payload(data, content_type)
            else:
                # Is a first request ready? One turn of the loop decides: if not, the
                # stream opens without a message (EMPTY) and the pump sends it later.
                it = as_async_iterator(requests)
                first_task = loop.create_task(_next_item(it))
                await asyncio.sleep(0)
                if first_task.done():
                    first = first_task.result()  # the iterator's own failure is the caller's
                    first_task = None
                    if first is not _DONE:
                        first = _to_payload(first, content_type)
                self._check_open()
            if isinstance(first, Payload) and len(first.data) > peer.max_message:
                raise TooLargeError(
                    f"message of {len(first.data)} bytes exceeds the peer's limit of {peer.max_message}")
        except BaseException:
            if first_task is not None:
                first_task.cancel()
            elif it is not None and hasattr(it, "aclose"):
                try:
                    await it.aclose()  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001
                    pass
            raise
        if timeout is not None:
            m.timeout_us = max(0, int(timeout * 1_000_000))
        # From here to the CALL's write nothing awaits: call ids increase on the wire.
        call_id = self._next_id
        self._next_id += 2
        mid, name = self._method_ref(method)
        p = _Pending(None)
        p.inbox = _Inbox(call_id, self.settings.limits.initial_window, False)
        stream = requests is not None
        tx = _Tx(peer.initial_window) if stream else None
        p.tx = tx
        self._pending[call_id] = p
        wire: Optional[bytes] = None
        sent = 0
        if isinstance(first, Payload):
            compression, wire = self._maybe_compress(first.data, first.content_type)
            sent = self._write_call(call_id, mid, name, first.content_type, compression, m, wire, stream, tx)
        else:
            self._write(F.Call(call_id, mid, name, F.RAW, F.NONE, m, False, None, True, b"", True))
            if first is _DONE:
                assert tx is not None
                tx.done = True
                self._write(F.End(call_id))
        if timeout is not None:
            p.timer = loop.call_later(max(0.0, timeout), self._expire, call_id, p, method, timeout)
        if (wire is not None and sent < len(wire)) or (tx is not None and not tx.done):
            p.pump = loop.create_task(self._pump(call_id, p, wire, sent, it, first_task, content_type))
        return call_id, p

    async def _pump(self, call_id: int, p: _Pending, wire: Optional[bytes], sent: int,
                    it: Optional[AsyncIterator[Any]], first_task: Optional[asyncio.Task],
                    content_type: int) -> None:
        """Sends the rest of a call's first message, then (for a request stream) each
        further request as the iterator yields it, then END. A failing iterator, or a
        request that cannot be sent, fails the call with its error (CANCEL to the
        peer)."""
        tx = p.tx

        def alive() -> bool:
            return self._pending.get(call_id) is p and self._closed is None

        try:
            if wire is not None and sent < len(wire):
                await self._send_rest(call_id, memoryview(wire), sent, alive, tx)
            if it is None or tx is None:
                return
            while alive() and not tx.done:
                if first_task is not None:
                    item = await first_task
                    first_task = None
                else:
                    item = await _next_item(it)
                if not alive():
                    return
                if item is _DONE:
                    tx.done = True
                    self._write(F.End(call_id))
                    await self._drain()
                    return
                await self._send_message(call_id, tx, _to_payload(item, content_type), alive)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the caller's requests failed: so does the call
            if alive():
                self._finish_call(call_id, p, e, cancel=True)
        finally:
            if first_task is not None:
                first_task.cancel()
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # noqa: BLE001 - still running elsewhere, or failing on close
                    pass

    def _expire(self, call_id: int, p: _Pending, method: str, timeout: float) -> None:
        if self._pending.get(call_id) is p:
            self._finish_call(call_id, p, DeadlineExceededError(
                f"{method}: the deadline of {timeout} s passed before the call completed"), cancel=True)

    def _finish_call(self, call_id: int, p: _Pending, error: Optional[BaseException], cancel: bool) -> None:
        """Ends a streaming call this side opened: its replies end (with ``error``), its
        request stream stops, and — ``cancel`` — the peer gets CANCEL."""
        if self._pending.get(call_id) is p:
            del self._pending[call_id]
            if cancel and self._closed is None:
                try:
                    self._write(F.Cancel(call_id))
                except Exception:  # noqa: BLE001
                    pass
        self._stop_call(p, error)

    def _stop_call(self, p: _Pending, error: Optional[BaseException]) -> None:
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None
        if p.inbox is not None:
            p.inbox.finish(error)
            self._credit_due.discard(p.inbox)
        if p.tx is not None:
            p.tx.done = True
            p.tx.event.set()
        pump = p.pump
        if pump is not None and not pump.done():
            try:
                current = asyncio.current_task()
            except RuntimeError:
                current = None
            if pump is not current:
                pump.cancel()

    def _replies_ended(self, call_id: int, p: _Pending) -> None:
        """The callee finished (END, or its one reply): the call is complete; a request
        stream still being sent is cut off with CANCEL."""
        self._finish_call(call_id, p, None, cancel=p.tx is not None and not p.tx.done)

    # ---------------------------------------------------------------- admin

    async def register(self, methods: list[F.MethodEntry], timeout: float = 10.0) -> None:
        """Announces methods this side serves (REGISTER); raises the peer's refusal."""
        await self._admin(F.Register, methods, timeout)

    async def unregister(self, methods: list[str], timeout: float = 10.0) -> None:
        """Withdraws methods (UNREGISTER)."""
        await self._admin(F.Unregister, methods, timeout)

    async def _admin(self, kind: Any, methods: list, timeout: float) -> None:
        self._check_open()
        call_id = self._next_id
        self._next_id += 2
        fut = asyncio.get_running_loop().create_future()
        self._pending[call_id] = _Pending(fut)
        self._pending[call_id].sending = False
        self._write(kind(call_id, methods))
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            self._pending.pop(call_id, None)
            raise DeadlineExceededError(f"no answer to {kind.__name__} within {timeout} s") from None

    async def ping(self, timeout: float = 5.0) -> float:
        """Round trip of a PING, in seconds."""
        self._check_open()
        opaque = int(time.monotonic_ns()) & 0xFFFFFFFFFFFFFFFF
        fut = asyncio.get_running_loop().create_future()
        self._pings[opaque] = fut
        start = time.monotonic()
        self._write(F.Ping(opaque))
        async with asyncio.timeout(timeout):
            await fut
        return time.monotonic() - start

    # ---------------------------------------------------------------- reading

    async def _read_loop(self) -> None:
        # This task's context was copied from the code that opened the connection: the
        # calls it serves must not continue that code's trace (tasks started here copy
        # this context).
        T.CURRENT.set(None)
        buf = bytearray()
        max_frame = self.settings.limits.max_frame
        err: PolycallError = UnavailableError("the peer closed the connection")
        try:
            while True:
                if self._leftover:
                    chunk, self._leftover = self._leftover, b""
                else:
                    chunk = await self._reader.read(1 << 18)
                if not chunk:
                    break
                buf.extend(chunk)
                pos = 0
                n = len(buf)
                while n - pos >= F.HEADER_LEN:
                    length = struct.unpack_from("<I", buf, pos)[0]
                    if n - pos < F.HEADER_LEN + length and length <= max_frame:
                        break
                    mv = memoryview(buf)
                    try:
                        got = F.decode(mv[pos:], max_frame, False)
                    finally:
                        mv.release()
                    if got is None:
                        break
                    f, used = got
                    pos += used
                    self._handle(f)
                if pos:
                    del buf[:pos]
                self._return_credit()
        except F.FrameError as e:
            err = MalformedError(f"the peer sent a bad frame: {e}")
            self._fail_connection(err)
        except ProtocolViolation as e:
            err = MalformedError(f"protocol violation by the peer: {e}")
            self._fail_connection(err)
        except PolycallError as e:
            err = e
        except asyncio.CancelledError:
            return
        except (ConnectionError, OSError) as e:
            err = UnavailableError(f"connection lost: {e}")
        self._shutdown(err)

    def _fail_connection(self, err: PolycallError) -> None:
        try:
            self._write(F.Error(0, err.code, err.message[:F.MAX_MESSAGE_TEXT]))
        except Exception:  # noqa: BLE001
            pass

    def _return_credit(self) -> None:
        if self._credit_to_return and self._credit_to_return >= self.settings.limits.initial_window // 4:
            inc = self._credit_to_return
            self._credit_to_return = 0
            self._recv_credit += inc
            self._write(F.Credit(inc))
        if self._credit_due:
            for inbox in list(self._credit_due):
                self._return_stream_credit(inbox)

    def _return_stream_credit(self, inbox: _Inbox) -> None:
        """Returns a stream's credit as its bytes arrive (in steps of a quarter window),
        except while its complete messages not yet taken hold half the window or more:
        a reader that stops stops only this stream's producer (§6.1)."""
        if inbox.finished or self._closed is not None:
            self._credit_due.discard(inbox)
            return
        if inbox.unreturned >= max(1, inbox.initial // 4) and inbox.held * 2 < inbox.initial:
            inc = inbox.unreturned
            inbox.unreturned = 0
            inbox.window += inc
            self._credit_due.discard(inbox)
            self._write(F.StreamCredit(inbox.call_id, inc))

    def _stream_taken(self, inbox: _Inbox) -> None:
        """The application took a message of ``inbox``: credit may flow again."""
        if inbox.unreturned:
            self._return_stream_credit(inbox)

    def _flow(self, n: int) -> None:
        if n > self._recv_credit:
            raise ProtocolViolation(f"flow control: {n} payload bytes beyond the credit of {self._recv_credit}")
        self._recv_credit -= n
        self._credit_to_return += n

    def _charge_stream(self, inbox: _Inbox, n: int) -> None:
        """Counts ``n`` payload bytes of a streaming direction against its window."""
        if n > inbox.window:
            raise ProtocolViolation(
                f"stream flow control: {n} payload bytes on call {inbox.call_id} beyond its "
                f"stream window of {inbox.window}")
        if n:
            inbox.window -= n
            inbox.unreturned += n
            self._credit_due.add(inbox)

    def _no_streaming(self, what: str) -> ProtocolViolation:
        return ProtocolViolation(f"{what}, but streaming was not negotiated")

    def _handle(self, f: F.Frame) -> None:
        t = type(f)
        if t is F.Reply:
            self._flow(len(f.payload))
            self._on_reply(f)
        elif t is F.Data:
            self._flow(len(f.payload))
            self._on_data(f)
        elif t is F.Error:
            if f.call_id == 0:
                raise error_for(f.code, f"the peer ended the connection: {f.message}")
            p = self._pending.get(f.call_id)
            if p is None:
                return None
            retry = None if f.retry_after_ms is None else f.retry_after_ms / 1000
            err = error_for(f.code, f.message, retry)
            if p.inbox is not None:
                self._finish_call(f.call_id, p, err, cancel=False)
            else:
                del self._pending[f.call_id]
                if p.future is not None and not p.future.done():
                    p.future.set_exception(err)
        elif t is F.Call:
            self._flow(len(f.payload))
            self._on_call(f)
        elif t is F.Cancel:
            inc = self._incoming.pop(f.call_id, None)
            if inc is not None:
                if inc.task is not None:
                    inc.task.cancel()
                if inc.inbox is not None:
                    inc.inbox.finish(CallCancelledError("the caller cancelled the call"))
                    self._credit_due.discard(inc.inbox)
                if inc.tx is not None:
                    inc.tx.done = True
                    inc.tx.event.set()
        elif t is F.Credit:
            self._send_credit += f.increment
            self._credit_event.set()
        elif t is F.StreamCredit:
            self._on_stream_credit(f)
        elif t is F.Dictionary:
            # This binding does not offer feature bit 2: a peer that ships one anyway
            # breaks the protocol.
            raise ProtocolViolation("DICTIONARY frame, but dictionaries were not agreed")
        elif t is F.End:
            self._on_end(f)
        elif t is F.Ping:
            self._write(F.Pong(f.opaque))
        elif t is F.Pong:
            fut = self._pings.pop(f.opaque, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif t is F.GoAway:
            self._going_away = f.last_call_id
            for cid in [c for c in self._pending if c > f.last_call_id]:
                p = self._pending[cid]
                err = UnavailableError(f"the peer is going away ({f.message}); the call was never processed")
                if p.inbox is not None:
                    self._finish_call(cid, p, err, cancel=False)
                else:
                    del self._pending[cid]
                    if p.future is not None and not p.future.done():
                        p.future.set_exception(err)
        else:
            raise ProtocolViolation(f"{t.__name__} frame after the handshake")
        return None

    def _check_local_id(self, call_id: int, what: str) -> None:
        if call_id % 2 == 0:
            raise ProtocolViolation(f"{what} for call {call_id}, which the peer opened")
        if call_id >= self._next_id:
            raise ProtocolViolation(f"{what} for call {call_id}, which was never opened")

    def _unknown_call(self, call_id: int, what: str) -> None:
        """A frame for a call that is not open: ignored when the call was opened before
        (it has finished since), else a connection error."""
        if call_id % 2 == 1:
            self._check_local_id(call_id, what)
        elif call_id > self._highest_peer_id:
            raise ProtocolViolation(f"{what} for call {call_id}, which was never opened")

    def _on_reply(self, f: F.Reply) -> None:
        if f.stream and not self._streaming:
            raise self._no_streaming("streaming REPLY")
        p = self._pending.get(f.call_id)
        if p is None:
            return self._check_local_id(f.call_id, "REPLY")
        if p.inbox is None:
            if p.rx is not None:
                raise ProtocolViolation(f"second REPLY on call {f.call_id}")
            if f.stream:
                return self._refuse(f.call_id, p, InvalidInputError(
                    "the method answers with a stream of replies; open it as a stream "
                    "(server_stream or bidi_stream)"))
            return self._start_message(f.call_id, p, f.content_type, f.compression, f.payload,
                                       f.message_len, f.more)
        if p.replied:
            raise ProtocolViolation(f"second REPLY on call {f.call_id}")
        p.replied = True
        if f.stream:
            p.inbox.streaming = True
            self._charge_stream(p.inbox, len(f.payload))
            if f.empty:
                return None
        return self._start_message(f.call_id, p, f.content_type, f.compression, f.payload,
                                   f.message_len, f.more)

    def _start_message(self, call_id: int, owner: Union[_Pending, _Incoming], ct: int, comp: int,
                       first: bytes, total: Optional[int], more: bool) -> None:
        limit = self.settings.limits.max_message
        if comp not in self.negotiated.compressions:
            return self._refuse(call_id, owner, MalformedError(
                f"message compressed with {F.COMPRESSIONS.get(comp, comp)}, which was not negotiated"))
        size = total if more else len(first)
        if size > limit:
            return self._refuse(call_id, owner, TooLargeError(
                f"message of {size} bytes exceeds the limit of {limit}"))
        if not more:
            return self._complete(call_id, owner, ct, comp, first)
        rx = _Rx(size, ct, comp)
        rx.buf[:len(first)] = first
        rx.filled = len(first)
        owner.rx = rx
        return None

    def _on_data(self, f: F.Data) -> None:
        owner: Union[_Pending, _Incoming, None] = self._pending.get(f.call_id) or self._incoming.get(f.call_id)
        if f.first is not None and not self._streaming:
            raise self._no_streaming("DATA starting a stream message")
        if owner is None:
            return self._unknown_call(f.call_id, "DATA")
        inbox = owner.inbox
        streaming = inbox is not None and inbox.streaming
        if f.first is not None:
            if not streaming or inbox.finished:  # type: ignore[union-attr]
                raise ProtocolViolation(
                    f"DATA starting a stream message on call {f.call_id}, which has no open stream from the peer")
            if owner.rx is not None:
                raise ProtocolViolation(
                    f"DATA starting a stream message on call {f.call_id} while a message is in progress")
        if streaming:
            self._charge_stream(inbox, len(f.payload))  # type: ignore[arg-type]
        if f.first is not None:
            ct, comp = f.first
            return self._start_message(f.call_id, owner, ct, comp, f.payload, f.message_len, f.more)
        rx = owner.rx
        if rx is None:
            raise ProtocolViolation(f"DATA continuing a message on call {f.call_id}, but no message is in progress")
        end = rx.filled + len(f.payload)
        total = len(rx.buf)
        if end > total or (not f.more and end != total):
            why = "exceed" if end > total else "end short of"
            return self._refuse(f.call_id, owner, MalformedError(
                f"message on call {f.call_id}: its fragments {why} the declared message length ({total} bytes)"))
        rx.buf[rx.filled:end] = f.payload
        rx.filled = end
        if not f.more:
            owner.rx = None
            self._complete(f.call_id, owner, rx.content_type, rx.compression, bytes(rx.buf))
        return None

    def _on_end(self, f: F.End) -> None:
        if not self._streaming:
            raise self._no_streaming("END")
        owner: Union[_Pending, _Incoming, None] = self._pending.get(f.call_id) or self._incoming.get(f.call_id)
        if owner is None:
            return self._unknown_call(f.call_id, "END")
        inbox = owner.inbox
        if inbox is None or not inbox.streaming or inbox.finished:
            raise ProtocolViolation(f"END on call {f.call_id}, which has no open stream from the peer")
        if owner.rx is not None:
            raise ProtocolViolation(f"END on call {f.call_id} while a message is in progress")
        if isinstance(owner, _Pending):
            return self._replies_ended(f.call_id, owner)
        inbox.finish(None)
        self._credit_due.discard(inbox)
        return None

    def _on_stream_credit(self, f: F.StreamCredit) -> None:
        if not self._streaming:
            raise self._no_streaming("STREAM_CREDIT")
        owner: Union[_Pending, _Incoming, None] = self._pending.get(f.call_id) or self._incoming.get(f.call_id)
        if owner is None:
            return self._unknown_call(f.call_id, "STREAM_CREDIT")
        tx = owner.tx
        if tx is not None and not tx.done:
            tx.window += f.increment
            tx.event.set()
        return None

    def _refuse(self, call_id: int, owner: Union[_Pending, _Incoming], err: PolycallError) -> None:
        if isinstance(owner, _Pending):
            if owner.inbox is not None:
                return self._finish_call(call_id, owner, err, cancel=True)
            self._pending.pop(call_id, None)
            self._write(F.Cancel(call_id))
            if owner.future is not None and not owner.future.done():
                owner.future.set_exception(err)
        else:
            if self._incoming.get(call_id) is owner:
                del self._incoming[call_id]
            if owner.task is not None:
                owner.task.cancel()
            if owner.inbox is not None:
                owner.inbox.finish(err)
                self._credit_due.discard(owner.inbox)
            self._write(F.Error(call_id, err.code, err.message))
        return None

    def _complete(self, call_id: int, owner: Union[_Pending, _Incoming], ct: int, comp: int, data: bytes) -> None:
        size = len(data)
        try:
            data = codec.decompress(comp, data, self.settings.limits.max_message)
        except PolycallError as e:
            return self._refuse(call_id, owner, e)
        if isinstance(owner, _Pending):
            if owner.inbox is not None:
                owner.inbox.push(Payload(data, ct), size)
                if not owner.inbox.streaming:
                    self._replies_ended(call_id, owner)
                return None
            self._pending.pop(call_id, None)
            if owner.future is not None and not owner.future.done():
                owner.future.set_result(Payload(data, ct))
        elif owner.inbox is not None:
            owner.inbox.push(Payload(data, ct), size)
        else:
            ctx = CallContext(owner.method, owner.meta, owner.deadline, call_id)
            owner.task = asyncio.get_running_loop().create_task(
                self._serve(call_id, owner, IncomingCall(owner.method, data, ct, ctx)))
        return None

    def _on_call(self, f: F.Call) -> None:
        if f.call_id % 2 == 1:
            raise ProtocolViolation(f"CALL with call id {f.call_id} of this side's parity")
        if f.call_id <= self._highest_peer_id:
            raise ProtocolViolation(f"CALL reuses call id {f.call_id}")
        self._highest_peer_id = f.call_id
        if f.method_name is not None:
            if f.method_id != 0:
                if f.method_id > MAX_INTERNED:
                    raise ProtocolViolation(f"method id {f.method_id} above the interning limit")
                if f.method_id in self._rx_names:
                    raise ProtocolViolation(f"method id {f.method_id} bound twice")
                self._rx_names[f.method_id] = f.method_name
            method = f.method_name
        else:
            method = self._rx_names.get(f.method_id)
            if method is None:
                raise ProtocolViolation(f"method id {f.method_id} was never bound to a name")
        if f.stream and not self._streaming:
            raise self._no_streaming("streaming CALL")
        if self._handler is None:
            self._write(F.Error(f.call_id, UnknownMethodError.CODE, f"this connection serves no methods ({method})"))
            return
        if len(self._incoming) >= self.settings.limits.max_in_flight:
            limit = self.settings.limits.max_in_flight
            self._write(F.Error(f.call_id, 8, f"in-flight limit of {limit} calls on this connection reached", 10))
            return
        deadline = None
        if f.meta.timeout_us is not None:
            deadline = time.monotonic() + f.meta.timeout_us / 1_000_000
        inc = _Incoming(method, f.meta, deadline)
        self._incoming[f.call_id] = inc
        if f.stream:
            # The handler runs while the requests arrive.
            inbox = _Inbox(f.call_id, self.settings.limits.initial_window, True)
            inc.inbox = inbox
            self._charge_stream(inbox, len(f.payload))
            ctx = CallContext(method, f.meta, deadline, f.call_id)
            call = IncomingCall(method, b"", f.content_type, ctx, RequestStream(self, inbox))
            inc.task = asyncio.get_running_loop().create_task(self._serve(f.call_id, inc, call))
            if not f.empty:
                self._start_message(f.call_id, inc, f.content_type, f.compression, f.payload,
                                    f.message_len, f.more)
            return
        self._start_message(f.call_id, inc, f.content_type, f.compression, f.payload, f.message_len, f.more)

    # ---------------------------------------------------------------- serving

    def _server_span(self, call: IncomingCall) -> Optional[T.OpenSpan]:
        """Opens the server span of a call whose caller sent a traceparent, and makes
        it the current trace context of the task serving it (None: no traceparent,
        and no trace context either)."""
        meta = call.context.meta
        if meta.traceparent is None:
            return None  # the read loop's context, in which there is no trace
        try:
            span = T.OpenSpan.server(self.span_recorder, call.method, meta.traceparent, meta.tracestate)
        except ValueError:  # the frame decoder checks it already
            return None
        call.context.trace = span.context
        # This task's own copy of the context: the handler (and the tasks it starts)
        # see it, nothing else does.
        T.CURRENT.set(span.context)
        return span

    async def _serve(self, call_id: int, inc: _Incoming, call: IncomingCall) -> None:
        handler = self._handler
        assert handler is not None

        def alive() -> bool:
            return self._incoming.get(call_id) is inc and self._closed is None

        span = self._server_span(call)
        error: Optional[BaseException] = None
        try:
            async with asyncio.timeout(call.context.remaining()):
                result = await handler(call)
                if _is_stream(result):
                    await self._send_reply_stream(call_id, inc, result, alive)
                    return
            if not alive():
                error = CallCancelledError(f"{call.method}: the call ended before its reply")
                return
            reply = result if isinstance(result, Payload) else Payload(bytes(result), F.RAW)
            await self._send_reply(call_id, reply)
        except TimeoutError:
            error = DeadlineExceededError(f"{call.method}: the call's deadline passed while it was served")
            self._answer_error(call_id, error)
        except asyncio.CancelledError as e:
            # CANCEL from the peer (or the connection ended): send nothing.
            error = e
            return
        except PolycallError as e:
            error = e
            self._answer_error(call_id, e)
        except Exception as e:  # noqa: BLE001 - a handler's bug must not end the connection
            error = InternalError(f"{call.method} failed: {type(e).__name__}: {e}")
            self._answer_error(call_id, error)
        finally:
            if span is not None:
                span.finish(error)
            if self._incoming.get(call_id) is inc:
                del self._incoming[call_id]
            if inc.inbox is not None:
                inc.inbox.finish(CallCancelledError("the call has ended"))
                self._credit_due.discard(inc.inbox)

    def _answer_error(self, call_id: int, e: PolycallError) -> None:
        if call_id in self._incoming and self._closed is None:
            retry = None if e.retry_after is None else int(e.retry_after * 1000)
            self._write(F.Error(call_id, e.code, e.message, retry))

    async def _send_reply_stream(self, call_id: int, inc: _Incoming, replies: AsyncIterable[Message],
                                 alive: Callable[[], bool]) -> None:
        """Sends a handler's stream of replies: REPLY(STREAM) with the first message
        (REPLY(STREAM, EMPTY) when there is none), DATA with FIRST per further message,
        END. The handler's iterator is pulled only once the previous message has left
        within the stream's window, so a caller that stops reading holds it back."""
        tx = _Tx(self.negotiated.peer_limits.initial_window)
        inc.tx = tx
        it = replies.__aiter__()
        opened = False
        try:
            while alive():
                item = await _next_item(it)
                if not alive():
                    return
                if item is _DONE:
                    if not opened:
                        self._write(F.Reply(call_id, F.RAW, F.NONE, False, None, True, b"", True))
                    tx.done = True
                    self._write(F.End(call_id))
                    await self._drain()
                    return
                await self._send_message(call_id, tx, _to_payload(item, F.RAW), alive, opens_reply=not opened)
                opened = True
        finally:
            tx.done = True
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # noqa: BLE001
                    pass

    async def _send_reply(self, call_id: int, reply: Payload) -> None:
        data = reply.data
        if len(data) > self.negotiated.peer_limits.max_message:
            raise TooLargeError(
                f"reply of {len(data)} bytes exceeds the peer's limit of {self.negotiated.peer_limits.max_message}")
        compression, wire = self._maybe_compress(data, reply.content_type)
        total = len(wire)
        room = self.negotiated.peer_limits.max_frame - 6
        if total <= min(room, self._fragment) and total <= self._send_credit:
            self._take_credit(total)
            self._write(F.Reply(call_id, reply.content_type, compression, False, None, False, wire))
            return
        await self._wait_credit(min(total, 1024))
        if call_id not in self._incoming or self._closed is not None:
            return
        n = min(total - 1, room, self._fragment, self._send_credit)
        self._take_credit(n)
        view = memoryview(wire)
        self._write(F.Reply(call_id, reply.content_type, compression, True, total, False, bytes(view[:n])))
        await self._send_rest(call_id, view, n,
                              lambda: call_id in self._incoming and self._closed is None)


class RequestStream:
    """The requests of a call whose caller streams them (CALL with STREAM), as an async
    iterator of :class:`Payload` that ends at the caller's END.

    Taking a message returns stream credit to the caller; a handler that stops reading
    stops only this stream's caller, after about one window (§6.1).
    """

    def __init__(self, connection: Optional[Connection], inbox: _Inbox) -> None:
        self._conn = connection
        self._inbox = inbox

    @classmethod
    def of(cls, messages: Iterable[Payload]) -> "RequestStream":
        """A finished stream of ``messages`` (a unary request seen as a stream of one)."""
        inbox = _Inbox(0, 1, False)
        for m in messages:
            inbox.push(m, 0)
        inbox.finish(None)
        return cls(None, inbox)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> Payload:
        message = await _take(self._conn, self._inbox)
        if message is None:
            raise StopAsyncIteration
        return message


class ReplyStream:
    """The replies of a streaming call (:meth:`Connection.stream`): an async iterator
    of :class:`Payload` (or of what its ``decode`` makes of each).

    The call opens when iteration starts, or on ``async with``. Iteration ends at the
    callee's END; an ERROR raises its typed :class:`PolycallError` (after the messages
    that came before it); the deadline covers the whole call
    (:class:`DeadlineExceededError`). Leaving early sends CANCEL and stops the request
    stream: :meth:`aclose` / :meth:`cancel`, the end of an ``async with`` block,
    cancelling the task that awaits the next reply, or ``break`` out of ``async for``
    once the iterator is dropped.
    """

    def __init__(self, connection: Connection, method: str, data: bytes, requests: Optional[Requests],
                 content_type: int, timeout: Optional[float], meta: F.Meta,
                 decode: Optional[Callable[[Payload], Any]] = None,
                 span: Optional[T.OpenSpan] = None) -> None:
        self._conn = connection
        self._method = method
        self._data = data
        self._requests = requests
        self._content_type = content_type
        self._timeout = timeout
        self._meta = meta
        self._decode = decode
        self._call: Optional[_Pending] = None
        self._call_id = 0
        self._finished = False
        #: The call's client span (made within a trace), until the call ends.
        self._span = span

    def _end_span(self, error: Optional[BaseException]) -> None:
        span, self._span = self._span, None
        if span is not None:
            span.finish(error)

    @property
    def method(self) -> str:
        """``SERVICE.METHOD`` called."""
        return self._method

    @property
    def call_id(self) -> int:
        """The call id on the connection (0 until the call opened)."""
        return self._call_id

    async def _open(self) -> _Pending:
        if self._call is None:
            if self._finished:
                raise UnavailableError(f"{self._method}: the stream was closed before it opened")
            if self._span is not None:
                self._span.restart()
            try:
                self._call_id, self._call = await self._conn._open_stream(
                    self._method, self._data, self._requests, self._content_type, self._timeout, self._meta)
            except BaseException as e:
                self._finished = True
                self._end_span(e)
                raise
            self._requests = None
        return self._call

    def __aiter__(self) -> "ReplyStream":
        return self

    async def __anext__(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        call = await self._open()
        assert call.inbox is not None
        try:
            message = await _take(self._conn, call.inbox)
        except asyncio.CancelledError:
            self.cancel()
            raise
        except BaseException as e:
            self._finished = True
            self._end_span(e)
            raise
        if message is None:
            self._finished = True
            self._end_span(None)
            raise StopAsyncIteration
        if self._decode is None:
            return message
        try:
            return self._decode(message)
        except BaseException as e:
            self._end_span(e)
            self.cancel()
            raise

    async def single(self) -> Any:
        """The one reply of a call answered with a single message (a client stream).
        No reply, or more than one, raises :class:`MalformedError`."""
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            raise MalformedError(f"{self._method}: the call ended without a reply") from None
        try:
            await self.__anext__()
        except StopAsyncIteration:
            return first
        err = MalformedError(f"{self._method}: answered with more than one reply message")
        self._end_span(err)
        self.cancel()
        raise err

    def cancel(self) -> None:
        """Gives up on the call: CANCEL to the peer when it is still open (its request
        stream stops too); iteration ends."""
        self._finished = True
        call = self._call
        if call is not None:
            err = CallCancelledError(f"{self._method}: cancelled by the caller")
            self._conn._finish_call(self._call_id, call, err, cancel=True)
            self._end_span(err)
        else:
            self._span = None  # never opened: nothing to record

    async def aclose(self) -> None:
        """Like :meth:`cancel` (the async iterator protocol's close)."""
        self.cancel()

    async def __aenter__(self) -> "ReplyStream":
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    def __del__(self) -> None:
        if not self._finished and self._call is not None:
            try:
                self.cancel()
            except Exception:  # noqa: BLE001 - the loop may be gone
                pass
