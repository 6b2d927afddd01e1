"""CRC32C (Castagnoli), table driven, pure Python.

Used to check and write the golden vectors' trailers. The binding does not offer the
CRC32C feature in HELLO (a feature is on only when both sides offer it): pure Python
would checksum every byte of an 8 MiB message far slower than the socket moves it.
"""

from __future__ import annotations


def _table() -> list[int]:
    poly = 0x82F63B78
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        out.append(c)
    return out


_TABLE = _table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """The CRC32C of ``data``, continuing from ``crc`` (0 to start)."""
    c = crc ^ 0xFFFFFFFF
    t = _TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
