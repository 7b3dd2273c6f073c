"""The header shared by the arm64, riscv and LoongArch kernel Images.

All three put a 64-byte header at the start of the Image so that one file can
be both a bootable kernel and (with "MZ" at 0 and a PE offset at 0x3c) an EFI
application.  Each architecture module declares its own layout and magic;
this module holds what they share: the common layer fields and the rule that
the bytes a loader hands on stop where the PE image ends.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def kernel_bytes(self) -> Buffer:
        """The Image without the zero fill a zboot payload or UKI section adds."""
        return pe.trim_padding(self.data)
