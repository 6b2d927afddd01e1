"""Support for generated stubs: type descriptors, checked JSON conversion of message
dataclasses, and the glue between typed methods and :class:`Client` /
:class:`Provider`. Generated modules use it; applications need not.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any, Awaitable, Callable, Optional

from . import codec
from . import frame as F
from .connection import CallContext, IncomingCall, Payload
from .errors import InvalidInputError, MalformedError, PolycallError


@dataclasses.dataclass(frozen=True)
class Type:
    """A field type: ``kind`` is raw, string, int, float, bool, bytes, any, list,
    optional or message; ``item`` the inner type; ``message`` a function returning the
    message class (late, so messages may refer to later ones)."""

    kind: str
    item: Optional["Type"] = None
    message: Optional[Callable[[], type]] = None


RAW = Type("raw")
STRING = Type("string")
INT = Type("int")
FLOAT = Type("float")
BOOL = Type("bool")
BYTES = Type("bytes")
ANY = Type("any")


def list_of(item: Type) -> Type:
    """``list<item>``."""
    return Type("list", item)


def optional(item: Type) -> Type:
    """``optional<item>``."""
    return Type("optional", item)


def message(cls: Callable[[], type]) -> Type:
    """A nested message (``cls`` returns its class)."""
    return Type("message", message=cls)


class ConversionError(Exception):
    """A value does not fit its declared type; ``path`` says where."""


def to_json(value: Any, t: Type, path: str = "$") -> Any:
    """The JSON form of ``value`` of type ``t`` (checked)."""
    k = t.kind
    if k == "optional":
        return None if value is None else to_json(value, t.item, path)
    if k == "string":
        if not isinstance(value, str):
            raise ConversionError(f"{path}: expected a str, got {type(value).__name__}")
        return value
    if k == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConversionError(f"{path}: expected an int, got {type(value).__name__}")
        if not -(1 << 63) <= value < (1 << 63):
            raise ConversionError(f"{path}: {value} does not fit a 64-bit int")
        return value
    if k == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConversionError(f"{path}: expected a float, got {type(value).__name__}")
        return float(value)
    if k == "bool":
        if not isinstance(value, bool):
            raise ConversionError(f"{path}: expected a bool, got {type(value).__name__}")
        return value
    if k == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ConversionError(f"{path}: expected bytes, got {type(value).__name__}")
        return base64.b64encode(bytes(value)).decode()
    if k == "any":
        return value
    if k == "list":
        if not isinstance(value, (list, tuple)):
            raise ConversionError(f"{path}: expected a list, got {type(value).__name__}")
        return [to_json(v, t.item, f"{path}[{i}]") for i, v in enumerate(value)]
    if k == "message":
        cls = t.message()
        if not isinstance(value, cls):
            raise ConversionError(f"{path}: expected {cls.__name__}, got {type(value).__name__}")
        out = {}
        for key, attr, ft in cls._polycall_fields:
            v = getattr(value, attr)
            if v is None and ft.kind == "optional":
                continue
            out[key] = to_json(v, ft, f"{path}.{key}")
        return out
    raise ConversionError(f"{path}: type {k} has no JSON form")


def from_json(value: Any, t: Type, path: str = "$") -> Any:
    """The Python value of JSON ``value`` of type ``t`` (checked)."""
    k = t.kind
    if k == "optional":
        return None if value is None else from_json(value, t.item, path)
    if k == "string":
        if not isinstance(value, str):
            raise ConversionError(f"{path}: expected a string, got {_json_kind(value)}")
        return value
    if k == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConversionError(f"{path}: expected an integer, got {_json_kind(value)}")
        return value
    if k == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConversionError(f"{path}: expected a number, got {_json_kind(value)}")
        return float(value)
    if k == "bool":
        if not isinstance(value, bool):
            raise ConversionError(f"{path}: expected true or false, got {_json_kind(value)}")
        return value
    if k == "bytes":
        if not isinstance(value, str):
            raise ConversionError(f"{path}: expected a base64 string, got {_json_kind(value)}")
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as e:
            raise ConversionError(f"{path}: not base64: {e}") from None
    if k == "any":
        return value
    if k == "list":
        if not isinstance(value, list):
            raise ConversionError(f"{path}: expected an array, got {_json_kind(value)}")
        return [from_json(v, t.item, f"{path}[{i}]") for i, v in enumerate(value)]
    if k == "message":
        cls = t.message()
        if not isinstance(value, dict):
            raise ConversionError(f"{path}: expected an object ({cls.__name__}), got {_json_kind(value)}")
        kwargs = {}
        for key, attr, ft in cls._polycall_fields:
            if key not in value:
                if ft.kind == "optional":
                    kwargs[attr] = None
                    continue
                raise ConversionError(f"{path}: field {key!r} is missing")
            kwargs[attr] = from_json(value[key], ft, f"{path}.{key}")
        return cls(**kwargs)
    raise ConversionError(f"{path}: type {k} has no JSON form")


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def encode(value: Any, t: Type) -> Payload:
    """The message of a method side: raw bytes as they are, messages as JSON."""
    if t.kind == "raw":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ConversionError(f"expected bytes, got {type(value).__name__}")
        return Payload(bytes(value), F.RAW)
    return Payload(codec.encode_json(to_json(value, t)), F.JSON)


def decode(payload: Payload, t: Type, what: str) -> Any:
    """The value of a received message of a method side."""
    if t.kind == "raw":
        return payload.data
    return from_json(codec.decode_json(payload.data, what), t)


async def call(client: Any, method: str, request: Any, input_type: Type, output_type: Type, *,
               idempotent: bool, timeout: Optional[float], priority: Optional[str]) -> Any:
    """A typed call: checks and encodes ``request``, decodes and checks the reply
    (a reply that does not fit its type raises :class:`polycall.MalformedError`)."""
    try:
        payload = encode(request, input_type)
    except ConversionError as e:
        raise TypeError(f"{method}: the request does not fit its type: {e}") from None
    reply = await client.call_payload(method, payload, timeout=timeout, priority=priority,
                                      idempotent=idempotent)
    try:
        return decode(reply, output_type, f"the reply of {method}")
    except ConversionError as e:
        raise MalformedError(f"{method}: the reply does not fit its type: {e}") from None


def serve(provider: Any, method: str, impl: Callable[[Any, CallContext], Awaitable[Any]],
          input_type: Type, output_type: Type, *, summary: str, input_hint: str,
          output_hint: str, idempotent: bool) -> None:
    """Adds a typed method to ``provider``: requests that do not fit their type are
    answered with ``invalid_input``; a reply that does not fit is ``internal``."""

    async def handler(call: IncomingCall) -> Payload:
        try:
            request = decode(Payload(call.payload, call.content_type), input_type, f"the request of {method}")
        except (ConversionError, MalformedError) as e:
            raise InvalidInputError(f"{method}: {e}") from None
        result = await impl(request, call.context)
        try:
            return encode(result, output_type)
        except ConversionError as e:
            raise PolycallError(f"{method} returned a reply that does not fit its type: {e}",
                                code=10) from None

    provider.add_method(method, handler, summary=summary, input_hint=input_hint,
                        output_hint=output_hint, idempotent=idempotent)
