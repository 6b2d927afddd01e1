"""Support for generated stubs: type descriptors, checked JSON conversion of message
dataclasses, and the glue between typed methods and :class:`Client` /
:class:`Provider`. Generated modules use it; applications need not.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import inspect
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Optional, Union

from . import codec
from . import frame as F
from .connection import CallContext, IncomingCall, Payload, ReplyStream, as_async_iterator
from .errors import InternalError, InvalidInputError, MalformedError, PolycallError


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


# ------------------------------------------------------------------------ streaming calls
#
# The generated streaming methods call these: ``server_stream``, ``client_stream`` and
# ``bidi`` (the schema's method kinds) on the client side, ``serve_server_stream``,
# ``serve_client_stream`` and ``serve_bidi`` on the provider side. Requests and replies
# are checked and converted one message at a time, as they flow.

#: What a typed request stream may be: an async or plain iterable of values.
Values = Union[AsyncIterable[Any], Iterable[Any]]


def _check_values(method: str, values: Any) -> None:
    """Refuses, before anything is sent, requests that are not a stream of values."""
    if isinstance(values, (bytes, bytearray, memoryview, str)) or not (
            hasattr(values, "__aiter__") or hasattr(values, "__iter__")):
        raise TypeError(f"{method}: the requests must be an iterable or async iterable of values, "
                        f"not {type(values).__name__}")


async def _aclose(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - still running elsewhere, or failing on close
            pass


async def _encoded(it: AsyncIterator[Any], t: Type, misfit: Callable[[int, ConversionError], Exception],
                   also_close: Optional[AsyncIterator[Any]] = None) -> AsyncIterator[Payload]:
    """The wire messages of a typed stream ``it``: value ``#i`` that does not fit ``t``
    raises ``misfit(i, error)``. Closing the result closes ``it`` (and ``also_close``)."""
    try:
        i = 0
        while True:
            try:
                value = await it.__anext__()
            except StopAsyncIteration:
                return
            try:
                payload = encode(value, t)
            except ConversionError as e:
                raise misfit(i, e) from None
            i += 1
            yield payload
    finally:
        await _aclose(it)
        if also_close is not None:
            await _aclose(also_close)


def _encoded_requests(method: str, values: Values, input_type: Type) -> AsyncIterator[Payload]:
    """The wire messages of a typed request stream; a value that does not fit its type
    raises :class:`TypeError` (which fails the call, CANCEL to the callee)."""
    return _encoded(as_async_iterator(values), input_type,
                    lambda i, e: TypeError(f"{method}: request #{i} does not fit its type: {e}"))


def _reply_decoder(method: str, output_type: Type) -> Callable[[Payload], Any]:
    """Decodes each reply of a stream in turn; one that does not fit raises
    :class:`MalformedError` (and the call is cancelled)."""
    count = 0

    def decode_reply(payload: Payload) -> Any:
        nonlocal count
        i, count = count, count + 1
        try:
            return decode(payload, output_type, f"reply #{i} of {method}")
        except ConversionError as e:
            raise MalformedError(f"{method}: reply #{i} does not fit its type: {e}") from None
    return decode_reply


def server_stream(client: Any, method: str, request: Any, input_type: Type, output_type: Type, *,
                  idempotent: bool, timeout: Optional[float], priority: Optional[str]) -> ReplyStream:
    """A typed server stream: checks and encodes ``request`` (raising
    :class:`TypeError` at once when it does not fit) and returns the replies as an
    async iterator of decoded values — a :class:`polycall.ReplyStream`: the call opens
    when iteration starts, ``timeout`` covers the whole stream, leaving early cancels
    it, and a reply that does not fit its type raises :class:`polycall.MalformedError`
    (cancelling the call)."""
    try:
        payload = encode(request, input_type)
    except ConversionError as e:
        raise TypeError(f"{method}: the request does not fit its type: {e}") from None
    return client.connection.stream(method, payload.data, content_type=payload.content_type,
                                    timeout=timeout, priority=priority, idempotent=idempotent,
                                    decode=_reply_decoder(method, output_type))


async def client_stream(client: Any, method: str, requests: Values, input_type: Type, output_type: Type, *,
                        idempotent: bool, timeout: Optional[float], priority: Optional[str]) -> Any:
    """A typed client stream: sends each value of ``requests`` (an async or plain
    iterable; checked and encoded as it is sent — one that does not fit fails the
    call with :class:`TypeError`) and returns the one decoded reply (a reply that does
    not fit raises :class:`polycall.MalformedError`)."""
    _check_values(method, requests)
    content_type = F.RAW if input_type.kind == "raw" else F.JSON
    return await client.connection.stream(
        method, requests=_encoded_requests(method, requests, input_type), content_type=content_type,
        timeout=timeout, priority=priority, idempotent=idempotent,
        decode=_reply_decoder(method, output_type)).single()


def bidi_stream(client: Any, method: str, requests: Values, input_type: Type, output_type: Type, *,
                idempotent: bool, timeout: Optional[float], priority: Optional[str]) -> ReplyStream:
    """A typed bidirectional stream: ``requests`` are checked, encoded and sent as they
    come (as for :func:`client_stream`) while the decoded replies arrive through the
    returned :class:`polycall.ReplyStream` (as for :func:`server_stream`)."""
    _check_values(method, requests)
    content_type = F.RAW if input_type.kind == "raw" else F.JSON
    return client.connection.stream(
        method, requests=_encoded_requests(method, requests, input_type), content_type=content_type,
        timeout=timeout, priority=priority, idempotent=idempotent,
        decode=_reply_decoder(method, output_type))


#: The name ``polycall bindgen`` gives :func:`bidi_stream` (the method kind ``bidi``).
bidi = bidi_stream


def _decode_request(method: str, payload: Payload, input_type: Type, which: str = "the request") -> Any:
    try:
        return decode(payload, input_type, f"{which} of {method}")
    except (ConversionError, MalformedError) as e:
        raise InvalidInputError(f"{method}: {which} does not fit its type: {e}") from None


async def _decoded_requests(method: str, requests: AsyncIterable[Payload], input_type: Type) -> AsyncIterator[Any]:
    """A provider's view of a typed request stream: each message decoded as it is
    read; one that does not fit raises :class:`polycall.InvalidInputError` in the
    method (which answers with it unless the method catches it)."""
    i = 0
    async for payload in requests:
        value = _decode_request(method, payload, input_type, f"request #{i}")
        i += 1
        yield value


async def _replies_of(method: str, result: Any) -> Any:
    """The reply stream a streaming method returned: an async generator (usually), or
    an awaitable of an async or plain iterable."""
    if inspect.isawaitable(result):
        result = await result
    if hasattr(result, "__aiter__"):
        return result
    if hasattr(result, "__iter__") and not isinstance(result, (bytes, bytearray, memoryview, str, dict)):
        return as_async_iterator(result)
    raise InternalError(f"{method} answers with a stream, but its implementation returned {type(result).__name__}")


def _encoded_replies(method: str, replies: Any, output_type: Type,
                     requests: Optional[AsyncIterator[Any]] = None) -> AsyncIterator[Payload]:
    """The wire messages of a typed reply stream: a reply that does not fit its type
    ends the stream with ``internal``. Closing it closes the method's generator (and
    the typed view of its requests)."""
    return _encoded(replies.__aiter__(), output_type,
                    lambda i, e: InternalError(
                        f"{method} returned reply #{i}, which does not fit its type: {e}"),
                    requests)


def serve_server_stream(provider: Any, method: str, impl: Callable[[Any, CallContext], Any],
                        input_type: Type, output_type: Type, *, summary: str, input_hint: str,
                        output_hint: str, idempotent: bool) -> None:
    """Adds a typed server-stream method to ``provider``: ``impl(request, ctx)`` is an
    async generator of replies (or returns an async or plain iterable of them). A
    request that does not fit its type is answered with ``invalid_input``; a reply that
    does not fit ends the stream with ``internal`` (after the replies before it); an
    exception the method raises ends it with that error."""

    async def handler(call: IncomingCall) -> AsyncIterable[Payload]:
        request = _decode_request(method, Payload(call.payload, call.content_type), input_type)
        return _encoded_replies(method, await _replies_of(method, impl(request, call.context)), output_type)

    provider.add_server_stream(method, handler, summary=summary, input_hint=input_hint,
                               output_hint=output_hint, idempotent=idempotent)


def serve_client_stream(provider: Any, method: str, impl: Callable[[AsyncIterator[Any], CallContext], Awaitable[Any]],
                        input_type: Type, output_type: Type, *, summary: str, input_hint: str,
                        output_hint: str, idempotent: bool) -> None:
    """Adds a typed client-stream method to ``provider``: ``impl(requests, ctx)`` reads
    the decoded requests (``async for``; one that does not fit raises
    :class:`polycall.InvalidInputError` there) and returns the one reply (``internal``
    when it does not fit its type)."""

    async def handler(call: IncomingCall) -> Payload:
        assert call.requests is not None, "the provider hands client-stream methods a request stream"
        requests = _decoded_requests(method, call.requests, input_type)
        try:
            result = await impl(requests, call.context)
        finally:
            await _aclose(requests)
        try:
            return encode(result, output_type)
        except ConversionError as e:
            raise InternalError(f"{method} returned a reply that does not fit its type: {e}") from None

    provider.add_client_stream(method, handler, summary=summary, input_hint=input_hint,
                               output_hint=output_hint, idempotent=idempotent)


def serve_bidi_stream(provider: Any, method: str, impl: Callable[[AsyncIterator[Any], CallContext], Any],
                      input_type: Type, output_type: Type, *, summary: str, input_hint: str,
                      output_hint: str, idempotent: bool) -> None:
    """Adds a typed bidirectional method to ``provider``: ``impl(requests, ctx)`` reads
    the decoded requests as for :func:`serve_client_stream` and yields the replies as
    for :func:`serve_server_stream`."""

    async def handler(call: IncomingCall) -> AsyncIterable[Payload]:
        assert call.requests is not None, "the provider hands bidi methods a request stream"
        requests = _decoded_requests(method, call.requests, input_type)
        try:
            replies = await _replies_of(method, impl(requests, call.context))
        except BaseException:
            await _aclose(requests)
            raise
        return _encoded_replies(method, replies, output_type, requests)

    provider.add_bidi_stream(method, handler, summary=summary, input_hint=input_hint,
                             output_hint=output_hint, idempotent=idempotent)


#: The name ``polycall bindgen`` gives :func:`serve_bidi_stream` (the method kind ``bidi``).
serve_bidi = serve_bidi_stream
