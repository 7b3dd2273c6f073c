"""RISC-V Image: the header of Documentation/arch/riscv/boot-image-header.rst.

    u32 code0; u32 code1; u64 text_offset; u64 image_size; u64 flags;
    u32 version; u32 res1; u64 res2; u64 magic = "RISCV\\0\\0\\0" (deprecated);
    u32 magic2 = "RSC\\x05"; u32 res3 (PE header offset);

flags bit 0 is the kernel endianness; version is major << 16 | minor.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError
from ..layout import Field, Layout
from .kernel_image import KernelImage, pe_fields
from .layer import Buffer, Format, ignoring_limits

RISCV_IMAGE_MAGIC = b"RISCV\0\0\0"
RISCV_IMAGE_MAGIC2 = 0x05435352  # "RSC\x05"
HEADER = Layout("riscv-image", [
    Field("code0", 0x00, "I"), Field("code1", 0x04, "I"),
    Field("text_offset", 0x08, "Q"), Field("image_size", 0x10, "Q"),
    Field("flags", 0x18, "Q"), Field("version", 0x20, "I"), Field("res1", 0x24, "I"),
    Field("res2", 0x28, "Q"), Field("magic", 0x30, "8s"), Field("magic2", 0x38, "I"),
    Field("res3", 0x3C, "I"),
])


@dataclass(frozen=True)
class RiscvImage(KernelImage):
    FORMAT = "riscv-image"
    version: str = "0.0"
    endianness: str = "little"


def probe(data: Buffer) -> bool:
    return len(data) >= HEADER.size and (HEADER.get(data, "magic2") == RISCV_IMAGE_MAGIC2
                                         or HEADER.get(data, "magic") == RISCV_IMAGE_MAGIC)


def parse(data: Buffer) -> RiscvImage:
    if not probe(data):
        raise FormatError("riscv-image", "no RSC\\x05 magic", field="magic2", offset=0x38)
    h = HEADER.unpack(data)
    return RiscvImage(
        arch="riscv64", data=data, text_offset=h["text_offset"], image_size=h["image_size"],
        flags=h["flags"], version=f"{h['version'] >> 16}.{h['version'] & 0xFFFF}",
        endianness="big" if h["flags"] & 1 else "little", **pe_fields(data, "riscv-image"))


FORMAT = Format("riscv-image", probe, ignoring_limits(parse), "RSC\\x05 magic at 0x38")
