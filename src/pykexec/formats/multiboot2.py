"""Multiboot2 headers (The Multiboot2 Specification, version 2.0, section 3.1).

The header is 64-bit aligned within the first 32768 bytes of the image:
``u32 magic 0xE85250D6, u32 architecture, u32 header_length, u32 checksum``
(the four sum to zero mod 2^32), then 8-byte aligned tags
``u16 type, u16 flags, u32 size`` ending with a type-0 tag of size 8.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError
from ..layout import aligned_u32
from .layer import Buffer, Format, Layer, ignoring_limits

MAGIC = 0xE85250D6
SEARCH = 32768
ARCHITECTURES = {0: "i386", 4: "mips32"}
OPTIONAL = 1
# type: (name, field names of the u32s after the 8-byte tag header)
TAGS = {
    1: ("information_request", ()),
    2: ("address", ("header_addr", "load_addr", "load_end_addr", "bss_end_addr")),
    3: ("entry_address", ("entry_addr",)),
    4: ("console_flags", ("console_flags",)),
    5: ("framebuffer", ("width", "height", "depth")),
    6: ("module_alignment", ()),
    7: ("efi_boot_services", ()),
    8: ("entry_address_efi32", ("entry_addr",)),
    9: ("entry_address_efi64", ("entry_addr",)),
    10: ("relocatable", ("min_addr", "max_addr", "align", "preference")),
}


@dataclass(frozen=True)
class Tag:
    type: int
    name: str
    optional: bool
    size: int
    fields: dict[str, int]


@dataclass(frozen=True)
class Multiboot2Header:
    offset: int
    architecture: str
    header_length: int
    tags: tuple[Tag, ...]

    def tag(self, name: str) -> Tag | None:
        return next((t for t in self.tags if t.name == name), None)


@dataclass(frozen=True)
class Multiboot2(Layer):
    """An image recognised by its Multiboot2 header alone (not an ELF)."""

    FORMAT = "multiboot2"
    header: Multiboot2Header | None = None


def find(data: Buffer) -> Multiboot2Header | None:
    """The first valid header in the search window, parsed; None when absent."""
    for at in aligned_u32(data, MAGIC, SEARCH, 8):
        if at + 16 <= len(data):
            magic, arch, length, checksum = struct.unpack_from("<4I", data, at)
            if (magic + arch + length + checksum) & 0xFFFFFFFF == 0:
                return _parse_header(data, at, arch, length)
    return None


def _parse_header(data: Buffer, at: int, arch: int, length: int) -> Multiboot2Header:
    end = at + length
    if length < 24 or end > len(data):
        raise FormatError("multiboot2", f"header_length {length} runs outside the image",
                          field="header_length", offset=at + 8)
    tags, pos = [], at + 16
    while True:
        if pos + 8 > end:
            raise FormatError("multiboot2", "tags end without an end tag", field="tag", offset=pos)
        ttype, flags, size = struct.unpack_from("<HHI", data, pos)
        if ttype == 0:
            break
        if size < 8 or pos + size > end:
            raise FormatError("multiboot2", f"tag size {size} is invalid", field="size", offset=pos + 4)
        name, names = TAGS.get(ttype, (f"unknown_{ttype}", ()))
        count = min(len(names), (size - 8) // 4)
        values = struct.unpack_from(f"<{count}I", data, pos + 8)
        tags.append(Tag(ttype, name, bool(flags & OPTIONAL), size, dict(zip(names, values))))
        pos += (size + 7) & ~7
    return Multiboot2Header(offset=at, architecture=ARCHITECTURES.get(arch, f"unknown_{arch}"),
                            header_length=length, tags=tuple(tags))


def probe(data: Buffer) -> bool:
    try:
        return find(data) is not None
    except FormatError:
        return True  # a header is there, and parse() will say what is wrong with it


def parse(data: Buffer) -> Multiboot2:
    header = find(data)
    if header is None:
        raise FormatError("multiboot2", f"no header in the first {SEARCH} bytes", field="magic")
    return Multiboot2(arch="x86" if header.architecture == "i386" else None, data=data,
                      header=header)


FORMAT = Format("multiboot2", probe, ignoring_limits(parse), "magic 0xE85250D6 in the first 32 KiB")
