"""W3C trace context for polycall calls, and the spans this binding records.

A call's metadata entry 3 is its ``traceparent``: 25 bytes — the 16-byte trace id, the
8-byte id of the caller's span (the callee's parent), and one flags byte (bit 0:
sampled). The binding keeps the trace context of the code running now in
:data:`CURRENT`, a :class:`contextvars.ContextVar`:

- serving a call that carries a traceparent, the provider opens a *server* span and
  sets :data:`CURRENT` to it while the handler runs, so calls the handler makes (and
  tasks it starts: asyncio copies context variables) continue the trace;
- a call made while :data:`CURRENT` holds a context opens a *client* span, a child of
  the current span, and sends its id as the callee's parent.

Spans of sampled calls are buffered per connection by a :class:`SpanRecorder` and
handed to the runtime's exporter with the built-in method ``sys.trace.export``.

>>> from polycall import trace                                   # doctest: +SKIP
>>> with trace.use(trace.new_context()):                        # start a sampled trace
...     await client.call("greet.hello", b"ada")                # a client span, exported
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Optional

from . import codec
from . import frame as F
from .errors import PolycallError, UnknownMethodError

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("polycall.trace")

#: The service name spans are recorded under unless one is given.
DEFAULT_SERVICE = "polycall-python"
#: Bytes of a traceparent entry: trace id, parent id, flags.
TRACEPARENT_LEN = 25
#: Flags bit 0: the trace is sampled (its spans are recorded).
SAMPLED = 0x01
#: A :class:`SpanRecorder` exports once this many spans are buffered…
BATCH_SIZE = 64
#: …or this many seconds after the first one was buffered.
BATCH_DELAY = 0.2
#: Most spans one ``sys.trace.export`` call carries (the runtime's limit).
MAX_EXPORT = 1000
#: Most spans a recorder buffers; more are dropped (and counted) until an export drains it.
MAX_BUFFERED = 10_000
#: Seconds one ``sys.trace.export`` call may take.
EXPORT_TIMEOUT = 5.0
#: The method spans are exported with.
EXPORT_METHOD = "sys.trace.export"

#: A finished span, as ``sys.trace.export`` takes it (JSON object).
Span = dict[str, Any]


class TraceContext(NamedTuple):
    """A position in a trace: the trace, the current span, the W3C flags (and the
    ``tracestate`` to pass on, if any)."""

    trace_id: bytes
    span_id: bytes
    flags: int = SAMPLED
    state: Optional[str] = None

    @property
    def sampled(self) -> bool:
        """Whether spans of this trace are recorded (flags bit 0)."""
        return bool(self.flags & SAMPLED)

    def header(self) -> str:
        """The W3C ``traceparent`` header text: ``00-TRACE-SPAN-FLAGS``."""
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{self.flags & 0xFF:02x}"


#: The trace context of the code running now (None: not in a trace).
CURRENT: contextvars.ContextVar[Optional[TraceContext]] = contextvars.ContextVar(
    "polycall_trace", default=None)


# ------------------------------------------------------------------- ids and encoding


def _random_id(n: int) -> bytes:
    while True:
        b = os.urandom(n)
        if any(b):
            return b


def new_span_id() -> bytes:
    """A random, non-zero 8-byte span id."""
    return _random_id(8)


def new_trace_id() -> bytes:
    """A random, non-zero 16-byte trace id."""
    return _random_id(16)


def new_context(sampled: bool = True) -> TraceContext:
    """The context of a new trace (fresh trace and span ids), to start one with
    :func:`use`."""
    return TraceContext(new_trace_id(), new_span_id(), SAMPLED if sampled else 0)


def encode_traceparent(trace_id: bytes, span_id: bytes, flags: int = SAMPLED) -> bytes:
    """The 25-byte traceparent entry; ``span_id`` is the callee's parent. Raises
    ValueError for ids of the wrong length or all zero."""
    if len(trace_id) != 16 or not any(trace_id):
        raise ValueError("a trace id is 16 bytes, not all zero")
    if len(span_id) != 8 or not any(span_id):
        raise ValueError("a span id is 8 bytes, not all zero")
    if not 0 <= flags <= 0xFF:
        raise ValueError(f"trace flags are one byte, not {flags}")
    return bytes(trace_id) + bytes(span_id) + bytes([flags])


def decode_traceparent(entry: bytes, state: Optional[str] = None) -> TraceContext:
    """A traceparent entry as a :class:`TraceContext` whose ``span_id`` is the
    caller's span (the parent). Raises ValueError when it is not 25 bytes or an id is
    all zero."""
    if len(entry) != TRACEPARENT_LEN:
        raise ValueError(f"a traceparent is {TRACEPARENT_LEN} bytes, not {len(entry)}")
    trace_id, span_id = bytes(entry[:16]), bytes(entry[16:24])
    if not any(trace_id) or not any(span_id):
        raise ValueError("a traceparent has an all-zero id")
    return TraceContext(trace_id, span_id, entry[24], state)


def parse_header(text: str) -> TraceContext:
    """A W3C ``traceparent`` header (``00-TRACE-SPAN-FLAGS``, lowercase hex) as a
    :class:`TraceContext`. Raises ValueError when it is malformed."""
    parts = text.strip().split("-")
    if (len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff"
            or (parts[0] == "00" and len(parts) != 4)
            or [len(p) for p in parts[1:4]] != [32, 16, 2]
            or any(c not in "0123456789abcdef" for c in "".join(parts[:4]))):
        raise ValueError(f"not a W3C traceparent: {text!r}")
    return decode_traceparent(bytes.fromhex(parts[1] + parts[2] + parts[3]))


def current() -> Optional[TraceContext]:
    """The trace context of the code running now (None outside a trace)."""
    return CURRENT.get()


@contextlib.contextmanager
def use(context: Optional[TraceContext]) -> Iterator[Optional[TraceContext]]:
    """Runs the block in ``context`` (None: outside any trace): calls made in it
    continue that trace.

    >>> with use(new_context()):                                  # doctest: +SKIP
    ...     await client.call("greet.hello")
    """
    token = CURRENT.set(context)
    try:
        yield context
    finally:
        CURRENT.reset(token)


# ------------------------------------------------------------------- spans


def _error_name(error: Optional[BaseException]) -> Optional[str]:
    """The status code name a span records for how a call ended (None: it succeeded)."""
    if error is None:
        return None
    if isinstance(error, PolycallError):
        return error.name
    if isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        return "deadline_exceeded"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "internal"


class OpenSpan:
    """A span being measured: the context it opened (its ``span_id`` is this span),
    the parent, and when it started. :meth:`finish` records it (once) when sampled."""

    __slots__ = ("context", "parent_id", "method", "kind", "start_ns", "_t0", "_recorder")

    def __init__(self, recorder: Optional["SpanRecorder"], context: TraceContext,
                 parent_id: Optional[bytes], method: str, kind: str) -> None:
        self.context = context
        self.parent_id = parent_id
        self.method = method
        self.kind = kind
        self.start_ns = time.time_ns()
        self._t0 = time.perf_counter_ns()
        self._recorder = recorder

    @classmethod
    def server(cls, recorder: Optional["SpanRecorder"], method: str, traceparent: bytes,
               state: Optional[str] = None) -> "OpenSpan":
        """The server span of an incoming call carrying ``traceparent``: a new span
        id, the caller's span as parent, its trace and flags."""
        incoming = decode_traceparent(traceparent, state)
        ctx = TraceContext(incoming.trace_id, new_span_id(), incoming.flags, state)
        return cls(recorder, ctx, incoming.span_id, method, "server")

    @classmethod
    def client(cls, recorder: Optional["SpanRecorder"], method: str, parent: TraceContext) -> "OpenSpan":
        """The client span of a call made in ``parent``: a new span id, a child of the
        parent's span."""
        ctx = TraceContext(parent.trace_id, new_span_id(), parent.flags, parent.state)
        return cls(recorder, ctx, parent.span_id, method, "client")

    def restart(self) -> None:
        """Restarts the span's clock (the call opens later than the span was made)."""
        self.start_ns = time.time_ns()
        self._t0 = time.perf_counter_ns()

    @property
    def traceparent(self) -> bytes:
        """The traceparent entry naming this span as the parent."""
        c = self.context
        return encode_traceparent(c.trace_id, c.span_id, c.flags)

    def finish(self, error: Optional[BaseException] = None) -> None:
        """Ends the span: ``error`` None when the call succeeded. Records it when the
        trace is sampled; a second call does nothing."""
        recorder, self._recorder = self._recorder, None
        if recorder is None or not self.context.sampled:
            return
        duration = time.perf_counter_ns() - self._t0
        recorder.record(make_span(self.context, self.parent_id, self.method, self.kind,
                                  recorder.service, self.start_ns, duration, _error_name(error)))


