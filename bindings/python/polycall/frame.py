"""Frames of the polycall protocol, byte by byte (docs/protocol.md §2–3, §6.1, §8).

Every frame is a 12-byte header (body length, type, flags, reserved, call id), a body,
and — when CRC32C was negotiated — a 4-byte trailer. Integers are little-endian.
Encoding is canonical and decoding accepts only canonical bytes, so
``decode(encode(f)) == f`` and ``encode(decode(b)) == b``.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Optional, Union

from .crc32c import crc32c

PREFACE = b"\x89POLY\r\n\x1a"
HEADER_LEN = 12
CRC_LEN = 4
MAX_MESSAGE_TEXT = 4096
MAX_META_TEXT = 1024

# Frame types.
HELLO = 0x01
WELCOME = 0x02
AUTH = 0x03
CALL = 0x10
REPLY = 0x11
ERROR = 0x12
CANCEL = 0x13
DATA = 0x14
END = 0x15
PING = 0x20
PONG = 0x21
GOAWAY = 0x22
CREDIT = 0x23
STREAM_CREDIT = 0x24
DICTIONARY = 0x25
REGISTER = 0x30
UNREGISTER = 0x31

# Flags.
MORE = 0x01
STREAM = 0x02
NAMED = 0x04
FIRST = 0x08  # on DATA
EMPTY = 0x08  # on CALL and REPLY: the same bit, a different frame type

# type: (allowed flags, call frame? True / False / None = either)
_TYPES: dict[int, tuple[int, Optional[bool]]] = {
    HELLO: (0, False),
    WELCOME: (0, False),
    AUTH: (0, False),
    CALL: (MORE | STREAM | NAMED | EMPTY, True),
    REPLY: (MORE | STREAM | EMPTY, True),
    ERROR: (0, None),
    CANCEL: (0, True),
    DATA: (MORE | FIRST, True),
    END: (0, True),
    PING: (0, False),
    PONG: (0, False),
    GOAWAY: (0, False),
    CREDIT: (0, False),
    STREAM_CREDIT: (0, True),
    DICTIONARY: (0, False),
    REGISTER: (0, True),
    UNREGISTER: (0, True),
}

# Content types (codecs) and compression algorithms.
RAW = 0
JSON = 1
POSTCARD = 2
CONTENT_TYPES = {RAW: "raw", JSON: "json", POSTCARD: "postcard"}
NONE = 0
ZSTD = 1
BROTLI = 2
#: zstd with a dictionary the sender shipped in a DICTIONARY frame (feature bit 2, §7.1;
#: this binding does not offer it, so it never arrives on a conforming connection).
ZSTD_DICT = 3
COMPRESSIONS = {NONE: "none", ZSTD: "zstd", BROTLI: "brotli", ZSTD_DICT: "zstd-dict"}

# Priorities (metadata tag 2); normal (2) is sent by omitting the entry.
PRIORITIES = {0: "critical", 1: "high", 2: "normal", 3: "low"}
PRIORITY_NUMBERS = {v: k for k, v in PRIORITIES.items()}

# REGISTER method flags.
METHOD_IDEMPOTENT = 0x01
METHOD_REQUEST_STREAM = 0x02
METHOD_REPLY_STREAM = 0x04

_ERR_RETRY_AFTER = 1
_ERR_SUPPORTED_VERSIONS = 2


class FrameError(Exception):
    """A frame that breaks the protocol (a connection error). ``kind`` is one of
    ``too_large``, ``unknown_type``, ``unknown_flags``, ``reserved``, ``bad_call_id``,
    ``checksum``, ``malformed``; ``details`` holds the kind's fields, as in
    ``tests/vectors/malformed.json``."""

    def __init__(self, kind: str, **details: object) -> None:
        self.kind = kind
        self.details = details
        super().__init__(f"{kind}: {details}")

    def to_json(self) -> dict:
        """The error as the malformed vectors state it."""
        return {"error": self.kind, **self.details}


@dataclasses.dataclass
class Limits:
    """One side's receive limits."""

    max_frame: int = 256 * 1024
    max_message: int = 64 * 1024 * 1024
    max_in_flight: int = 16 * 1024
    initial_window: int = 8 * 1024 * 1024

    def validate(self) -> Optional[str]:
        """Why the limits are unusable, or None."""
        if self.max_frame < 1024:
            return f"max_frame {self.max_frame} is below the minimum of 1024"
        if self.max_message == 0:
            return "max_message is 0"
        if self.max_in_flight == 0:
            return "max_in_flight is 0"
        if self.initial_window < 1024:
            return f"initial_window {self.initial_window} is below the minimum of 1024"
        return None


