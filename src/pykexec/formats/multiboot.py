"""Multiboot (version 1) headers (The Multiboot Specification 0.6.96, section 3.1).

The header is 32-bit aligned within the first 8192 bytes:
``u32 magic 0x1BADB002, u32 flags, u32 checksum`` (summing to zero), then,
when flags bit 16 is set, ``header_addr, load_addr, load_end_addr,
bss_end_addr, entry_addr``, and when bit 2 is set ``mode_type, width,
height, depth``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError
from ..layout import aligned_u32
from .layer import Buffer, Format, Layer, ignoring_limits

MAGIC = 0x1BADB002
SEARCH = 8192
FLAG_NAMES = {1 << 0: "PAGE_ALIGN", 1 << 1: "MEMORY_INFO", 1 << 2: "VIDEO_MODE",
              1 << 16: "AOUT_KLUDGE"}
ADDRESS_FIELDS = ("header_addr", "load_addr", "load_end_addr", "bss_end_addr", "entry_addr")
VIDEO_FIELDS = ("mode_type", "width", "height", "depth")


@dataclass(frozen=True)
class MultibootHeader:
    offset: int
    flags: int
    flag_names: tuple[str, ...]
    fields: dict[str, int]


@dataclass(frozen=True)
class Multiboot(Layer):
    """An image recognised by its Multiboot header alone (not an ELF)."""

    FORMAT = "multiboot"
    header: MultibootHeader | None = None


def find(data: Buffer) -> MultibootHeader | None:
    for at in aligned_u32(data, MAGIC, SEARCH, 4):
        if at + 12 <= len(data):
            magic, flags, checksum = struct.unpack_from("<3I", data, at)
            if (magic + flags + checksum) & 0xFFFFFFFF == 0:
                return _parse_header(data, at, flags)
    return None


def _parse_header(data: Buffer, at: int, flags: int) -> MultibootHeader:
    fields: dict[str, int] = {}
    for bit, names, start in ((1 << 16, ADDRESS_FIELDS, 12), (1 << 2, VIDEO_FIELDS, 32)):
        if flags & bit:
            if at + start + 4 * len(names) > len(data):
                raise FormatError("multiboot", "header fields run past the end of the image",
                                  field=names[0], offset=at + start)
            fields.update(zip(names, struct.unpack_from(f"<{len(names)}I", data, at + start)))
    return MultibootHeader(offset=at, flags=flags,
                           flag_names=tuple(n for b, n in FLAG_NAMES.items() if flags & b),
                           fields=fields)


def probe(data: Buffer) -> bool:
    try:
        return find(data) is not None
    except FormatError:
        return True  # a header is there, and parse() will say what is wrong with it


def parse(data: Buffer) -> Multiboot:
    header = find(data)
    if header is None:
        raise FormatError("multiboot", f"no header in the first {SEARCH} bytes", field="magic")
    return Multiboot(arch="x86", data=data, header=header)


FORMAT = Format("multiboot", probe, ignoring_limits(parse), "magic 0x1BADB002 in the first 8 KiB")