def make_span(context: TraceContext, parent_id: Optional[bytes], method: str, kind: str,
              service: str, start_unix_nanos: int, duration_nanos: int,
              error: Optional[str] = None) -> Span:
    """A finished span as ``sys.trace.export`` takes it: ``context.span_id`` is the
    span, ``method`` its ``SERVICE.METHOD`` name, ``kind`` server or client, ``error``
    the status code name when the call failed."""
    svc, _, name = method.rpartition(".")
    span: Span = {
        "trace_id": context.trace_id.hex(),
        "span_id": context.span_id.hex(),
        "name": method,
        "kind": kind,
        "service": service,
        "start_unix_nanos": max(0, start_unix_nanos),
        "duration_nanos": max(0, duration_nanos),
        "attributes": [
            ["rpc.system", "polycall"],
            ["rpc.service", svc],
            ["rpc.method", name],
            ["polycall.language", "python"],
        ],
    }
    if parent_id is not None:
        span["parent_id"] = parent_id.hex()
    if error is not None:
        span["error"] = error
    return span


def check_service_name(name: str) -> str:
    """``name`` when it can name a span's service (1..=128 bytes), else ValueError."""
    if not isinstance(name, str) or not 1 <= len(name.encode()) <= 128:
        raise ValueError(f"a service name is 1 to 128 bytes of text, not {name!r}")
    return name


