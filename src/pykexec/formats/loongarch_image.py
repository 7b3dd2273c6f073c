"""LoongArch Image (vmlinux.efi): arch/loongarch/include/asm/image.h.

    u8 dos_sig[2]; u16 padding_1[3]; u64 kernel_entry; u64 kernel_asize;
    u64 text_offset; u32 padding_2[7]; u32 pe_header;

The header has no magic of its own: it is recognised as a PE image whose COFF
Machine is IMAGE_FILE_MACHINE_LOONGARCH64, as kexec-tools' ``pei`` probe does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError
from ..layout import Field, Layout
from . import pe
from .kernel_image import KernelImage
from .layer import Buffer, Format, ignoring_limits

IMAGE_FILE_MACHINE_LOONGARCH64 = 0x6264
HEADER = Layout("loongarch-image", [
    Field("kernel_entry", 0x08, "Q"), Field("kernel_asize", 0x10, "Q"),
    Field("text_offset", 0x18, "Q"), Field("pe_header", 0x3C, "I"),
])


@dataclass(frozen=True)
class LoongarchImage(KernelImage):
    FORMAT = "loongarch-image"
    kernel_entry: int = 0


def probe(data: Buffer) -> bool:
    if not pe.has_pe_header(data) or bytes(data[4:8]) == b"zimg":
        return False
    coff_at = pe.e_lfanew(data)
    return (coff_at + pe.COFF_HEADER.offset("Machine") + 2 <= len(data)
            and pe.COFF_HEADER.get(data, "Machine", coff_at) == IMAGE_FILE_MACHINE_LOONGARCH64)


def parse(data: Buffer) -> LoongarchImage:
    if not probe(data):
        raise FormatError("loongarch-image", "not a PE image for LoongArch64", field="Machine")
    h = HEADER.unpack(data)
    return LoongarchImage(arch="loongarch64", data=data, text_offset=h["text_offset"],
                          image_size=h["kernel_asize"], kernel_entry=h["kernel_entry"],
                          pe_header=True)


FORMAT = Format("loongarch-image", probe, ignoring_limits(parse), "a PE header with Machine LoongArch64")
