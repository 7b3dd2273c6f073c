"""The x86 zero page (struct boot_params) and its setup_data chain, for a kexec_load of Linux.

Boot protocol: Documentation/arch/x86/boot.rst.  What goes in, after
kexec-tools (kexec/arch/x86_64/kexec-bzImage64.c ``do_bzImage64_load``,
kexec/arch/i386/x86-linux-setup.c) and the kernel's own kexec_file loader
(arch/x86/kernel/kexec-bzimage64.c ``setup_boot_parameters``):

* a zeroed page with only the setup header copied from the image, from 0x1f1
  to its end at ``0x202 + image[0x201]`` ("only copy setup_header"); a vmlinux
  ELF has none, so :func:`synthetic_header` writes the fields a 64-bit entry
  reads;
* ``type_of_loader`` 0xD0 (LOADER_TYPE_KEXEC << 4, what both write),
  ``loadflags`` 0;
* ``cmd_line_ptr``/``ramdisk_image``/``ramdisk_size`` with their high halves in
  ``ext_*`` (protocol 2.12+), ``setup_data`` (2.09+), ``acpi_rsdp_addr``
  (2.14+), ``hardware_subarch`` (2.07+) from the running kernel;
* the e820 map: 128 entries in the page, the rest in one SETUP_E820_EXT node
  (arch/x86/kernel/e820.c ``e820__memory_setup_extended``);
* from the running boot_params: screen_info, EDD, secure_boot; with EFI (the
  image has XLF_EFI_KEXEC and the running kernel was booted by EFI):
  ``efi_info`` pointing at a copy of the runtime map and a SETUP_EFI node
  (struct efi_setup_data: fw_vendor, runtime, config tables, SMBIOS);
* SETUP_RNG_SEED: 32 bytes from getrandom(), which the next kernel credits
  and then wipes (arch/x86/kernel/setup.c ``parse_setup_data``).
* ``sentinel`` stays 0, or the kernel would zero fields it thinks a careless
  loader copied (arch/x86/include/asm/bootparam_utils.h).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import FormatError
from ..formats.bzimage import (BOOT_FLAG, CAN_USE_HEAP, HDRS_MAGIC, LOADED_HIGH, SETUP_HEADER,
                               XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64, has_setup_header, header_end)
from .bootparam import (BOOT_PARAMS, CL_MAGIC_VALUE, E820_MAX_ENTRIES_ZEROPAGE, EFI_SETUP_DATA, HDR_LIMIT, HDR_OFFSET,
                        RNG_SEED_LENGTH, SETUP_DATA_HEADER, SETUP_E820_EXT, SETUP_EFI, SETUP_RNG_SEED,
                        SIZEOF_BOOT_PARAMS, TYPE_OF_LOADER_KEXEC, put)
from .e820 import E820_RAM, E820Entry
from .firmware import EfiState, Firmware

SYNTHETIC_PROTOCOL = 0x020F
COMMAND_LINE_SIZE = 2048     # x86 COMMAND_LINE_SIZE, what a vmlinux without a header takes
MiB = 1 << 20


@dataclass(frozen=True)
class SetupData:
    """One ``struct setup_data`` node: its type and payload; ``next`` is filled when chained."""

    type: int
    data: bytes

    @property
    def size(self) -> int:
        return SETUP_DATA_HEADER.size + len(self.data)

    def pack(self, next_addr: int) -> bytes:
        return SETUP_DATA_HEADER.pack(next_addr, self.type, len(self.data)) + self.data


def setup_header(image: bytes | memoryview) -> bytes:
    """The setup header bytes to copy: 0x1f1 up to ``0x202 + image[0x201]``, never past 0x290."""
    if not has_setup_header(image):
        raise FormatError("bzimage", "no 'HdrS' setup header to copy", field="header",
                          offset=SETUP_HEADER.offset("header"))
    end = min(header_end(image), HDR_LIMIT, len(image))
    return bytes(image[HDR_OFFSET:end])


def synthetic_header(*, cmdline_size: int = COMMAND_LINE_SIZE - 1) -> bytes:
    """A setup header for an image that has none (a vmlinux ELF), as kexec-tools'
    ``init_linux_parameters`` makes one: "HdrS", a protocol version, cmdline_size."""
    buf = bytearray(HDR_LIMIT)
    fields = [("boot_flag", BOOT_FLAG), ("jump", 0x6AEB), ("header", HDRS_MAGIC),
                        ("version", SYNTHETIC_PROTOCOL), ("loadflags", LOADED_HIGH),
                        ("initrd_addr_max", 0x7FFFFFFF), ("kernel_alignment", 0x200000),
                        ("relocatable_kernel", 1), ("xloadflags", XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G),
                        ("cmdline_size", cmdline_size)]
    for name, value in fields:
        put(buf, name, value, layout=SETUP_HEADER)
    return bytes(buf[HDR_OFFSET:header_end(buf)])


def real_mode_segment(image: bytes | memoryview, setup_size: int, *, base: int, span: int, heap_end: int,
                      cmdline: str, ramdisk_image: int, ramdisk_size: int, code32_start: int) -> bytes:
    """The segment a real-mode entry starts in, loaded at ``base``: the image's boot sector and setup
    code (its first ``setup_size`` bytes) with their setup header filled in as boot.rst's "Loading
    the Rest of the Kernel" says (the setup code builds the zero page itself, from the BIOS), heap
    and stack up to ``span``, then the command line.

    ``loadflags`` keeps the image's bits and gains CAN_USE_HEAP with ``heap_end_ptr = heap_end - 0x200``;
    ``code32_start`` is where the protected-mode part went (kexec-tools sets it too)."""
    raw = cmdline.encode() + b"\0"
    out = bytearray(span + len(raw))
    out[:setup_size] = image[:setup_size]
    out[span:] = raw
    flags = SETUP_HEADER.get(out, "loadflags") | CAN_USE_HEAP
    for name, value in (("type_of_loader", TYPE_OF_LOADER_KEXEC), ("loadflags", flags),
                        ("heap_end_ptr", heap_end - 0x200), ("cmd_line_ptr", base + span),
                        ("ramdisk_image", ramdisk_image), ("ramdisk_size", ramdisk_size),
                        ("code32_start", code32_start)):
        put(out, name, value, layout=SETUP_HEADER)
    return bytes(out)


def e820_table(entries: Sequence[E820Entry]) -> tuple[tuple[E820Entry, ...], SetupData | None]:
    """The first 128 entries for the zero page, the rest as one SETUP_E820_EXT node."""
    head = tuple(entries[:E820_MAX_ENTRIES_ZEROPAGE])
    rest = entries[E820_MAX_ENTRIES_ZEROPAGE:]
    ext = SetupData(SETUP_E820_EXT, b"".join(e.pack() for e in rest)) if rest else None
    return head, ext


def efi_setup_data(efi: EfiState) -> SetupData:
    """SETUP_EFI: struct efi_setup_data (arch/x86/include/asm/efi.h); the second u64 is
    ``__unused`` to the kernel, kexec-tools puts the runtime services pointer there."""
    return SetupData(SETUP_EFI, EFI_SETUP_DATA.pack(efi.fw_vendor, efi.runtime, efi.config_table, efi.smbios))


def efi_runtime_map(efi: EfiState) -> bytes:
    """The runtime map the next kernel finds through efi_info.efi_memmap."""
    return b"".join(d.pack(efi.memdesc_size) for d in efi.runtime_map)


def rng_seed(getrandom: Callable[[int], bytes] = os.getrandom) -> SetupData:
    return SetupData(SETUP_RNG_SEED, getrandom(RNG_SEED_LENGTH))


def chain(nodes: Sequence[tuple[int, SetupData]]) -> list[tuple[int, bytes]]:
    """(address, bytes) of each node with ``next`` pointing at the one after it; the first
    address goes in ``hdr.setup_data``."""
    out = []
    for i, (addr, node) in enumerate(nodes):
        nxt = nodes[i + 1][0] if i + 1 < len(nodes) else 0
        out.append((addr, node.pack(nxt)))
    return out


@dataclass(frozen=True)
class BootParams:
    """Everything the zero page says, before it is packed."""

    header: bytes
    e820: tuple[E820Entry, ...] = ()
    cmd_line_ptr: int = 0
    ramdisk_image: int = 0
    ramdisk_size: int = 0
    setup_data: int = 0
    firmware: Firmware = Firmware()
    efi_memmap: tuple[int, int] | None = None    # (address, size) of the runtime map copy
    hardware_subarch: int | None = None
    code32_start: int | None = None               # the 32-bit entry: where the kernel was put
    cl_offset: int | None = None                  # before 2.02: the command line's offset from the zero page

    @property
    def protocol(self) -> int:
        return SETUP_HEADER.get(self.header, "version", base=-HDR_OFFSET)

    def pack(self) -> bytes:
        if len(self.e820) > E820_MAX_ENTRIES_ZEROPAGE:
            raise ValueError(f"{len(self.e820)} e820 entries; put those past "
                             f"{E820_MAX_ENTRIES_ZEROPAGE} in SETUP_E820_EXT (e820_table())")
        buf = bytearray(SIZEOF_BOOT_PARAMS)
        running = self.firmware.boot_params
        if running is not None:
            # What the kernel's kexec_file loader carries over from its own boot_params.
            for name in ("screen_info", "edd_mbr_sig_buffer", "eddbuf", "eddbuf_entries",
                         "edd_mbr_sig_buf_entries", "secure_boot"):
                put(buf, name, BOOT_PARAMS.get(running, name))
        else:
            # kexec-tools' defaults: an 80x25 VGA text console.
            for name, value in (("orig_video_mode", 0), ("orig_video_cols", 80), ("orig_video_lines", 25),
                                ("orig_video_isVGA", 1), ("orig_video_points", 16)):
                put(buf, name, value)
        buf[HDR_OFFSET:HDR_OFFSET + len(self.header)] = self.header
        version = self.protocol
        put(buf, "type_of_loader", TYPE_OF_LOADER_KEXEC, layout=SETUP_HEADER)
        put(buf, "loadflags", 0, layout=SETUP_HEADER)
        put(buf, "sentinel", 0)
        if self.code32_start is not None:
            # boot.rst: "the address to jump to in protected mode"; memtest86+ relocates by it.
            put(buf, "code32_start", self.code32_start, layout=SETUP_HEADER)
        if self.cl_offset is not None:
            put(buf, "cl_magic", CL_MAGIC_VALUE)
            put(buf, "cl_offset", self.cl_offset)
        self._pointers(buf, version)
        if self.firmware.acpi_rsdp and version >= 0x020E:
            put(buf, "acpi_rsdp_addr", self.firmware.acpi_rsdp)
        subarch = self.firmware.hardware_subarch if self.hardware_subarch is None else self.hardware_subarch
        if version >= 0x0207:
            put(buf, "hardware_subarch", subarch, layout=SETUP_HEADER)
        self._efi(buf)
        self._e820(buf)
        return bytes(buf)

    def _pointers(self, buf: bytearray, version: int) -> None:
        for name, ext, value, since in (("cmd_line_ptr", "ext_cmd_line_ptr", self.cmd_line_ptr, 0x0202),
                                        ("ramdisk_image", "ext_ramdisk_image", self.ramdisk_image, 0),
                                        ("ramdisk_size", "ext_ramdisk_size", self.ramdisk_size, 0)):
            if value and version < since:
                raise FormatError("bzimage", f"boot protocol {version:#06x} has no {name} "
                                  f"(needs {since:#06x})", field=name)
            if value >> 32 and version < 0x020C:
                raise FormatError("bzimage", f"{name} {value:#x} is above 4 GiB but protocol "
                                  f"{version:#06x} has no {ext} (needs 2.12)", field=ext)
            put(buf, name, value & 0xFFFFFFFF, layout=SETUP_HEADER)
            put(buf, ext, value >> 32)
        if self.setup_data:
            if version < 0x0209:
                raise FormatError("bzimage", f"boot protocol {version:#06x} has no setup_data (needs 2.09)",
                                  field="setup_data")
            put(buf, "setup_data", self.setup_data, layout=SETUP_HEADER)

    def _efi(self, buf: bytearray) -> None:
        efi = self.firmware.efi
        if efi is None or self.efi_memmap is None:
            return
        addr, size = self.efi_memmap
        put(buf, "efi_loader_signature", efi.loader_signature)
        put(buf, "efi_systab", efi.systab & 0xFFFFFFFF)
        put(buf, "efi_systab_hi", efi.systab >> 32)
        put(buf, "efi_memdesc_size", efi.memdesc_size)
        put(buf, "efi_memdesc_version", efi.memdesc_version)
        put(buf, "efi_memmap", addr & 0xFFFFFFFF)
        put(buf, "efi_memmap_hi", addr >> 32)
        put(buf, "efi_memmap_size", size)

    def _e820(self, buf: bytearray) -> None:
        put(buf, "e820_entries", len(self.e820))
        table = b"".join(e.pack() for e in self.e820)
        off = BOOT_PARAMS.offset("e820_table")
        buf[off:off + len(table)] = table
        # ext_mem_k/alt_mem_k: KiB of RAM above 1 MiB, from the RAM entry that spans 1 MiB.
        for e in self.e820:
            if e.type == E820_RAM and e.addr <= MiB < e.end:
                mem_k = (e.end >> 10) - (MiB >> 10)
                put(buf, "ext_mem_k", min(mem_k, 0xFC00))
                put(buf, "alt_mem_k", min(mem_k, 0xFFFFFFFF))
