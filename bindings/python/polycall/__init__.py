"""polycall for Python: the wire protocol, a client and a provider, on asyncio, in pure
Python (zstd when ``zstandard`` is importable).

>>> import polycall                                              # doctest: +SKIP
>>> async with await polycall.Client.connect("127.0.0.1:7464") as c:
...     await c.call_json("sys.ping")
{'pong': True}
"""

from . import trace
from .client import Client
from .connection import (
    CallContext,
    Connection,
    IncomingCall,
    Payload,
    ReplyStream,
    RequestStream,
    Settings,
)
from .errors import (
    CODE_NUMBERS,
    CODES,
    AlreadyExistsError,
    BusyError,
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidInputError,
    MalformedError,
    NotFoundError,
    PermissionDeniedError,
    PolycallError,
    TooLargeError,
    UnauthenticatedError,
    UnavailableError,
    UnknownError,
    UnknownMethodError,
    UnsupportedError,
    VersionMismatchError,
    error_for,
    error_named,
)
from .frame import JSON, RAW, FrameError, Limits
from .provider import Provider
from .trace import SpanRecorder, TraceContext

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError", "BusyError", "CODES", "CODE_NUMBERS", "CallContext", "CancelledError",
    "Client", "Connection", "DeadlineExceededError", "FailedPreconditionError", "FrameError",
    "IncomingCall", "InternalError", "InvalidInputError", "JSON", "Limits", "MalformedError",
    "NotFoundError", "Payload", "PermissionDeniedError", "PolycallError", "Provider", "RAW",
    "ReplyStream", "RequestStream", "Settings", "SpanRecorder", "TooLargeError", "TraceContext", "UnauthenticatedError",
    "UnavailableError", "UnknownError", "UnknownMethodError", "UnsupportedError",
    "VersionMismatchError", "error_for", "error_named", "trace",
]
