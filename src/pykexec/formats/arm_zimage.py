"""32-bit ARM zImage: recognised and named, never loaded.

Layout (arch/arm/boot/compressed/head.S, after eight instructions of NOPs;
with CONFIG_EFI_STUB the first of them spells "MZ" and 0x3c holds the PE
header's offset, so the zImage is also an EFI application)::

    0x24  u32 magic       0x016f2818 ("Magic numbers to help the loader")
    0x28  u32 start       absolute load/run zImage address (0: position independent)
    0x2c  u32 end         zImage end address
    0x30  u32 endianness  0x04030201 in the kernel's byte order
    0x34  u32 0x45454545  a further magic, then 0x38 the address of a data table (3.17+)

The words are in the kernel's byte order; the endianness flag tells which.
pykexec boots x86 and 64-bit kernels, so a zImage is reported and a loader is
told what it is.  A device tree may be appended after ``end - start`` bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError, NotLoadable
from ..layout import Field, Layout
from . import pe
from .layer import Buffer, Format, Layer, ignoring_limits

ZIMAGE_MAGIC = 0x016F2818
ENDIAN_FLAG = 0x04030201
FDT_MAGIC = b"\xd0\x0d\xfe\xed"
HEADER = Layout("arm-zimage", [Field("magic", 0x24, "I"), Field("start", 0x28, "I"),
                               Field("end", 0x2C, "I"), Field("endianness", 0x30, "I")])


@dataclass(frozen=True)
class ArmZImage(Layer):
    FORMAT = "arm-zimage"
    endianness: str = "little"
    start: int = 0
    end: int = 0
    size: int = 0
    efi_stub: bool = False
    appended_bytes: int = 0
    appended_dtb: bool = False
    truncated: bool = False

    def refusal(self) -> NotLoadable:
        return NotLoadable("arm-zimage", "this is a 32-bit ARM zImage, which pykexec does not load",
                           field="magic", offset=HEADER.offset("magic"))


def _order(data: Buffer) -> str | None:
    if len(data) < HEADER.size:
        return None
    for order in ("<", ">"):
        if struct.unpack_from(order + "I", data, HEADER.offset("magic"))[0] == ZIMAGE_MAGIC:
            return order
    return None


def probe(data: Buffer) -> bool:
    return _order(data) is not None


def parse(data: Buffer) -> ArmZImage:
    order = _order(data)
    if order is None:
        raise FormatError("arm-zimage", f"no magic {ZIMAGE_MAGIC:#010x}", field="magic",
                          offset=HEADER.offset("magic"))
    h = Layout("arm-zimage", list(HEADER.fields.values()), endian=order).unpack(data)
    size = (h["end"] - h["start"]) & 0xFFFFFFFF
    after = bytes(data[size:size + 4]) if size <= len(data) else b""
    return ArmZImage(
        arch="arm", data=data,
        endianness={"<": "little", ">": "big"}[order] if h["endianness"] == ENDIAN_FLAG else "unknown",
        start=h["start"], end=h["end"], size=size, efi_stub=pe.has_pe_header(data),
        appended_bytes=max(len(data) - size, 0), appended_dtb=after == FDT_MAGIC,
        truncated=size > len(data))


FORMAT = Format("arm-zimage", probe, ignoring_limits(parse), "magic 0x016f2818 at 0x24")
