"""Declarative on-disk layouts: each header is declared once, as named fields at offsets.

A :class:`Layout` reads little- or big-endian integers and byte strings out of a
buffer and turns a short buffer into a :class:`FormatError` that names the
layer, the field and its offset, instead of a ``struct.error``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import FormatError


@dataclass(frozen=True)
class Field:
    """One header field: its specification name, offset and ``struct`` code."""

    name: str
    offset: int
    code: str

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.code)


class Layout:
    """A named header layout, unpacked relative to a base offset."""

    def __init__(self, layer: str, fields: list[Field], *, endian: str = "<") -> None:
        self.layer = layer
        self.endian = endian
        self.fields = {f.name: f for f in fields}
        self.size = max(f.offset + f.size for f in fields)

    def offset(self, name: str) -> int:
        return self.fields[name].offset

    def get(self, data: bytes | memoryview, name: str, base: int = 0):
        """Read one field, or raise naming the field and where it should be."""
        f = self.fields[name]
        at = base + f.offset
        if at < 0 or at + f.size > len(data):
            raise FormatError(self.layer, f"truncated: needs {f.size} bytes, "
                              f"image is {len(data)} bytes", field=f.name, offset=at)
        value = struct.unpack_from(self.endian + f.code, data, at)[0]
        return value

    def unpack(self, data: bytes | memoryview, base: int = 0, *,
               upto: int | None = None) -> dict[str, object]:
        """Read every field that ends before ``upto`` (relative), all by default."""
        limit = self.size if upto is None else upto
        return {name: self.get(data, name, base)
                for name, f in self.fields.items() if f.offset + f.size <= limit}


def aligned_u32(data: bytes | memoryview, value: int, window: int, align: int):
    """Offsets within the first ``window`` bytes where ``value`` is stored as an aligned le32."""
    head = bytes(data[:window])
    needle = struct.pack("<I", value)
    at = head.find(needle)
    while at >= 0:
        if at % align == 0:
            yield at
        at = head.find(needle, at + 1)
