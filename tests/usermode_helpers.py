"""Test-side views of what user mode builds: a corrupted copy of a load, and a zero page read back.

Neither is needed to load a kernel, so they live here rather than in
:mod:`pykexec.boot`.  :func:`corrupted` imports what it needs inside itself:
the VM scenarios send its source into the guest, where ``tests`` is not
importable.
"""

from __future__ import annotations

from pykexec.boot.bootparam import BOOT_PARAMS, e820_entries
from pykexec.boot.e820 import E820Entry
from pykexec.formats.bzimage import SETUP_HEADER


def corrupted(load, role: str, offset: int = 0):
    """``load`` (a :class:`pykexec.boot.usermode.UserLoad`) with one byte of segment ``role``
    flipped after the purgatory's digests were taken: what the purgatory must refuse."""
    import dataclasses
    segments = list(load.plan.segments)
    index = next((i for i, s in enumerate(segments) if s.role == role), None)
    if index is None or role == "purgatory":
        raise KeyError(f"no {role} segment to corrupt")
    buf = bytearray(segments[index].buf)
    if not buf:
        raise KeyError(f"the {role} segment has no bytes to corrupt")
    buf[offset % len(buf)] ^= 0xFF
    segments[index] = dataclasses.replace(segments[index], buffer=bytes(buf), bufsz=len(buf))
    return dataclasses.replace(load, plan=dataclasses.replace(load.plan, segments=tuple(segments)))


def read_zero_page(data: bytes) -> dict[str, object]:
    """The fields of a zero page pykexec writes, by their bootparam.h names."""
    out: dict[str, object] = {name: BOOT_PARAMS.get(data, name) for name in (
        "acpi_rsdp_addr", "ext_ramdisk_image", "ext_ramdisk_size", "ext_cmd_line_ptr", "efi_systab",
        "efi_memmap", "efi_memmap_hi", "efi_memmap_size", "efi_memdesc_size", "e820_entries", "sentinel")}
    for name in ("type_of_loader", "loadflags", "cmd_line_ptr", "ramdisk_image", "ramdisk_size", "setup_data",
                 "version", "hardware_subarch"):
        out[name] = SETUP_HEADER.get(data, name)
    out["e820"] = [E820Entry(*entry) for entry in e820_entries(data, int(out["e820_entries"]))]
    return out
