"""struct boot_params (the x86 "zero page"), the fields pykexec writes or reads, declared once.

Specification: arch/x86/include/uapi/asm/bootparam.h (offsets in its
comments), Documentation/arch/x86/zero-page.rst; the setup header at 0x1f1 is
the one :data:`pykexec.formats.bzimage.SETUP_HEADER` declares.  setup_data
types: arch/x86/include/uapi/asm/setup_data.h.
"""

from __future__ import annotations

import struct

from ..formats.bzimage import SETUP_HEADER_OFFSET as HDR_OFFSET
from ..layout import Field, Layout
from .e820 import ENTRY as E820_ENTRY

SIZEOF_BOOT_PARAMS = 4096
HDR_LIMIT = 0x290            # _pad7 ends here: edd_mbr_sig_buffer follows the setup header
E820_MAX_ENTRIES_ZEROPAGE = 128
EDDMAXNR = 6
EDD_MBR_SIG_MAX = 16
SIZEOF_EDD_INFO = 82

BOOT_PARAMS = Layout("boot_params", [
    Field("screen_info", 0x000, "64s"),
    Field("ext_mem_k", 0x002, "H"),              # screen_info.ext_mem_k
    Field("orig_video_mode", 0x006, "B"),        # screen_info (uapi/linux/screen_info.h)
    Field("orig_video_cols", 0x007, "B"),
    Field("orig_video_lines", 0x00E, "B"),
    Field("orig_video_isVGA", 0x00F, "B"),
    Field("orig_video_points", 0x010, "H"),
    Field("cl_magic", 0x020, "H"),               # screen_info.cl_magic: the command line before 2.02
    Field("cl_offset", 0x022, "H"),
    Field("acpi_rsdp_addr", 0x070, "Q"),
    Field("ext_ramdisk_image", 0x0C0, "I"),
    Field("ext_ramdisk_size", 0x0C4, "I"),
    Field("ext_cmd_line_ptr", 0x0C8, "I"),
    Field("efi_info", 0x1C0, "32s"),
    Field("efi_loader_signature", 0x1C0, "4s"),
    Field("efi_systab", 0x1C4, "I"),
    Field("efi_memdesc_size", 0x1C8, "I"),
    Field("efi_memdesc_version", 0x1CC, "I"),
    Field("efi_memmap", 0x1D0, "I"),
    Field("efi_memmap_size", 0x1D4, "I"),
    Field("efi_systab_hi", 0x1D8, "I"),
    Field("efi_memmap_hi", 0x1DC, "I"),
    Field("alt_mem_k", 0x1E0, "I"),
    Field("e820_entries", 0x1E8, "B"),
    Field("eddbuf_entries", 0x1E9, "B"),
    Field("edd_mbr_sig_buf_entries", 0x1EA, "B"),
    Field("secure_boot", 0x1EC, "B"),
    Field("sentinel", 0x1EF, "B"),
    Field("hdr", HDR_OFFSET, f"{HDR_LIMIT - HDR_OFFSET}s"),
    Field("edd_mbr_sig_buffer", 0x290, f"{4 * EDD_MBR_SIG_MAX}s"),
    Field("e820_table", 0x2D0, f"{E820_ENTRY.size * E820_MAX_ENTRIES_ZEROPAGE}s"),
    Field("eddbuf", 0xD00, f"{SIZEOF_EDD_INFO * EDDMAXNR}s"),
])

# setup_data types (asm/setup_data.h)
SETUP_NONE = 0
SETUP_E820_EXT = 1
SETUP_DTB = 2
SETUP_PCI = 3
SETUP_EFI = 4
SETUP_RNG_SEED = 9
SETUP_DATA_HEADER = struct.Struct("<QII")     # u64 next, u32 type, u32 len
EFI_SETUP_DATA = struct.Struct("<QQQQ64x")    # fw_vendor, __unused (runtime), tables, smbios, reserved[8]
RNG_SEED_LENGTH = 32                          # what the kernel's own kexec_file loader passes

CL_MAGIC_VALUE = 0xA33F      # boot.rst "The old command line protocol": cl_offset is valid
TYPE_OF_LOADER_KEXEC = 0xD0   # LOADER_TYPE_KEXEC (0x0D) << 4, version 0: kexec-tools and the kernel both


def put(buf: bytearray, name: str, value, *, base: int = 0, layout: Layout = BOOT_PARAMS) -> None:
    """Write one declared field into ``buf`` (the writing half of :class:`Layout`)."""
    field = layout.fields[name]
    struct.pack_into(layout.endian + field.code, buf, base + field.offset, value)


def e820_entries(page: bytes | memoryview, count: int) -> list[tuple[int, int, int]]:
    """The first ``count`` (addr, size, type) entries of a zero page's ``e820_table``."""
    off = BOOT_PARAMS.offset("e820_table")
    return [E820_ENTRY.unpack_from(page, off + E820_ENTRY.size * i) for i in range(count)]