@dataclasses.dataclass
class Meta:
    """Call metadata entries (§3.1). ``timeout_us``: microseconds left until the
    deadline; ``priority``: 0 critical, 1 high, 3 low (None = normal); ``traceparent``:
    25 bytes (trace id, parent id, flags)."""

    timeout_us: Optional[int] = None
    priority: Optional[int] = None
    traceparent: Optional[bytes] = None
    tracestate: Optional[str] = None
    idempotent: bool = False
    idempotency_key: Optional[str] = None
    principal: Optional[str] = None
    extensions: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class MethodEntry:
    """One method a provider announces in REGISTER. ``request_stream``: it takes a
    stream of requests (flag bit 1); ``reply_stream``: it answers with a stream of
    replies (flag bit 2)."""

    name: str
    idempotent: bool = False
    summary: str = ""
    input: str = ""
    output: str = ""
    request_stream: bool = False
    reply_stream: bool = False

    @property
    def kind(self) -> str:
        """unary, server_stream, client_stream or bidi (as the reference names them)."""
        if self.request_stream:
            return "bidi" if self.reply_stream else "client_stream"
        return "server_stream" if self.reply_stream else "unary"

    @property
    def flags(self) -> int:
        """The method's flag byte in REGISTER."""
        return ((METHOD_IDEMPOTENT if self.idempotent else 0)
                | (METHOD_REQUEST_STREAM if self.request_stream else 0)
                | (METHOD_REPLY_STREAM if self.reply_stream else 0))


@dataclasses.dataclass
class Hello:
    """The client's offer."""

    min_version: int
    max_version: int
    features: int
    limits: Limits
    codecs: list[int]
    compressions: list[int]
    auth_methods: list[int]
    agent: str


@dataclasses.dataclass
class Welcome:
    """What the server agreed."""

    version: int
    features: int
    limits: Limits
    codecs: list[int]
    compressions: list[int]
    auth_method: int
    agent: str


@dataclasses.dataclass
class Auth:
    """An authentication step (reserved)."""

    method: int
    step: int
    data: bytes


@dataclasses.dataclass
class Call:
    """Opens a call. ``method_name`` present means the NAMED flag (binding ``method_id``
    when it is not 0). ``stream``: further request messages follow (DATA with FIRST),
    ended by END; ``empty`` (only with ``stream``, never with ``more``; content type,
    compression 0 and no payload): the frame opens the request stream without a
    message."""

    call_id: int
    method_id: int
    method_name: Optional[str]
    content_type: int
    compression: int
    meta: Meta
    more: bool
    message_len: Optional[int]
    stream: bool
    payload: bytes
    empty: bool = False


@dataclasses.dataclass
class Reply:
    """A call's success reply (first fragment). ``stream``: further reply messages
    follow (DATA with FIRST), ended by END or ERROR; ``empty`` as for :class:`Call`."""

    call_id: int
    content_type: int
    compression: int
    more: bool
    message_len: Optional[int]
    stream: bool
    payload: bytes
    empty: bool = False


@dataclasses.dataclass
class Error:
    """A failed call, or (call id 0) a failed connection."""

    call_id: int
    code: int
    message: str
    retry_after_ms: Optional[int] = None
    supported_versions: Optional[tuple[int, int]] = None
    extensions: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Cancel:
    """The caller gave up."""

    call_id: int


@dataclasses.dataclass
class Data:
    """A continuation fragment, or (``first`` = (content type, compression)) the start of
    a further stream message."""

    call_id: int
    first: Optional[tuple[int, int]]
    more: bool
    message_len: Optional[int]
    payload: bytes


@dataclasses.dataclass
class End:
    """The sender's stream on the call is complete."""

    call_id: int


@dataclasses.dataclass
class Ping:
    """Liveness probe."""

    opaque: int


@dataclasses.dataclass
class Pong:
    """Answer to a ping."""

    opaque: int


