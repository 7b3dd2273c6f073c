"""EFI zboot: a PE application that carries a compressed kernel Image.

Layout (drivers/firmware/efi/libstub/zboot-header.S):

    0x00 u32 MZ_MAGIC      0x04 char[4] "zimg"
    0x08 u32 payload offset    0x0c u32 payload size
    0x10 u32 reserved[2]   0x18 char[] compression type, NUL-terminated
    0x38 u32 LINUX_PE_MAGIC    0x3c u32 PE header offset

The payload offset and size are signed in the header (they are differences of
link-time symbols), so negative values are errors.  The decompressed size is
the little-endian u32 in the last four bytes of the payload region; gzip's
ISIZE is already that (Makefile.zboot sets ZBOOT_SIZE_LEN to 0 for gzip),
every other compressor has those four bytes appended after the size the
header counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError
from ..layout import Field, Layout
from . import pe
from .layer import Buffer, Format, Layer, ignoring_limits

HEADER = Layout("zboot", [
    Field("mz_magic", 0x00, "I"), Field("image_type", 0x04, "4s"),
    Field("payload_offset", 0x08, "i"), Field("payload_size", 0x0C, "i"),
    Field("compress_type", 0x18, "32s"),
])
COMPRESSIONS = {"gzip": 0, "lz4": 4, "lzma": 4, "lzo": 4, "xzkern": 4, "zstd22": 4}


@dataclass(frozen=True)
class Zboot(Layer):
    FORMAT = "zboot"
    compression: str = ""
    payload_offset: int = 0
    payload_size: int = 0
    decompressed_size: int = 0
    machine: int = 0
    signature: bool = False

    def inner(self) -> Buffer:
        return memoryview(self.data)[self.payload_offset:self.payload_offset + self.payload_size]

    def inner_size(self) -> int:
        return self.decompressed_size


def probe(data: Buffer) -> bool:
    return len(data) >= 0x40 and bytes(data[:2]) == b"MZ" and bytes(data[4:8]) == b"zimg"


def parse(data: Buffer) -> Zboot:
    h = HEADER.unpack(data)
    if bytes(data[:2]) != b"MZ" or h["image_type"] != b"zimg":
        raise FormatError("zboot", "no 'zimg' image type after 'MZ'", field="image_type", offset=4)
    compression = h["compress_type"].split(b"\0", 1)[0].decode("ascii", "replace")
    if compression not in COMPRESSIONS:
        raise FormatError("zboot", f"unknown compression type {compression!r}; known: "
                          f"{', '.join(COMPRESSIONS)}", field="compress_type", offset=0x18)
    offset, size = h["payload_offset"], h["payload_size"]
    if offset < 0x40:
        raise FormatError("zboot", f"payload offset {offset} is negative or inside the header",
                          field="payload_offset", offset=0x08)
    end = offset + size + COMPRESSIONS[compression]
    if size < 4 or end > len(data):
        raise FormatError("zboot", f"payload [{offset:#x}, +{size:#x}) with its size trailer "
                          f"does not fit in the {len(data):#x}-byte image",
                          field="payload_size", offset=0x0C)
    hdr = pe.read_header(data, "zboot")
    return Zboot(arch=hdr.arch, data=data, compression=compression, payload_offset=offset,
                 payload_size=size, decompressed_size=int.from_bytes(data[end - 4:end], "little"),
                 machine=hdr.machine, signature=hdr.signed)


FORMAT = Format("zboot", probe, ignoring_limits(parse), "'MZ' at 0 and 'zimg' at 4")