class SpanRecorder:
    """Buffers the finished spans of one connection and hands them to the runtime
    with ``sys.trace.export`` on that connection: once :data:`BATCH_SIZE` spans are
    buffered, or :data:`BATCH_DELAY` seconds after the first one, or on
    :meth:`flush`.

    The export runs in a task of its own, outside any trace (it is never traced).
    Failures are logged (logger ``polycall.trace``), never raised. When the runtime
    answers ``"recording": false`` (it exports nowhere), or does not know the method,
    the recorder stops: the connection's later spans are dropped.

    ``on_export``, when set, is called with each batch just before it is sent (a hook
    for tests and local inspection).
    """

    def __init__(self, connection: "Connection", service: str = DEFAULT_SERVICE, *,
                 batch_size: int = BATCH_SIZE, delay: float = BATCH_DELAY,
                 on_export: Optional[Callable[[list[Span]], Any]] = None) -> None:
        self.connection = connection
        self.service = check_service_name(service)
        self.batch_size = max(1, min(batch_size, MAX_EXPORT))
        self.delay = delay
        self.on_export = on_export
        #: Whether spans are still recorded (False once the runtime declined them or
        #: the connection ended).
        self.recording = True
        #: Spans the runtime accepted so far.
        self.accepted = 0
        #: Spans dropped: buffer full, export failed, recording stopped.
        self.dropped = 0
        self._buffer: list[Span] = []
        self._timer: Optional[asyncio.TimerHandle] = None
        self._task: Optional[asyncio.Task] = None

    @property
    def pending(self) -> int:
        """Spans buffered, not exported yet."""
        return len(self._buffer)

    def record(self, span: Span) -> None:
        """Buffers a finished span (see :func:`make_span`); never raises."""
        if not self.recording:
            return
        if len(self._buffer) >= MAX_BUFFERED:
            self.dropped += 1
            return
        self._buffer.append(span)
        try:
            if len(self._buffer) >= self.batch_size:
                self._kick()
            elif self._timer is None and self._task is None:
                self._timer = asyncio.get_running_loop().call_later(self.delay, self._kick)
        except RuntimeError:  # no running loop: the next flush sends it
            pass

    async def flush(self) -> None:
        """Exports every buffered span now and waits for the exports to finish (never
        raises for a failed export)."""
        while True:
            self._kick()
            task = self._task
            if task is None:
                return
            # wait(): neither raises the export's outcome nor cancels it when the
            # caller is cancelled.
            await asyncio.wait({task})

    def stop(self) -> None:
        """Stops recording and drops what is buffered (the connection has ended)."""
        self.recording = False
        self.dropped += len(self._buffer)
        self._buffer.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _kick(self) -> None:
        """Starts the export task unless it runs already (it takes the whole buffer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None and self._buffer and self.recording:
            # A fresh context: the export is made outside any trace.
            self._task = asyncio.get_running_loop().create_task(
                self._export_all(), context=contextvars.Context())

    async def _export_all(self) -> None:
        try:
            while self._buffer and self.recording:
                batch = self._buffer[:MAX_EXPORT]
                del self._buffer[:len(batch)]
                await self._export(batch)
        finally:
            self._task = None
            # Spans that arrived during the last export but did not fill a batch.
            if self._buffer and self.recording and self._timer is None:
                try:
                    self._timer = asyncio.get_running_loop().call_later(self.delay, self._kick)
                except RuntimeError:
                    pass

    async def _export(self, batch: list[Span]) -> None:
        conn = self.connection
        if conn.is_closed:
            self.stop()
            self.dropped += len(batch)
            return
        if self.on_export is not None:
            try:
                self.on_export(batch)
            except Exception:  # noqa: BLE001 - a hook's bug must not stop exporting
                log.exception("the span export hook failed")
        try:
            # This task runs in a fresh context: no trace, so no traceparent.
            reply = await conn.call(EXPORT_METHOD, codec.encode_json({"spans": batch}),
                                    content_type=F.JSON, timeout=EXPORT_TIMEOUT)
            answer = codec.decode_json(reply.data, f"the reply of {EXPORT_METHOD}")
        except asyncio.CancelledError:
            self.dropped += len(batch)
            raise
        except UnknownMethodError as e:
            log.warning("the peer has no %s (%s); spans of this connection are not recorded",
                        EXPORT_METHOD, e.message)
            self.dropped += len(batch)
            self.stop()
            return
        except Exception as e:  # noqa: BLE001 - export failures never reach user code
            self.dropped += len(batch)
            if conn.is_closed:
                log.debug("%d spans not exported: the connection ended (%s)", len(batch), e)
                self.stop()
            else:
                log.warning("exporting %d spans failed: %s", len(batch), e)
            return
        if isinstance(answer, dict):
            accepted = answer.get("accepted")
            if isinstance(accepted, int):
                self.accepted += accepted
            if answer.get("recording") is False:
                log.debug("the runtime records no spans; this connection stops recording them")
                self.stop()