@dataclasses.dataclass
class GoAway:
    """The sender opens no new calls and serves none above ``last_call_id``."""

    last_call_id: int
    code: int
    message: str


@dataclasses.dataclass
class Credit:
    """Flow-control credit: ``increment`` more payload bytes may be sent."""

    increment: int


@dataclasses.dataclass
class Dictionary:
    """A zstd dictionary the sender will compress messages with (feature bit 2, §7.1):
    ``id`` (≥ 32768) and the dictionary's bytes."""

    id: int
    data: bytes


@dataclasses.dataclass
class StreamCredit:
    """Stream window credit: ``increment`` more payload bytes may be sent on the call's
    stream (§6.1)."""

    call_id: int
    increment: int


@dataclasses.dataclass
class Register:
    """A provider announces methods."""

    call_id: int
    methods: list[MethodEntry]


@dataclasses.dataclass
class Unregister:
    """A provider withdraws methods."""

    call_id: int
    methods: list[str]


Frame = Union[
    Hello, Welcome, Auth, Call, Reply, Error, Cancel, Data, End, Ping, Pong, GoAway,
    Credit, StreamCredit, Dictionary, Register, Unregister,
]

_TYPE_OF = {
    Hello: HELLO, Welcome: WELCOME, Auth: AUTH, Call: CALL, Reply: REPLY, Error: ERROR,
    Cancel: CANCEL, Data: DATA, End: END, Ping: PING, Pong: PONG, GoAway: GOAWAY,
    Credit: CREDIT, StreamCredit: STREAM_CREDIT, Dictionary: DICTIONARY, Register: REGISTER,
    Unregister: UNREGISTER,
}


def frame_type(f: Frame) -> int:
    """The type byte of a frame."""
    return _TYPE_OF[type(f)]


# ---------------------------------------------------------------------------------------
# Encoding


def _str8(s: str) -> bytes:
    b = s.encode()[:255]
    return bytes([len(b)]) + b


def _clip(s: str, n: int) -> bytes:
    b = s.encode()
    if len(b) <= n:
        return b
    b = b[:n]
    while b and (b[-1] & 0xC0) == 0x80:
        b = b[:-1]
    # Drop a lead byte whose continuation was cut.
    return b.decode("utf-8", "ignore").encode()


def _str16(s: str, n: int = MAX_MESSAGE_TEXT) -> bytes:
    b = _clip(s, n)
    return struct.pack("<H", len(b)) + b


def _list8(ids: list[int]) -> bytes:
    return bytes([len(ids)]) + bytes(ids)


def _limits(l: Limits) -> bytes:
    return struct.pack("<IIII", l.max_frame, l.max_message, l.max_in_flight, l.initial_window)


def encode_meta(m: Meta) -> bytes:
    """The metadata entries of ``m``, tags ascending."""
    out = bytearray()

    def entry(tag: int, value: bytes) -> None:
        out.extend(struct.pack("<BH", tag, len(value)))
        out.extend(value)

    if m.timeout_us is not None:
        entry(1, struct.pack("<Q", m.timeout_us))
    if m.priority is not None:
        entry(2, bytes([m.priority]))
    if m.traceparent is not None:
        entry(3, m.traceparent)
        if m.tracestate is not None:
            entry(4, _clip(m.tracestate, MAX_META_TEXT))
    if m.idempotent:
        entry(5, b"")
    if m.idempotency_key is not None:
        entry(6, _clip(m.idempotency_key, MAX_META_TEXT))
    if m.principal is not None:
        entry(7, _clip(m.principal, MAX_META_TEXT))
    for tag, value in m.extensions:
        entry(tag, value)
    return bytes(out)


def _refuse_bad_empty(f: Union[Call, Reply]) -> None:
    if f.empty and (not f.stream or f.more or f.content_type or f.compression or f.payload):
        raise ValueError(
            f"{type(f).__name__} with EMPTY needs STREAM, no MORE, content type and "
            f"compression 0 and no payload: {f!r}")


