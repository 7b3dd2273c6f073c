"""arm64 Image: the header of Documentation/arch/arm64/booting.rst.

    u32 code0; u32 code1; u64 text_offset; u64 image_size; u64 flags;
    u64 res2; u64 res3; u64 res4; u32 magic = 0x644d5241 ("ARM\\x64"); u32 res5;

flags: bit 0 kernel endianness (1 = big), bits 1-2 page size (0 unspecified,
1 = 4K, 2 = 16K, 3 = 64K), bit 3 physical placement (0 = 2 MiB aligned base as
close as possible to the start of DRAM, 1 = anywhere).  image_size 0 means a
pre-3.17 kernel whose size is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError
from ..layout import Field, Layout
from .kernel_image import KernelImage, pe_fields
from .layer import Buffer, Format, ignoring_limits

ARM64_IMAGE_MAGIC = 0x644D5241
HEADER = Layout("arm64-image", [
    Field("code0", 0x00, "I"), Field("code1", 0x04, "I"),
    Field("text_offset", 0x08, "Q"), Field("image_size", 0x10, "Q"),
    Field("flags", 0x18, "Q"), Field("magic", 0x38, "I"), Field("res5", 0x3C, "I"),
])
PAGE_SIZES = {0: None, 1: 4096, 2: 16384, 3: 65536}


@dataclass(frozen=True)
class Arm64Image(KernelImage):
    FORMAT = "arm64-image"
    endianness: str = "little"
    page_size: int | None = None
    placement: str = "2MiB-aligned-near-dram-base"


def probe(data: Buffer) -> bool:
    return len(data) >= HEADER.size and HEADER.get(data, "magic") == ARM64_IMAGE_MAGIC


def parse(data: Buffer) -> Arm64Image:
    if not probe(data):
        raise FormatError("arm64-image", "no ARM\\x64 magic", field="magic", offset=0x38)
    h = HEADER.unpack(data)
    flags = h["flags"]
    return Arm64Image(
        arch="arm64", data=data, text_offset=h["text_offset"], image_size=h["image_size"],
        flags=flags, endianness="big" if flags & 1 else "little",
        page_size=PAGE_SIZES[(flags >> 1) & 3],
        placement="anywhere" if flags & 8 else "2MiB-aligned-near-dram-base",
        **pe_fields(data, "arm64-image"))


FORMAT = Format("arm64-image", probe, ignoring_limits(parse), "ARM\\x64 magic at 0x38")
