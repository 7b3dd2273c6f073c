"""pykexec's purgatory: the code kexec_load jumps to, which checks every segment and enters the image.

The source sits beside this file (entry.S, sha256.c, sha256_ni.S,
purgatory.c, purgatory.h, purgatory.lds); ``purgatory.bin`` is what
``build.sh`` makes of it with Debian's gcc and binutils, and ``TOOLCHAIN``
records their versions.  docs/purgatory.md describes the build and the
layout.

The image is position independent.  pykexec copies it, fills its parameter
block (:data:`PARAMS`, declared in purgatory.h too) and loads it as one
segment; its memory size includes a 16 KiB stack.  The parameter block holds:

* ``flags``: skip checks (``kexec -i``), 32-bit entry (Multiboot), real-mode
  entry, no SHA-NI, verbose, reset (instead of halting) after refusing;
* the 8250 port for messages (0x3f8; 0 for none);
* the registers to enter with (``rsi`` = boot_params and ``rip`` for Linux;
  ``eax`` = magic, ``ebx`` = information structure and ``eip`` for Multiboot);
* the crash backup copy (source, destination, size);
* up to 16 regions, each with its own SHA-256 over the segment's bytes and the
  length of the zero padding after them (checked against zero, not hashed);
* for a real-mode entry, the segment registers, ``sp`` and ``cs:ip``
  (:class:`RealMode`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache

from ...errors import PurgatoryError
from ...layout import Field, Layout
from ...plan.common import PurgatorySize
from . import image
from .image import REGION, Region, regions_for

__all__ = ["HEADER", "PARAMS", "REGION", "Image", "Params", "RealMode", "Region", "load", "parse", "regions_for",
           "size"]

VERSION = 2
MAX_REGIONS = 16
MAGIC = b"PYKXPURG"

PG_SKIP_CHECKS = 0x01
PG_ENTRY32 = 0x02
PG_NO_SHANI = 0x04
PG_VERBOSE = 0x08
PG_RESET_ON_FAILURE = 0x10
PG_ENTRY16 = 0x20
SERIAL_COM1 = 0x3F8

HEADER = Layout("purgatory", [
    Field("jump", 0x00, "5s"),
    Field("magic", 0x08, "8s"),
    Field("version", 0x10, "I"),
    Field("header_size", 0x14, "I"),
    Field("params_offset", 0x18, "I"),
    Field("params_size", 0x1C, "I"),
    Field("image_size", 0x20, "I"),
    Field("mem_size", 0x24, "I"),
    Field("stack_end", 0x28, "I"),
    Field("sha256_entry", 0x2C, "I"),
    Field("has_shani_entry", 0x30, "I"),
    Field("refuse_entry", 0x34, "I"),
    Field("max_regions", 0x38, "I"),
])
#: struct pg_real_mode, in its order: ``ip`` before ``cs`` (a far pointer)
REAL_MODE_FIELDS = ("ip", "cs", "ds", "es", "fs", "gs", "ss", "sp")
REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")
PARAMS = Layout("pg_params", [
    Field("flags", 0x00, "I"),
    Field("serial_port", 0x04, "H"),
    Field("nr_regions", 0x06, "H"),
    *(Field(name, 0x08 + 8 * i, "Q") for i, name in enumerate(REGS)),
    Field("backup_src", 0x90, "Q"),
    Field("backup_dst", 0x98, "Q"),
    Field("backup_size", 0xA0, "Q"),
    Field("regions", 0xA8, f"{MAX_REGIONS * REGION.size}s"),
    *(Field(name, 0x4A8 + 2 * i, "H") for i, name in enumerate(REAL_MODE_FIELDS)),
])
BUILD = image.Build(name="pykexec purgatory", what="purgatory.bin", magic=MAGIC, version=VERSION, header=HEADER,
                    params=PARAMS, max_regions=MAX_REGIONS, package=__package__,
                    script="src/pykexec/boot/purgatory/build.sh")
@dataclass(frozen=True)
class RealMode:
    """A real-mode entry (boot.rst "Running the Kernel"): the purgatory jumps to ``cs:ip`` with
    these segment registers and ``sp``, after restoring the BIOS's interrupt table."""

    cs: int
    ip: int
    ds: int
    es: int
    fs: int
    gs: int
    ss: int
    sp: int

    @classmethod
    def linux(cls, setup: int, heap_end: int) -> "RealMode":
        """Linux's real-mode setup code at ``setup`` (16-byte aligned, below 1 MiB): cs = seg + 0x20,
        ip = 0, every other segment seg, sp = the end of its heap."""
        seg = setup >> 4
        return cls(cs=seg + 0x20, ip=0, ds=seg, es=seg, fs=seg, gs=seg, ss=seg, sp=heap_end)


@dataclass(frozen=True)
class Params:
    """What the purgatory does: check ``regions``, copy the backup, enter with ``regs``."""

    regs: dict[str, int] = field(default_factory=dict)
    regions: tuple[Region, ...] = ()
    entry32: bool = False
    real_mode: RealMode | None = None
    skip_checks: bool = False
    no_shani: bool = False
    verbose: bool = False
    reset_on_failure: bool = False
    serial_port: int = SERIAL_COM1
    backup_src: int = 0
    backup_dst: int = 0
    backup_size: int = 0

    @property
    def flags(self) -> int:
        return ((PG_SKIP_CHECKS if self.skip_checks else 0) | (PG_ENTRY32 if self.entry32 else 0)
                | (PG_NO_SHANI if self.no_shani else 0) | (PG_VERBOSE if self.verbose else 0)
                | (PG_RESET_ON_FAILURE if self.reset_on_failure else 0)
                | (PG_ENTRY16 if self.real_mode is not None else 0))


class Image(image.Image):
    """The built x86_64 purgatory and its header."""

    def patched(self, params: Params) -> bytes:
        """The image with its parameter block filled in."""
        unknown = set(params.regs) - set(REGS)
        if unknown:
            raise PurgatoryError(f"unknown registers {sorted(unknown)}; the purgatory sets {', '.join(REGS)}")
        if (params.entry32 or params.real_mode) and any(v >> 32 for v in params.regs.values()):
            raise PurgatoryError("a 32-bit or real-mode entry takes 32-bit register values")
        real = dataclasses.asdict(params.real_mode) if params.real_mode is not None else {}
        if any(not 0 <= v <= 0xFFFF for v in real.values()):
            raise PurgatoryError(f"a real-mode entry takes 16-bit segments and offsets: {real}")
        return self.filled({"flags": params.flags, "serial_port": params.serial_port,
                            "backup_src": params.backup_src, "backup_dst": params.backup_dst,
                            "backup_size": params.backup_size, **params.regs, **real}, params.regions)


def parse(data: bytes) -> Image:
    """Check the header of a purgatory image against what this module expects."""
    return image.parse(BUILD, data, Image)


@lru_cache(maxsize=1)
def load() -> Image:
    """The committed purgatory image (package data)."""
    return parse(image.committed(BUILD))


def size() -> PurgatorySize:
    """What the planners must find room for: the committed image's own size and entry."""
    return load().size()