def _fields(f: Frame) -> tuple[int, bytes, bytes]:
    """(flags, fixed fields, payload) of a frame body."""
    t = type(f)
    if t is Call:
        _refuse_bad_empty(f)
        flags = (MORE if f.more else 0) | (STREAM if f.stream else 0) | (EMPTY if f.empty else 0)
        head = struct.pack("<H", f.method_id)
        if f.method_name is not None:
            flags |= NAMED
            head += _str8(f.method_name)
        meta = encode_meta(f.meta)
        head += struct.pack("<BBH", f.content_type, f.compression, len(meta)) + meta
        if f.more:
            head += struct.pack("<I", f.message_len or 0)
        return flags, head, f.payload
    if t is Reply:
        _refuse_bad_empty(f)
        flags = (MORE if f.more else 0) | (STREAM if f.stream else 0) | (EMPTY if f.empty else 0)
        head = bytes([f.content_type, f.compression])
        if f.more:
            head += struct.pack("<I", f.message_len or 0)
        return flags, head, f.payload
    if t is Data:
        flags = (MORE if f.more else 0) | (FIRST if f.first is not None else 0)
        head = b""
        if f.first is not None:
            head = bytes(f.first)
            if f.more:
                head += struct.pack("<I", f.message_len or 0)
        return flags, head, f.payload
    if t is Error:
        head = struct.pack("<H", f.code) + _str16(f.message)
        if f.retry_after_ms is not None:
            head += struct.pack("<BHI", _ERR_RETRY_AFTER, 4, f.retry_after_ms)
        if f.supported_versions is not None:
            lo, hi = f.supported_versions
            head += struct.pack("<BHHH", _ERR_SUPPORTED_VERSIONS, 4, lo, hi)
        for tag, v in f.extensions:
            head += struct.pack("<BH", tag, len(v)) + v
        return 0, head, b""
    if t is Hello:
        head = (
            struct.pack("<HHQ", f.min_version, f.max_version, f.features)
            + _limits(f.limits)
            + _list8(f.codecs)
            + _list8(f.compressions)
            + _list8(f.auth_methods)
            + _str8(f.agent)
        )
        return 0, head, b""
    if t is Welcome:
        head = (
            struct.pack("<HQ", f.version, f.features)
            + _limits(f.limits)
            + _list8(f.codecs)
            + _list8(f.compressions)
            + bytes([f.auth_method])
            + _str8(f.agent)
        )
        return 0, head, b""
    if t is Auth:
        return 0, bytes([f.method, f.step]), f.data
    if t is Cancel or t is End:
        return 0, b"", b""
    if t is Ping or t is Pong:
        return 0, struct.pack("<Q", f.opaque), b""
    if t is GoAway:
        return 0, struct.pack("<IH", f.last_call_id, f.code) + _str16(f.message), b""
    if t is Credit:
        return 0, struct.pack("<I", f.increment), b""
    if t is StreamCredit:
        return 0, struct.pack("<I", f.increment), b""
    if t is Dictionary:
        return 0, struct.pack("<I", f.id), f.data
    if t is Register:
        head = bytearray(struct.pack("<H", len(f.methods)))
        for m in f.methods:
            head += _str8(m.name)
            head.append(m.flags)
            head += _str16(m.summary) + _str16(m.input) + _str16(m.output)
        return 0, bytes(head), b""
    if t is Unregister:
        head = bytearray(struct.pack("<H", len(f.methods)))
        for m in f.methods:
            head += _str8(m)
        return 0, bytes(head), b""
    raise TypeError(f"not a frame: {f!r}")


def call_id_of(f: Frame) -> int:
    """The call id in the header (0 for connection frames)."""
    return getattr(f, "call_id", 0)


def encode_parts(f: Frame, crc: bool = False) -> list[bytes]:
    """The encoded frame as a list of byte strings (the payload not copied), ready for
    ``writelines``."""
    flags, head, payload = _fields(f)
    header = struct.pack("<IBBHI", len(head) + len(payload), _TYPE_OF[type(f)], flags, 0, call_id_of(f))
    if not crc:
        if payload:
            if len(payload) < 1024:
                return [header + head + payload]
            return [header + head, payload]
        return [header + head]
    first = header + head
    c = crc32c(payload, crc32c(first))
    return [first, payload, struct.pack("<I", c)] if payload else [first, struct.pack("<I", c)]


def encode(f: Frame, crc: bool = False) -> bytes:
    """The encoded frame (with a CRC32C trailer when ``crc``)."""
    return b"".join(encode_parts(f, crc))


# ---------------------------------------------------------------------------------------
# Decoding


