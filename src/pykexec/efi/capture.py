"""What the stub hands to the kernel, read out of guest memory at the hand-over.

x86_64 (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): RSI holds
the ``boot_params`` (zero page, declared in :mod:`pykexec.boot.bootparam`).
Its setup header gives the command line (``cmd_line_ptr``, high half
``ext_cmd_line_ptr``) and the initrd (``ramdisk_image``/``ramdisk_size``, high
halves ``ext_ramdisk_*``); the E820 table is ``e820_table``/``e820_entries``.

arm64 (Documentation/arch/arm64/booting.rst): X0 holds the FDT; ``/chosen``
has ``bootargs`` and ``linux,initrd-start``/``linux,initrd-end``.

The kernel is the page allocation the entry point lies in: the decompressed
kernel on x86 (its ``init_size`` region), the relocated Image on arm64 (cut to
the Image's own length, read from its PE header), or the loaded image itself
when the stub returns into it (pre-6.7 x86).

With ``--stop-at kernel-stub`` the capture happens earlier, at the entry of a
nested kernel's own EFI stub (:func:`kernel_stub_capture`, :mod:`.kernels`).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from ..boot import e820
from ..boot.bootparam import BOOT_PARAMS, E820_MAX_ENTRIES_ZEROPAGE, SIZEOF_BOOT_PARAMS, e820_entries
from ..formats import arm64_image, pe
from ..formats.bzimage import DEFAULTS, SETUP_HEADER, has_setup_header
from ..formats.layer import Layer, raw
from ..machine import fdt
from . import constants as c

E820_TYPES = {e820.E820_RAM: "RAM", e820.E820_RESERVED: "reserved", e820.E820_ACPI: "ACPI",
              e820.E820_NVS: "NVS", e820.E820_UNUSABLE: "unusable", e820.E820_PMEM: "PMEM",
              e820.E820_PRAM: "PRAM", e820.E820_SOFT_RESERVED: "soft-reserved"}
MAX_CMDLINE = 1 << 16


@dataclass(frozen=True)
class Capture:
    """The hand-over to the kernel, as captured from an emulated EFI stub.

    ``kernel`` is the memory the kernel starts in (see the module docstring);
    ``loadable`` is what ``kexec_file_load`` can take for the same boot: the
    captured Image on arm64, the bzImage whose stub ran on x86.
    """

    arch: str
    entry: int
    kernel: bytes = field(repr=False)
    kernel_base: int
    initrd: bytes | None = field(repr=False)
    cmdline: str | None
    boot_params: bytes | None = field(default=None, repr=False)
    dtb: bytes | None = field(default=None, repr=False)
    loadable: bytes | None = field(default=None, repr=False)
    report: dict = field(default_factory=dict, repr=False)

    @property
    def entry_offset(self) -> int:
        return self.entry - self.kernel_base

    def layer(self) -> "Emulated":
        """This capture as the outermost layer of a load, so that the load says the emulator ran."""
        r = self.report
        return Emulated(arch=self.arch, data=self.loadable, stopped_at=r.get("stopped_at", ""),
                        handover=r.get("handover", ""), instructions=r.get("instructions"),
                        seconds=r.get("seconds"))


@dataclass(frozen=True)
class Emulated(Layer):
    """A load whose kernel, initrd and command line the emulated EFI stub produced."""

    FORMAT = "emulator"
    data: bytes | None = raw()
    stopped_at: str = ""            # "kernel-stub" or "kernel" (the hand-over)
    handover: str = ""
    instructions: int | None = None
    seconds: float | None = None


def sha256(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _cstring(fw, addr: int, limit: int = MAX_CMDLINE) -> str:
    out = bytearray()
    while len(out) < limit:
        piece = fw.read(addr + len(out), min(256, limit - len(out)))
        nul = piece.find(b"\0")
        if nul >= 0:
            out += piece[:nul]
            break
        out += piece
    return out.decode("utf-8", "replace")


def _kernel_region(fw, pc: int) -> tuple[int, int, int | None]:
    alloc = fw.memory.allocation_containing(pc)
    if alloc is not None:
        return alloc
    for img in fw.images:
        if img.base <= pc < img.base + img.size:
            return img.base, img.base + img.size, c.LOADER_CODE
    return pc & ~(c.PAGE - 1), (pc & ~(c.PAGE - 1)) + c.PAGE, None


def x86_capture(fw, handover: dict) -> dict:
    pc = handover["pc"]
    bp_addr = handover["registers"]["rsi"]
    bp = fw.read(bp_addr, SIZEOF_BOOT_PARAMS)
    hdr = lambda name: SETUP_HEADER.get(bp, name)  # noqa: E731
    zp = lambda name: BOOT_PARAMS.get(bp, name)  # noqa: E731
    cmd_ptr = hdr("cmd_line_ptr") | zp("ext_cmd_line_ptr") << 32
    rd_addr = hdr("ramdisk_image") | zp("ext_ramdisk_image") << 32
    rd_size = hdr("ramdisk_size") | zp("ext_ramdisk_size") << 32
    cmdline_size = hdr("cmdline_size") or DEFAULTS["cmdline_size"]
    memory_map = [{"addr": addr, "size": size, "type": E820_TYPES.get(kind, kind)}
                  for addr, size, kind in e820_entries(bp, min(zp("e820_entries"), E820_MAX_ENTRIES_ZEROPAGE))]
    cmdline = _cstring(fw, cmd_ptr, cmdline_size + 1) if cmd_ptr else None
    initrd = fw.read_sparse(rd_addr, rd_size) if rd_addr and rd_size else None
    start, end, mtype = _kernel_region(fw, pc)
    kernel = fw.read_sparse(start, end - start)
    loadable = None
    source = fw.images_by_handle.get(fw.ebs_image) if fw.ebs_image else None
    if source is not None and has_setup_header(source.source):
        loadable = source.source
    return {
        "kernel": kernel, "kernel_base": start, "initrd": initrd, "cmdline": cmdline,
        "boot_params": bp, "loadable": loadable,
        "report": {
            "boot_params": {"addr": bp_addr, "cmd_line_ptr": cmd_ptr, "ramdisk_image": rd_addr,
                            "ramdisk_size": rd_size, "loadflags": hdr("loadflags"),
                            "type_of_loader": hdr("type_of_loader"),
                            "efi_loader_signature": zp("efi_loader_signature").decode("ascii", "replace"),
                            "efi_systab": zp("efi_systab") | zp("efi_systab_hi") << 32,
                            "efi_memmap": zp("efi_memmap") | zp("efi_memmap_hi") << 32,
                            "efi_memmap_size": zp("efi_memmap_size"),
                            "setup_data": hdr("setup_data"),
                            "e820": memory_map},
            "kernel_region_type": c.memory_type_name(mtype) if mtype is not None else None,
        },
    }


def arm64_capture(fw, handover: dict) -> dict:
    pc = handover["pc"]
    fdt_addr = handover["registers"]["x0"]
    head = fw.read(fdt_addr, 8) if fdt_addr else b""
    dtb = chosen = None
    total = fdt.totalsize(head)
    if total is not None:
        dtb = fw.read(fdt_addr, total)
        chosen = fdt.chosen(dtb)
    cmdline = initrd = None
    source = None
    if chosen is not None:
        cmdline = chosen.get("bootargs")
        start, end = chosen.get("linux,initrd-start"), chosen.get("linux,initrd-end")
        if start is not None and end is not None and end > start:
            initrd = fw.read_sparse(start, end - start)
            source = "/chosen linux,initrd-start/end"
    if initrd is None:
        initrd = _initrd_table(fw)
        source = "LINUX_EFI_INITRD_MEDIA configuration table" if initrd is not None else None
    start, end, mtype = _kernel_region(fw, pc)
    region = fw.read_sparse(start, end - start)
    kernel = region[:image_length(region)]
    return {
        "kernel": kernel, "kernel_base": start, "initrd": initrd, "cmdline": cmdline,
        # systemd-stub 256+ lays the kernel out itself without its PE headers; the arm64
        # stub then copies a headerless Image, which kexec_file_load cannot take
        "dtb": dtb, "loadable": kernel if arm64_image.probe(kernel) else None,
        "report": {"initrd_source": source,
                   "dtb": {"addr": fdt_addr, "size": len(dtb) if dtb else 0,
                           "chosen": {k: v for k, v in (chosen or {}).items()
                                      if isinstance(v, (int, str))}},
                   "image_header": arm64_image.probe(region),
                   "kernel_region": {"size": len(region),
                                     "type": c.memory_type_name(mtype) if mtype is not None else None}},
    }


def kernel_stub_capture(fw, handover: dict) -> dict:
    """``--stop-at kernel-stub``: what the stub was about to hand the kernel's own EFI stub.

    The kernel is the nested PE image itself (the bytes LoadImage was given,
    or the section the stub laid out); the command line is the LoadOptions of
    the image handle it was started with; the initrd is what the
    LINUX_EFI_INITRD_MEDIA LoadFile2 served (see :mod:`.services`).
    """
    stub = handover["kernel_stub"]
    kernel = stub["kernel"]
    return {
        "kernel": kernel.data, "kernel_base": stub["base"], "initrd": stub["initrd"],
        "cmdline": stub["cmdline"], "loadable": kernel.loadable,
        "report": {"kernel_stub": {"origin": kernel.origin, "layers": list(kernel.layers),
                                   "entry_rva": kernel.entry, "size_of_image": kernel.size_of_image,
                                   "image_handle": stub["image_handle"]},
                   "initrd_source": stub["initrd_source"]},
    }


def _initrd_table(fw) -> bytes | None:
    """The LINUX_EFI_INITRD_MEDIA configuration table: ``struct { u64 base, size; }``.

    Since v5.8 the arm64 stub passes the initrd it loaded through LoadFile2 this
    way rather than in ``/chosen``; the kernel reads it from the EFI system table.
    """
    for guid, table in fw.config_tables:
        if guid == c.LINUX_EFI_INITRD_MEDIA and table:
            base, size = struct.unpack("<QQ", fw.read(table, 16))
            return fw.read_sparse(base, size) if size else None
    return None


def image_length(region: bytes) -> int:
    """An arm64 Image's file length: where its PE sections' raw data ends, else image_size."""
    if not arm64_image.probe(region):
        return len(region)
    image_size = arm64_image.HEADER.get(region, "image_size") or len(region)
    sections = pe.section_headers(region)
    if sections:
        end = max(h["PointerToRawData"] + h["SizeOfRawData"] for h in sections)
        if 0 < end <= len(region):
            return end
    return min(image_size, len(region))
