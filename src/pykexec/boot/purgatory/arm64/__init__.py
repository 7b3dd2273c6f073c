"""pykexec's arm64 purgatory: the code kexec_load jumps to on arm64, which checks every segment
and enters the kernel.

The source sits beside this file (entry.S, sha256.c, sha256_ce.S, purgatory.c,
purgatory.h, purgatory.lds); ``purgatory.bin`` is what ``build.sh`` makes of it
with Debian's aarch64-linux-gnu gcc and binutils, and ``TOOLCHAIN`` records their
versions.  docs/purgatory.md describes the build and the layout.

The image is position independent.  pykexec copies it, fills its parameter block
(:data:`PARAMS`, declared in purgatory.h too) and loads it as one segment; its
memory size includes a 16 KiB stack.  The parameter block holds:

* ``flags``: skip checks (``kexec -i``), no SHA-2 instructions, verbose (the same
  bits as the x86_64 purgatory's);
* the console UART: its type (none, PL011, 8250), register shift and access width,
  and MMIO base (from the DTB's ``/chosen/stdout-path``);
* the kernel's entry address and ``x0`` (the DTB's address); x1-x3 are zero;
* up to 16 regions, each with its own SHA-256 over the segment's bytes and the
  length of the zero padding after them (:class:`pykexec.boot.purgatory.Region`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from ....errors import PurgatoryError
from ....layout import Field, Layout
from .. import image
from ..image import REGION, Region, regions_for

__all__ = ["HEADER", "PARAMS", "REGION", "Image", "Params", "Region", "load", "parse", "regions_for"]

VERSION = 1
MAX_REGIONS = 16
MAGIC = b"PYKXPA64"

PG_SKIP_CHECKS = 0x01
PG_NO_SHA2 = 0x04
PG_VERBOSE = 0x08

UART_NONE = 0
UART_PL011 = 1
UART_8250 = 2
UART_TYPES = {"none": UART_NONE, "pl011": UART_PL011, "8250": UART_8250}

HEADER = Layout("arm64 purgatory", [
    Field("jump", 0x00, "I"),
    Field("magic", 0x08, "8s"),
    Field("version", 0x10, "I"),
    Field("header_size", 0x14, "I"),
    Field("params_offset", 0x18, "I"),
    Field("params_size", 0x1C, "I"),
    Field("image_size", 0x20, "I"),
    Field("mem_size", 0x24, "I"),
    Field("stack_end", 0x28, "I"),
    Field("sha256_entry", 0x2C, "I"),
    Field("has_sha2_entry", 0x30, "I"),
    Field("refuse_entry", 0x34, "I"),
    Field("max_regions", 0x38, "I"),
])
PARAMS = Layout("pg_params (arm64)", [
    Field("flags", 0x00, "I"),
    Field("nr_regions", 0x04, "I"),
    Field("uart_base", 0x08, "Q"),
    Field("uart_type", 0x10, "B"),
    Field("uart_shift", 0x11, "B"),
    Field("uart_width", 0x12, "B"),
    Field("entry", 0x18, "Q"),
    Field("x0", 0x20, "Q"),
    Field("regions", 0x28, f"{MAX_REGIONS * REGION.size}s"),
])
BUILD = image.Build(name="pykexec arm64 purgatory", what="the arm64 purgatory.bin", magic=MAGIC, version=VERSION,
                    header=HEADER, params=PARAMS, max_regions=MAX_REGIONS, package=__package__,
                    script="src/pykexec/boot/purgatory/arm64/build.sh")


@dataclass(frozen=True)
class Uart:
    """The console the purgatory writes to: ``type`` is ``"none"``, ``"pl011"`` or ``"8250"``;
    ``shift`` is the 8250's register stride (``reg-shift``), ``width`` the bytes per register
    access (``reg-io-width``: 1, 2 or 4)."""

    type: str = "none"
    base: int = 0
    shift: int = 0
    width: int = 1

    @classmethod
    def pl011(cls, base: int, *, width: int = 4) -> "Uart":
        return cls("pl011", base, 0, width)

    @classmethod
    def ns8250(cls, base: int, *, shift: int = 0, width: int = 1) -> "Uart":
        return cls("8250", base, shift, width)


@dataclass(frozen=True)
class Params:
    """What the purgatory does: check ``regions``, then enter ``entry`` with x0 = ``x0``."""

    entry: int = 0
    x0: int = 0
    regions: tuple[Region, ...] = ()
    uart: Uart = field(default_factory=Uart)
    skip_checks: bool = False
    no_sha2: bool = False
    verbose: bool = False

    @property
    def flags(self) -> int:
        return ((PG_SKIP_CHECKS if self.skip_checks else 0) | (PG_NO_SHA2 if self.no_sha2 else 0)
                | (PG_VERBOSE if self.verbose else 0))


class Image(image.Image):
    """The built arm64 purgatory and its header."""

    def patched(self, params: Params) -> bytes:
        """The image with its parameter block filled in."""
        uart = params.uart
        if uart.type not in UART_TYPES:
            raise PurgatoryError(f"unknown UART type {uart.type!r}; the arm64 purgatory drives "
                                 f"{', '.join(UART_TYPES)}")
        if uart.type != "none" and (uart.width not in (1, 2, 4) or not 0 <= uart.shift <= 4 or not uart.base):
            raise PurgatoryError(f"UART {uart.type} at {uart.base:#x} with shift {uart.shift} and width "
                                 f"{uart.width}: the base must be non-zero, the shift 0-4, the width 1, 2 or 4")
        for name, value in (("entry", params.entry), ("x0", params.x0), ("UART base", uart.base)):
            if not 0 <= value < 1 << 64:
                raise PurgatoryError(f"the arm64 purgatory's {name} {value:#x} is not a 64-bit address")
        return self.filled({"flags": params.flags, "entry": params.entry, "x0": params.x0,
                            "uart_type": UART_TYPES[uart.type], "uart_base": uart.base if uart.type != "none" else 0,
                            "uart_shift": uart.shift, "uart_width": uart.width}, params.regions)


def parse(data: bytes) -> Image:
    """Check the header of an arm64 purgatory image against what this module expects."""
    return image.parse(BUILD, data, Image)


@lru_cache(maxsize=1)
def load() -> Image:
    """The committed arm64 purgatory image (package data)."""
    return parse(image.committed(BUILD))
