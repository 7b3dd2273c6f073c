"""What the stub hands to the kernel, read out of guest memory at the hand-over.

x86_64 (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): RSI holds
the ``boot_params`` (zero page).  Its setup header gives the command line
(``cmd_line_ptr`` at 0x228, high half ``ext_cmd_line_ptr`` at 0x0c8) and the
initrd (``ramdisk_image``/``ramdisk_size`` at 0x218/0x21c, high halves at
0x0c0/0x0c4); the E820 table is at 0x2d0 with its count at 0x1e8.

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

from ..formats.layer import Layer, raw
from . import constants as c
from . import fdt

E820_TYPES = {1: "RAM", 2: "reserved", 3: "ACPI", 4: "NVS", 5: "unusable", 7: "PMEM",
              12: "PRAM", 0xF0000000 + 0: "soft-reserved"}
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
    bp = fw.read(bp_addr, 4096)
    u32 = lambda off: struct.unpack_from("<I", bp, off)[0]  # noqa: E731
    cmd_ptr = u32(0x228) | u32(0x0C8) << 32
    rd_addr = u32(0x218) | u32(0x0C0) << 32
    rd_size = u32(0x21C) | u32(0x0C4) << 32
    cmdline_size = u32(0x238) or 255
    entries = bp[0x1E8]
    e820 = []
    for i in range(min(entries, 128)):
        addr, size, kind = struct.unpack_from("<QQI", bp, 0x2D0 + 20 * i)
        e820.append({"addr": addr, "size": size, "type": E820_TYPES.get(kind, kind)})
    cmdline = _cstring(fw, cmd_ptr, cmdline_size + 1) if cmd_ptr else None
    initrd = fw.read_sparse(rd_addr, rd_size) if rd_addr and rd_size else None
    start, end, mtype = _kernel_region(fw, pc)
    kernel = fw.read_sparse(start, end - start)
    efi_info = struct.unpack_from("<4sIIIIIII", bp, 0x1C0)
    loadable = None
    source = fw.images_by_handle.get(fw.ebs_image) if fw.ebs_image else None
    if source is not None and source.source[0x202:0x206] == b"HdrS":
        loadable = source.source
    return {
        "kernel": kernel, "kernel_base": start, "initrd": initrd, "cmdline": cmdline,
        "boot_params": bp, "loadable": loadable,
        "report": {
            "boot_params": {"addr": bp_addr, "cmd_line_ptr": cmd_ptr, "ramdisk_image": rd_addr,
                            "ramdisk_size": rd_size, "loadflags": bp[0x211],
                            "type_of_loader": bp[0x210],
                            "efi_loader_signature": efi_info[0].decode("ascii", "replace"),
                            "efi_systab": efi_info[1] | efi_info[6] << 32,
                            "efi_memmap": efi_info[4] | efi_info[7] << 32,
                            "efi_memmap_size": efi_info[5],
                            "setup_data": struct.unpack_from("<Q", bp, 0x250)[0],
                            "e820": e820},
            "kernel_region_type": c.memory_type_name(mtype) if mtype is not None else None,
        },
    }


def arm64_capture(fw, handover: dict) -> dict:
    pc = handover["pc"]
    fdt_addr = handover["registers"]["x0"]
    head = fw.read(fdt_addr, 8) if fdt_addr else b""
    dtb = chosen = None
    if len(head) == 8 and struct.unpack(">I", head[:4])[0] == fdt.FDT_MAGIC:
        total = struct.unpack(">I", head[4:8])[0]
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
        "dtb": dtb, "loadable": kernel if kernel[0x38:0x3C] == b"ARM\x64" else None,
        "report": {"initrd_source": source,
                   "dtb": {"addr": fdt_addr, "size": len(dtb) if dtb else 0,
                           "chosen": {k: v for k, v in (chosen or {}).items()
                                      if isinstance(v, (int, str))}},
                   "image_header": region[0x38:0x3C] == b"ARM\x64",
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
    if len(region) < 0x40 or region[0x38:0x3C] != b"ARM\x64":
        return len(region)
    image_size = struct.unpack_from("<Q", region, 0x10)[0] or len(region)
    if region[:2] == b"MZ":
        pe = struct.unpack_from("<I", region, 0x3C)[0]
        if region[pe:pe + 4] == b"PE\0\0":
            nsec = struct.unpack_from("<H", region, pe + 6)[0]
            opt = struct.unpack_from("<H", region, pe + 20)[0]
            table = pe + 24 + opt
            ends = [sum(struct.unpack_from("<II", region, table + 40 * i + 16)[::-1])
                    for i in range(nsec)]
            if ends and 0 < max(ends) <= len(region):
                return max(ends)
    return min(image_size, len(region))
