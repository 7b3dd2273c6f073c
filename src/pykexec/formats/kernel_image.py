"""The header shared by the arm64, riscv and LoongArch kernel Images.

All three put a 64-byte header at the start of the Image so that one file can
be both a bootable kernel and (with "MZ" at 0 and a PE offset at 0x3c) an EFI
application.  Each architecture module declares its own layout and magic;
this module holds what they share: the common layer fields and the rule that
the bytes a loader hands on stop where the PE image ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError
from .layer import Buffer, Layer
from . import pe


@dataclass(frozen=True)
class KernelImage(Layer):
    """Fields common to arm64/riscv/LoongArch Image headers."""

    KERNEL = True

    text_offset: int = 0
    image_size: int = 0
    flags: int = 0
    pe_header: bool = False
    authenticode: bool | None = False

    @property
    def kernel_bytes(self) -> Buffer:
        """The Image without the zero fill a zboot payload or UKI section adds."""
        return pe.trim_padding(self.data)


def pe_fields(data: Buffer, layer: str) -> dict[str, bool | None]:
    """``pe_header`` and ``authenticode`` (a certificate table: a signed EFI stub, as Debian signs
    its arm64 Images) for an Image's layer; ``authenticode`` None where the PE headers cannot be
    read (a truncated Image: its own header still is, and a loader needs no more)."""
    if not pe.has_pe_header(data):
        return {"pe_header": False, "authenticode": False}
    try:
        return {"pe_header": True, "authenticode": pe.read_header(data, layer).signed}
    except FormatError:
        return {"pe_header": True, "authenticode": None}