class _Reader:
    __slots__ = ("b", "pos", "frame")

    def __init__(self, b: memoryview, frame: int) -> None:
        self.b = b
        self.pos = 0
        self.frame = frame

    def err(self, reason: str) -> FrameError:
        return FrameError("malformed", frame=self.frame, reason=reason)

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.b):
            raise self.err(what)
        v = self.b[self.pos:end]
        self.pos = end
        return v

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def text(self, n: int, what: str) -> str:
        b = self.take(n, what)
        try:
            return bytes(b).decode("utf-8")
        except UnicodeDecodeError:
            raise self.err("text is not UTF-8") from None

    def str8(self, what: str) -> str:
        return self.text(self.u8(what), what)

    def str16(self, what: str) -> str:
        return self.text(self.u16(what), what)

    def list8(self, what: str) -> list[int]:
        return list(self.take(self.u8(what), what))

    def rest(self) -> bytes:
        v = bytes(self.b[self.pos:])
        self.pos = len(self.b)
        return v

    def remaining(self) -> int:
        return len(self.b) - self.pos

    def finish(self) -> None:
        if self.pos != len(self.b):
            raise self.err("trailing bytes after the last field")


def _segment_ok(s: str) -> bool:
    return bool(s) and s[0].isascii() and s[0].isalpha() and all(
        c.isascii() and (c.isalnum() or c in "_-") for c in s
    )


def valid_full_name(name: str) -> bool:
    """Whether ``name`` is a valid ``SERVICE.METHOD`` (split at the last dot)."""
    service, dot, method = name.rpartition(".")
    if not dot or len(service.encode()) > 128 or len(method.encode()) > 64:
        return False
    return _segment_ok(method) and all(_segment_ok(seg) for seg in service.split("."))


def parse_header(b: bytes, max_body: int) -> tuple[int, int, int, int]:
    """Checks a 12-byte header, in the protocol's order; returns (body length, type,
    flags, call id)."""
    length, ftype, flags, reserved, call_id = struct.unpack_from("<IBBHI", b)
    if ftype not in _TYPES:
        raise FrameError("unknown_type", type=ftype)
    if length > max_body:
        raise FrameError("too_large", len=length, max=max_body)
    allowed, is_call = _TYPES[ftype]
    if flags & ~allowed:
        raise FrameError("unknown_flags", frame=ftype, flags=flags & ~allowed)
    if reserved != 0:
        raise FrameError("reserved", frame=ftype, value=reserved)
    if (is_call is True and call_id == 0) or (is_call is False and call_id != 0):
        raise FrameError("bad_call_id", frame=ftype, call_id=call_id)
    return length, ftype, flags, call_id


def decode_meta(b: memoryview) -> Meta:
    """Reads metadata entries (errors are reported as CALL frame errors)."""
    r = _Reader(b, CALL)
    m = Meta()
    last = None
    while r.remaining() > 0:
        tag = r.u8("metadata entry tag is cut short")
        n = r.u16("metadata entry length is cut short")
        if tag == 0:
            raise r.err("metadata tag 0 is reserved")
        if last is not None and tag <= last:
            raise r.err("metadata tags are not strictly ascending")
        last = tag

        def text_len() -> int:
            if n > MAX_META_TEXT:
                raise r.err("metadata text value longer than 1024 bytes")
            return n

        if tag == 1:
            if n != 8:
                raise r.err("timeout entry is not 8 bytes")
            m.timeout_us = r.u64("timeout")
        elif tag == 2:
            if n != 1:
                raise r.err("priority entry is not 1 byte")
            p = r.u8("priority")
            if p not in PRIORITIES:
                raise r.err("unknown priority class")
            if p == 2:
                raise r.err("priority normal is sent by omitting the entry")
            m.priority = p
        elif tag == 3:
            if n != 25:
                raise r.err("traceparent entry is not 25 bytes")
            v = bytes(r.take(25, "traceparent"))
            if v[:16] == bytes(16) or v[16:24] == bytes(8):
                raise r.err("traceparent has an all-zero id")
            m.traceparent = v
        elif tag == 4:
            s = r.text(text_len(), "tracestate")
            if m.traceparent is None:
                raise r.err("tracestate without traceparent")
            m.tracestate = s
        elif tag == 5:
            if n != 0:
                raise r.err("idempotent entry has a value")
            m.idempotent = True
        elif tag == 6:
            m.idempotency_key = r.text(text_len(), "idempotency key")
        elif tag == 7:
            m.principal = r.text(text_len(), "principal")
        else:
            m.extensions.append((tag, bytes(r.take(n, "metadata extension is cut short"))))
    return m


