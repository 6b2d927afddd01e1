"""One polycall connection over asyncio streams (the connecting side).

It owns the protocol for its socket: the preface and HELLO/WELCOME negotiation, call ids
(odd, increasing), method-name interning in both directions, fragmentation of large
messages into DATA frames within the peer's ``max_frame``, reassembly within the local
``max_message``, flow-control credit both ways, compression (zstd when negotiated),
CANCEL, GOAWAY, PING/PONG, and calls the peer opens (a provider's incoming calls).
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import time
from typing import Any, Awaitable, Callable, Optional, Union

from . import codec
from . import frame as F
from .errors import (
    DeadlineExceededError,
    InternalError,
    MalformedError,
    PolycallError,
    TooLargeError,
    UnavailableError,
    UnknownMethodError,
    error_for,
)

VERSION = "0.1.0"
PROTOCOL_VERSION = 1
HANDSHAKE_MAX_FRAME = 16 * 1024
MAX_INTERNED = 4096
#: Messages up to this size travel whole in their CALL frame.
INLINE_MAX = 8 * 1024
#: Feature bits: CRC32C (bit 0) is not offered (see crc32c.py); streaming (bit 1) is
#: not implemented by this binding.
FEATURES = 0


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

    def hello(self) -> F.Hello:
        """The HELLO of these settings."""
        comps = [F.ZSTD, F.NONE] if (self.zstd and codec.zstd_available()) else [F.NONE]
        return F.Hello(
            PROTOCOL_VERSION, PROTOCOL_VERSION, FEATURES, self.limits,
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

    __slots__ = ("method", "meta", "deadline", "call_id")

    def __init__(self, method: str, meta: F.Meta, deadline: Optional[float], call_id: int) -> None:
        #: ``SERVICE.METHOD`` as called.
        self.method = method
        #: The call's metadata entries.
        self.meta = meta
        #: ``time.monotonic()`` value of the deadline, or None.
        self.deadline = deadline
        #: The call id on the connection.
        self.call_id = call_id

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
    """A call the peer opened, with its whole request message."""

    method: str
    payload: bytes
    content_type: int
    context: CallContext


@dataclasses.dataclass
class Payload:
    """A message and how it is encoded (``frame.RAW`` or ``frame.JSON``)."""

    data: bytes
    content_type: int = F.RAW


#: A handler of incoming calls: gets the call, returns the reply (bytes are raw).
Handler = Callable[[IncomingCall], Awaitable[Union[Payload, bytes]]]


class _Rx:
    """A message being reassembled."""

    __slots__ = ("buf", "filled", "content_type", "compression")

    def __init__(self, total: int, content_type: int, compression: int) -> None:
        self.buf = bytearray(total)
        self.filled = 0
        self.content_type = content_type
        self.compression = compression


class _Pending:
    """A call this side opened."""

    __slots__ = ("future", "rx", "sending")

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future
        self.rx: Optional[_Rx] = None
        self.sending = True


class _Incoming:
    """A call the peer opened."""

    __slots__ = ("method", "meta", "deadline", "rx", "task")

    def __init__(self, method: str, meta: F.Meta, deadline: Optional[float]) -> None:
        self.method = method
        self.meta = meta
        self.deadline = deadline
        self.rx: Optional[_Rx] = None
        self.task: Optional[asyncio.Task] = None


class ProtocolViolation(Exception):
    """The peer broke the protocol: the connection ends."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) → (host, port)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class Connection:
    """A polycall connection (the connecting side: odd call ids)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: Settings, negotiated: Negotiated, handler: Optional[Handler],
                 leftover: bytes = b"") -> None:
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
        self._closed: Optional[PolycallError] = None
        self._closed_event = asyncio.Event()
        self._going_away: Optional[int] = None
        self._pings: dict[int, asyncio.Future] = {}
        self._leftover = leftover
        self._fragment = max(1024, min(settings.fragment_size, negotiated.peer_limits.max_frame))
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    # ---------------------------------------------------------------- opening

    @classmethod
    async def open(cls, endpoint: str, settings: Optional[Settings] = None,
                   handler: Optional[Handler] = None) -> "Connection":
        """Connects to ``HOST:PORT`` and completes the handshake."""
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
        conn = cls(reader, writer, settings, negotiated, handler, leftover)
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

    async def wait_closed(self) -> None:
        """Returns when the connection has ended."""
        await self._closed_event.wait()

    @property
    def in_flight(self) -> int:
        """Calls this side opened that have not completed."""
        return len(self._pending)

    def close(self, reason: str = "closed by the application") -> None:
        """Ends the connection: tells the peer (ERROR on call 0), fails open calls with
        ``unavailable``."""
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
        for p in list(self._pending.values()):
            if not p.future.done():
                p.future.set_exception(UnavailableError(
                    f"connection ended before the call completed: {err.message}"))
        self._pending.clear()
        for inc in list(self._incoming.values()):
            if inc.task is not None:
                inc.task.cancel()
        self._incoming.clear()
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

    def _take_credit(self, n: int) -> None:
        self._send_credit -= n

    async def _wait_credit(self, want: int) -> None:
        while self._send_credit < want:
            if self._closed is not None:
                raise self._closed
            self._credit_event.clear()
            await self._credit_event.wait()

    def _maybe_compress(self, data: bytes, content_type: int) -> tuple[int, bytes]:
        m = self.settings.compress_min
        if (m is not None and len(data) >= m and F.ZSTD in self.negotiated.compressions
                and codec.zstd_available() and content_type != F.RAW):
            z = codec.compress(F.ZSTD, data)
            if len(z) < len(data):
                return F.ZSTD, z
        return F.NONE, data

    async def _send_rest(self, call_id: int, data: memoryview, offset: int,
                         alive: Callable[[], bool]) -> None:
        """Sends ``data[offset:]`` as DATA continuation frames, within credit."""
        total = len(data)
        while offset < total:
            left = total - offset
            await self._wait_credit(min(left, 1024))
            if not alive():
                return
            n = min(left, self._fragment, self._send_credit)
            more = offset + n < total
            self._take_credit(n)
            self._write(F.Data(call_id, None, more, None, bytes(data[offset:offset + n])))
            offset += n
            await self._drain()

    # ---------------------------------------------------------------- calling

    def _check_open(self) -> None:
        if self._closed is not None:
            raise UnavailableError(f"the connection has ended: {self._closed.message}")
        if self._going_away is not None:
            raise UnavailableError("the peer is going away; open a new connection")

    async def call(self, method: str, data: bytes = b"", *, content_type: int = F.RAW,
                   timeout: Optional[float] = None, priority: Optional[str] = None,
                   idempotent: bool = False, meta: Optional[F.Meta] = None) -> Payload:
        """Calls ``SERVICE.METHOD`` and returns the reply message.

        ``timeout``: seconds until the deadline (sent to the callee, enforced here:
        :class:`DeadlineExceededError`). Cancelling the awaiting task sends CANCEL.
        Failures raise :class:`PolycallError` subclasses.
        """
        self._check_open()
        if not F.valid_full_name(method):
            raise UnknownMethodError(f"{method!r} is not a valid SERVICE.METHOD name")
        if len(data) > self.negotiated.peer_limits.max_message:
            raise TooLargeError(
                f"message of {len(data)} bytes exceeds the peer's limit of "
                f"{self.negotiated.peer_limits.max_message}")
        m = meta or F.Meta()
        if timeout is not None:
            m.timeout_us = max(0, int(timeout * 1_000_000))
        if priority is not None and priority != "normal":
            if priority not in F.PRIORITY_NUMBERS:
                raise ValueError(f"priority {priority!r}: use critical, high, normal or low")
            m.priority = F.PRIORITY_NUMBERS[priority]
        if idempotent:
            m.idempotent = True
        compression, wire = self._maybe_compress(data, content_type)
        n = 0
        call_id = self._next_id
        self._next_id += 2
        # Interning: bind on first use, name per call past the limit.
        mid = self._tx_names.get(method)
        name: Optional[str] = None
        if mid is None:
            name = method
            if len(self._tx_names) < MAX_INTERNED:
                mid = len(self._tx_names) + 1
                self._tx_names[method] = mid
            else:
                mid = 0
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        pending = _Pending(fut)
        self._pending[call_id] = pending
        # The CALL frame leaves at once (call ids increase on the wire), carrying as much
        # of the message as fits, the rest follows as DATA within credit.
        empty = F.Call(call_id, mid, name, content_type, compression, m, False, None, False, b"")
        fields = len(F.encode(empty)) - F.HEADER_LEN + 4
        room = max(0, self.negotiated.peer_limits.max_frame - fields)
        total = len(wire)
        if total <= min(INLINE_MAX, room, self._fragment) and total <= self._send_credit:
            self._take_credit(total)
            self._write(F.Call(call_id, mid, name, content_type, compression, m, False, None, False, wire))
            pending.sending = False
        else:
            n = min(total - 1 if total else 0, room, self._fragment, max(0, self._send_credit))
            self._take_credit(n)
            view = memoryview(wire)
            self._write(F.Call(call_id, mid, name, content_type, compression, m, True, total, False,
                               bytes(view[:n])))

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

    def _flow(self, n: int) -> None:
        if n > self._recv_credit:
            raise ProtocolViolation(f"flow control: {n} payload bytes beyond the credit of {self._recv_credit}")
        self._recv_credit -= n
        self._credit_to_return += n

    def _handle(self, f: F.Frame) -> None:
        t = type(f)
        if t is F.Reply:
            self._flow(len(f.payload))
            p = self._pending.get(f.call_id)
            if p is None:
                return self._check_local_id(f.call_id, "REPLY")
            if p.rx is not None:
                raise ProtocolViolation(f"second REPLY on call {f.call_id}")
            if f.stream:
                raise ProtocolViolation("streaming REPLY, but streaming was not negotiated")
            self._start_message(f.call_id, p, f.content_type, f.compression, f.payload, f.message_len, f.more)
        elif t is F.Data:
            self._flow(len(f.payload))
            self._on_data(f)
        elif t is F.Error:
            if f.call_id == 0:
                raise error_for(f.code, f"the peer ended the connection: {f.message}")
            p = self._pending.pop(f.call_id, None)
            if p is None:
                return None
            if not p.future.done():
                retry = None if f.retry_after_ms is None else f.retry_after_ms / 1000
                p.future.set_exception(error_for(f.code, f.message, retry))
        elif t is F.Call:
            self._flow(len(f.payload))
            self._on_call(f)
        elif t is F.Cancel:
            inc = self._incoming.pop(f.call_id, None)
            if inc is not None and inc.task is not None:
                inc.task.cancel()
        elif t is F.Credit:
            self._send_credit += f.increment
            self._credit_event.set()
        elif t is F.Ping:
            self._write(F.Pong(f.opaque))
        elif t is F.Pong:
            fut = self._pings.pop(f.opaque, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif t is F.GoAway:
            self._going_away = f.last_call_id
            for cid in [c for c in self._pending if c > f.last_call_id]:
                p = self._pending.pop(cid)
                if not p.future.done():
                    p.future.set_exception(UnavailableError(
                        f"the peer is going away ({f.message}); the call was never processed"))
        elif t is F.End:
            raise ProtocolViolation("END, but streaming was not negotiated")
        else:
            raise ProtocolViolation(f"{t.__name__} frame after the handshake")
        return None

    def _check_local_id(self, call_id: int, what: str) -> None:
        if call_id % 2 == 0:
            raise ProtocolViolation(f"{what} for call {call_id}, which the peer opened")
        if call_id >= self._next_id:
            raise ProtocolViolation(f"{what} for call {call_id}, which was never opened")

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
        if owner is None:
            if f.call_id % 2 == 1:
                self._check_local_id(f.call_id, "DATA")
            elif f.call_id > self._highest_peer_id:
                raise ProtocolViolation(f"DATA for call {f.call_id}, which was never opened")
            return
        if f.first is not None:
            raise ProtocolViolation("DATA starting a stream message, but streaming was not negotiated")
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

    def _refuse(self, call_id: int, owner: Union[_Pending, _Incoming], err: PolycallError) -> None:
        if isinstance(owner, _Pending):
            self._pending.pop(call_id, None)
            self._write(F.Cancel(call_id))
            if not owner.future.done():
                owner.future.set_exception(err)
        else:
            self._incoming.pop(call_id, None)
            self._write(F.Error(call_id, err.code, err.message))

    def _complete(self, call_id: int, owner: Union[_Pending, _Incoming], ct: int, comp: int, data: bytes) -> None:
        try:
            data = codec.decompress(comp, data, self.settings.limits.max_message)
        except PolycallError as e:
            return self._refuse(call_id, owner, e)
        if isinstance(owner, _Pending):
            self._pending.pop(call_id, None)
            if not owner.future.done():
                owner.future.set_result(Payload(data, ct))
        else:
            ctx = CallContext(owner.method, owner.meta, owner.deadline, call_id)
            owner.task = asyncio.get_running_loop().create_task(
                self._serve(call_id, IncomingCall(owner.method, data, ct, ctx)))
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
        if f.stream:
            raise ProtocolViolation("streaming CALL, but streaming was not negotiated")
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
        self._start_message(f.call_id, inc, f.content_type, f.compression, f.payload, f.message_len, f.more)

    async def _serve(self, call_id: int, call: IncomingCall) -> None:
        handler = self._handler
        assert handler is not None
        try:
            remaining = call.context.remaining()
            if remaining is None:
                result = await handler(call)
            else:
                async with asyncio.timeout(remaining):
                    result = await handler(call)
            if call_id not in self._incoming or self._closed is not None:
                return
            reply = result if isinstance(result, Payload) else Payload(bytes(result), F.RAW)
            await self._send_reply(call_id, reply)
        except TimeoutError:
            self._answer_error(call_id, DeadlineExceededError(
                f"{call.method}: the call's deadline passed while it was served"))
        except asyncio.CancelledError:
            # CANCEL from the peer (or the connection ended): send nothing.
            return
        except PolycallError as e:
            self._answer_error(call_id, e)
        except Exception as e:  # noqa: BLE001 - a handler's bug must not end the connection
            self._answer_error(call_id, InternalError(f"{call.method} failed: {type(e).__name__}: {e}"))
        finally:
            self._incoming.pop(call_id, None)

    def _answer_error(self, call_id: int, e: PolycallError) -> None:
        if call_id in self._incoming and self._closed is None:
            retry = None if e.retry_after is None else int(e.retry_after * 1000)
            self._write(F.Error(call_id, e.code, e.message, retry))

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
