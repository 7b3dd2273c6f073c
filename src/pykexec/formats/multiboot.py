"""Multiboot (version 1) headers (The Multiboot Specification 0.6.96, section 3.1).

The header is 32-bit aligned within the first 8192 bytes:
``u32 magic 0x1BADB002, u32 flags, u32 checksum`` (summing to zero), then,
when flags bit 16 is set, ``header_addr, load_addr, load_end_addr,
bss_end_addr, entry_addr``, and when bit 2 is set ``mode_type, width,
height, depth``.

"If bit 0 in the flags word is set [...] Any bits in the low 16 bits that the
boot loader does not understand [...] it must fail" (3.1.2): bits 0-15 are
requirements.  pykexec's loader (``boot/multiboot_info.py``) implements bits 0,
1 and 2 (PAGE_ALIGN, MEMORY_INFO, VIDEO_MODE); a header that requires any
other low bit is reported with it and refused, as GRUB and u-root refuse it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError, NotLoadable
from ..layout import aligned_u32
from .layer import Buffer, Format, Layer, ignoring_limits

MAGIC = 0x1BADB002
SEARCH = 8192
FLAG_NAMES = {1 << 0: "PAGE_ALIGN", 1 << 1: "MEMORY_INFO", 1 << 2: "VIDEO_MODE",
              1 << 16: "AOUT_KLUDGE"}
REQUIRED_MASK = 0xFFFF
#: the required bits pykexec's Multiboot loader implements
IMPLEMENTED = (1 << 0) | (1 << 1) | (1 << 2)
ADDRESS_FIELDS = ("header_addr", "load_addr", "load_end_addr", "bss_end_addr", "entry_addr")
VIDEO_FIELDS = ("mode_type", "width", "height", "depth")


@dataclass(frozen=True)
class MultibootHeader:
    offset: int
    flags: int
    flag_names: tuple[str, ...]
    fields: dict[str, int]
    unsupported_flags: int = 0

    def refusal(self, layer: str = "multiboot") -> NotLoadable | None:
        """The refusal a loader must give this header (3.1.2), None when it can boot it."""
        if not self.unsupported_flags:
            return None
        return NotLoadable(layer, f"the Multiboot header requires flags {self.unsupported_flags:#x} "
                           "(bits 0-15), which pykexec does not implement, and the specification "
                           "(3.1.2) says a loader must then fail", field="flags",
                           offset=self.offset + 4)


@dataclass(frozen=True)
class Multiboot(Layer):
    """An image recognised by its Multiboot header alone (not an ELF)."""

    FORMAT = "multiboot"
    KERNEL = True
    header: MultibootHeader | None = None

    def refusal(self) -> NotLoadable | None:
        return None if self.header is None else self.header.refusal()


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
                           fields=fields, unsupported_flags=flags & REQUIRED_MASK & ~IMPLEMENTED)


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