def _message_len(r: _Reader, present: bool) -> Optional[int]:
    if not present:
        return None
    n = r.u32("message length is missing")
    if n <= r.remaining():
        raise r.err("message length does not exceed the first fragment although MORE is set")
    return n


def _limits_of(r: _Reader) -> Limits:
    return Limits(
        r.u32("limits are cut short"),
        r.u32("limits are cut short"),
        r.u32("limits are cut short"),
        r.u32("limits are cut short"),
    )


def _full_name(r: _Reader) -> str:
    name = r.str8("method name is cut short")
    if not valid_full_name(name):
        raise r.err("method name is not a valid SERVICE.METHOD")
    return name


def _check_empty(r: _Reader, flags: int, ct: int, comp: int, payload: bytes) -> None:
    """EMPTY opens a stream without a message: only with STREAM, never with MORE, and
    the message fields hold nothing (raw, uncompressed, no bytes), so the encoding stays
    canonical. Checked once the body is read, as the reference decoder does."""
    if not flags & EMPTY:
        return
    if not flags & STREAM:
        raise r.err("EMPTY without STREAM")
    if flags & MORE:
        raise r.err("EMPTY with MORE")
    if ct != RAW or comp != NONE or payload:
        raise r.err("EMPTY frame carries a message")


def decode_body(ftype: int, flags: int, call_id: int, body: memoryview) -> Frame:
    """Decodes a frame body whose header was checked."""
    r = _Reader(body, ftype)

    def content_type() -> int:
        v = r.u8("content type is missing")
        if v not in CONTENT_TYPES:
            raise r.err("unknown content type id")
        return v

    def compression() -> int:
        v = r.u8("compression id is missing")
        if v not in COMPRESSIONS:
            raise r.err("unknown compression id")
        return v

    f: Frame
    if ftype == CALL:
        mid = r.u16("method id is missing")
        name = _full_name(r) if flags & NAMED else None
        if name is None and mid == 0:
            raise r.err("method id 0 without a name")
        ct = content_type()
        comp = compression()
        meta_len = r.u16("metadata length is missing")
        meta = decode_meta(r.take(meta_len, "metadata is cut short"))
        ml = _message_len(r, bool(flags & MORE))
        payload = r.rest()
        _check_empty(r, flags, ct, comp, payload)
        f = Call(call_id, mid, name, ct, comp, meta, bool(flags & MORE), ml, bool(flags & STREAM), payload,
                 bool(flags & EMPTY))
    elif ftype == REPLY:
        ct = content_type()
        comp = compression()
        ml = _message_len(r, bool(flags & MORE))
        payload = r.rest()
        _check_empty(r, flags, ct, comp, payload)
        f = Reply(call_id, ct, comp, bool(flags & MORE), ml, bool(flags & STREAM), payload, bool(flags & EMPTY))
    elif ftype == DATA:
        first = (content_type(), compression()) if flags & FIRST else None
        ml = _message_len(r, first is not None and bool(flags & MORE))
        f = Data(call_id, first, bool(flags & MORE), ml, r.rest())
    elif ftype == ERROR:
        code = r.u16("status code is missing")
        message = r.str16("message is cut short")
        if len(message.encode()) > MAX_MESSAGE_TEXT:
            raise r.err("message longer than 4096 bytes")
        e = Error(call_id, code, message)
        last = 0
        while r.remaining() > 0:
            tag = r.u8("detail tag is missing")
            n = r.u16("detail length is missing")
            if tag <= last:
                raise r.err("detail tags are not strictly ascending (or tag 0)")
            last = tag
            if tag == _ERR_RETRY_AFTER and n == 4:
                e.retry_after_ms = r.u32("retry-after")
            elif tag == _ERR_SUPPORTED_VERSIONS and n == 4:
                e.supported_versions = (r.u16("versions"), r.u16("versions"))
            elif tag in (_ERR_RETRY_AFTER, _ERR_SUPPORTED_VERSIONS):
                raise r.err("detail entry has the wrong length")
            else:
                e.extensions.append((tag, bytes(r.take(n, "detail entry is cut short"))))
        f = e
    elif ftype == HELLO:
        lo = r.u16("versions are cut short")
        hi = r.u16("versions are cut short")
        features = r.u64("features are cut short")
        limits = _limits_of(r)
        f = Hello(
            lo, hi, features, limits,
            r.list8("codec list is cut short"),
            r.list8("compression list is cut short"),
            r.list8("auth method list is cut short"),
            r.str8("agent is cut short"),
        )
    elif ftype == WELCOME:
        version = r.u16("version is cut short")
        features = r.u64("features are cut short")
        limits = _limits_of(r)
        codecs = r.list8("codec list is cut short")
        comps = r.list8("compression list is cut short")
        auth = r.u8("auth method is missing")
        f = Welcome(version, features, limits, codecs, comps, auth, r.str8("agent is cut short"))
    elif ftype == AUTH:
        method = r.u8("auth method is missing")
        step = r.u8("auth step is missing")
        f = Auth(method, step, r.rest())
    elif ftype == CANCEL:
        f = Cancel(call_id)
    elif ftype == END:
        f = End(call_id)
    elif ftype == PING:
        f = Ping(r.u64("ping value is missing"))
    elif ftype == PONG:
        f = Pong(r.u64("pong value is missing"))
    elif ftype == GOAWAY:
        last_id = r.u32("last call id is missing")
        code = r.u16("status code is missing")
        message = r.str16("message is cut short")
        if len(message.encode()) > MAX_MESSAGE_TEXT:
            raise r.err("message longer than 4096 bytes")
        f = GoAway(last_id, code, message)
    elif ftype == CREDIT:
        inc = r.u32("increment is missing")
        if inc == 0:
            raise r.err("credit increment of 0")
        f = Credit(inc)
    elif ftype == STREAM_CREDIT:
        inc = r.u32("increment is missing")
        if inc == 0:
            raise r.err("stream credit increment of 0")
        f = StreamCredit(call_id, inc)
    elif ftype == DICTIONARY:
        did = r.u32("dictionary id is missing")
        data = r.rest()
        if not data:
            raise r.err("empty dictionary")
        f = Dictionary(did, data)
    elif ftype == REGISTER:
        n = r.u16("method count is missing")
        methods = []
        for _ in range(n):
            name = _full_name(r)
            flag = r.u8("method flags are missing")
            if flag & ~(METHOD_IDEMPOTENT | METHOD_REQUEST_STREAM | METHOD_REPLY_STREAM):
                raise r.err("undefined method flag bits")
            texts = []
            for _ in range(3):
                s = r.str16("method info is cut short")
                if len(s.encode()) > MAX_MESSAGE_TEXT:
                    raise r.err("method info text longer than 4096 bytes")
                texts.append(s)
            methods.append(MethodEntry(
                name, bool(flag & METHOD_IDEMPOTENT), texts[0], texts[1], texts[2],
                bool(flag & METHOD_REQUEST_STREAM), bool(flag & METHOD_REPLY_STREAM)))
        f = Register(call_id, methods)
    elif ftype == UNREGISTER:
        n = r.u16("method count is missing")
        f = Unregister(call_id, [_full_name(r) for _ in range(n)])
    else:  # parse_header refused it already
        raise FrameError("unknown_type", type=ftype)
    r.finish()
    return f


def decode(buf: Union[bytes, bytearray, memoryview], max_body: int, crc: bool = False) -> Optional[tuple[Frame, int]]:
    """Decodes the first frame of ``buf``: ``(frame, bytes used)``, or None when the frame
    is not complete yet. Raises :class:`FrameError` for a bad frame."""
    if len(buf) < HEADER_LEN:
        return None
    length, ftype, flags, call_id = parse_header(bytes(buf[:HEADER_LEN]), max_body)
    total = HEADER_LEN + length + (CRC_LEN if crc else 0)
    if len(buf) < total:
        return None
    view = memoryview(buf)
    if crc:
        expected = struct.unpack_from("<I", view, total - CRC_LEN)[0]
        actual = crc32c(view[: total - CRC_LEN])
        if expected != actual:
            raise FrameError("checksum", frame=ftype, expected=expected, actual=actual)
    return decode_body(ftype, flags, call_id, view[HEADER_LEN:HEADER_LEN + length]), total
