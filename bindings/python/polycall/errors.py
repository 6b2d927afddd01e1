"""Typed errors: one :class:`PolycallError` subclass per status code.

The codes are part of the wire protocol (docs/protocol.md §2, and
``crates/polycall-core/src/status.rs``); receivers pass unknown codes through.
"""

from __future__ import annotations

from typing import Optional

#: Status code number → name.
CODES: dict[int, str] = {
    0: "ok",
    1: "cancelled",
    2: "invalid_input",
    3: "not_found",
    4: "deadline_exceeded",
    5: "unauthenticated",
    6: "permission_denied",
    7: "unavailable",
    8: "busy",
    9: "too_large",
    10: "internal",
    11: "unsupported",
    12: "version_mismatch",
    13: "unknown_method",
    14: "malformed",
    15: "already_exists",
    16: "failed_precondition",
    65535: "unknown",
}

#: Status code name → number.
CODE_NUMBERS: dict[str, int] = {name: num for num, name in CODES.items()}


def code_name(code: int) -> str:
    """The name of a code number; numbers this version does not know are ``unknown``."""
    return CODES.get(code, "unknown")


class PolycallError(Exception):
    """A call (or a connection) failed with a status code.

    ``code`` is the wire number (kept as received, even when unknown), ``name`` its
    snake_case name, ``message`` the peer's text, ``retry_after`` seconds or ``None``.
    """

    CODE = 65535

    def __init__(
        self,
        message: str = "",
        *,
        code: Optional[int] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        self.code = self.CODE if code is None else code
        self.name = code_name(self.code)
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"{self.name}: {message}")


class CancelledError(PolycallError):
    """The caller gave up on the call (not :class:`asyncio.CancelledError`)."""

    CODE = 1


class InvalidInputError(PolycallError):
    """The request was understood but its input is not acceptable."""

    CODE = 2


class NotFoundError(PolycallError):
    """An item the call refers to does not exist."""

    CODE = 3


class DeadlineExceededError(PolycallError):
    """The deadline passed before the call completed."""

    CODE = 4


class UnauthenticatedError(PolycallError):
    """No valid credentials."""

    CODE = 5


class PermissionDeniedError(PolycallError):
    """Credentials are valid but do not allow this call."""

    CODE = 6


class UnavailableError(PolycallError):
    """The callee cannot be reached (no provider, connection lost)."""

    CODE = 7


class BusyError(PolycallError):
    """The callee is overloaded; retry after ``retry_after`` seconds."""

    CODE = 8


class TooLargeError(PolycallError):
    """A message is larger than the negotiated limit."""

    CODE = 9


class InternalError(PolycallError):
    """A bug or an unexpected failure in the callee."""

    CODE = 10


class UnsupportedError(PolycallError):
    """The capability exists in the protocol but is not supported here."""

    CODE = 11


class VersionMismatchError(PolycallError):
    """The peers share no protocol version."""

    CODE = 12


class UnknownMethodError(PolycallError):
    """No such method."""

    CODE = 13


class MalformedError(PolycallError):
    """The request could not be parsed or broke the protocol."""

    CODE = 14


class AlreadyExistsError(PolycallError):
    """The item to create exists already."""

    CODE = 15


class FailedPreconditionError(PolycallError):
    """The system is not in a state that allows the call."""

    CODE = 16


class UnknownError(PolycallError):
    """A code this version does not know (sent by a newer peer)."""

    CODE = 65535


_BY_CODE: dict[int, type[PolycallError]] = {
    cls.CODE: cls
    for cls in (
        CancelledError,
        InvalidInputError,
        NotFoundError,
        DeadlineExceededError,
        UnauthenticatedError,
        PermissionDeniedError,
        UnavailableError,
        BusyError,
        TooLargeError,
        InternalError,
        UnsupportedError,
        VersionMismatchError,
        UnknownMethodError,
        MalformedError,
        AlreadyExistsError,
        FailedPreconditionError,
        UnknownError,
    )
}


def error_for(code: int, message: str, retry_after: Optional[float] = None) -> PolycallError:
    """The typed error of a status code number (unknown numbers: :class:`UnknownError`
    keeping the number)."""
    cls = _BY_CODE.get(code, UnknownError)
    return cls(message, code=code, retry_after=retry_after)


def error_named(name: str, message: str) -> PolycallError:
    """The typed error of a status code name (``invalid_input``); raises
    :class:`ValueError` for a name that is not a code."""
    if name not in CODE_NUMBERS or name == "ok":
        raise ValueError(f"{name!r} is not a status code name")
    return error_for(CODE_NUMBERS[name], message)
