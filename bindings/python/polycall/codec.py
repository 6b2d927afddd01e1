"""Payload codecs (raw bytes, JSON) and compression (zstd when the ``zstandard``
package is importable; without it zstd is simply not offered in HELLO)."""

from __future__ import annotations

import json as _json
import os
from typing import Any

from . import frame as F
from .errors import MalformedError, TooLargeError, UnsupportedError

try:  # optional
    if os.environ.get("POLYCALL_NO_ZSTD"):
        raise ImportError("disabled by POLYCALL_NO_ZSTD")
    import zstandard as _zstd
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None


def zstd_available() -> bool:
    """Whether zstd can be offered (``zstandard`` imports, and ``POLYCALL_NO_ZSTD`` is
    not set)."""
    return _zstd is not None


def compressions_offered() -> list[int]:
    """Compression ids this binding reads, preferred first (always ends with none)."""
    return [F.ZSTD, F.NONE] if _zstd is not None else [F.NONE]


def decompress(algorithm: int, data: bytes, limit: int) -> bytes:
    """Decompresses one message within ``limit`` bytes."""
    if algorithm == F.NONE:
        return data
    if algorithm == F.ZSTD and _zstd is not None:
        try:
            d = _zstd.ZstdDecompressor()
            out = d.decompress(data, max_output_size=limit)
        except _zstd.ZstdError as e:
            if "size" in str(e).lower() or "max" in str(e).lower():
                raise TooLargeError(f"a zstd message would exceed {limit} bytes: {e}") from None
            raise MalformedError(f"a zstd message does not decompress: {e}") from None
        if len(out) > limit:
            raise TooLargeError(f"a zstd message decompresses to {len(out)} bytes, over {limit}")
        return out
    name = F.COMPRESSIONS.get(algorithm, str(algorithm))
    raise UnsupportedError(f"compression {name} was not negotiated by this binding")


def compress(algorithm: int, data: bytes, level: int = 3) -> bytes:
    """Compresses one message with an algorithm this binding offers."""
    if algorithm == F.NONE:
        return data
    if algorithm == F.ZSTD and _zstd is not None:
        return _zstd.ZstdCompressor(level=level, write_content_size=True).compress(data)
    raise UnsupportedError(f"compression {F.COMPRESSIONS.get(algorithm, algorithm)} is not available")


def encode_json(value: Any) -> bytes:
    """JSON text of ``value`` (compact, UTF-8)."""
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def decode_json(data: bytes, what: str = "message") -> Any:
    """The JSON value of ``data``; an empty message is ``{}``."""
    if not data:
        return {}
    try:
        return _json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedError(f"{what} is not JSON: {e}") from None
