"""struct boot_params: offsets pinned to bootparam.h, and what pykexec writes into it."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pykexec.boot import bootparam, zeropage
from pykexec.boot.bootparam import BOOT_PARAMS
from pykexec.boot.e820 import E820_ACPI, E820_RAM, E820_RESERVED, E820Entry
from pykexec.boot.firmware import EfiMemoryDescriptor, EfiState, Firmware
from pykexec.errors import FormatError
from pykexec.formats.bzimage import SETUP_HEADER
from tests import builders
from tests.usermode_helpers import read_zero_page

from .conftest import MiB


def test_offsets_pinned_to_bootparam_h():
    pinned = {"acpi_rsdp_addr": 0x070, "ext_ramdisk_image": 0x0C0, "ext_ramdisk_size": 0x0C4,
              "ext_cmd_line_ptr": 0x0C8, "efi_info": 0x1C0, "alt_mem_k": 0x1E0, "e820_entries": 0x1E8,
              "eddbuf_entries": 0x1E9, "edd_mbr_sig_buf_entries": 0x1EA, "secure_boot": 0x1EC,
              "sentinel": 0x1EF, "hdr": 0x1F1, "edd_mbr_sig_buffer": 0x290, "e820_table": 0x2D0,
              "eddbuf": 0xD00}
    assert {k: BOOT_PARAMS.offset(k) for k in pinned} == pinned
    assert BOOT_PARAMS.fields["e820_table"].size == 128 * 20 and 0x2D0 + 128 * 20 == 0xCD0
    assert BOOT_PARAMS.fields["efi_info"].size == 32
    assert BOOT_PARAMS.size <= bootparam.SIZEOF_BOOT_PARAMS
    assert [BOOT_PARAMS.offset(f"efi_{n}") for n in ("systab", "memdesc_size", "memmap", "memmap_size",
                                                      "systab_hi", "memmap_hi")] == [0x1C4, 0x1C8, 0x1D0, 0x1D4,
                                                                                     0x1D8, 0x1DC]
    assert SETUP_HEADER.offset("type_of_loader") == 0x210 and SETUP_HEADER.offset("setup_data") == 0x250
    assert (bootparam.SETUP_E820_EXT, bootparam.SETUP_EFI, bootparam.SETUP_RNG_SEED) == (1, 4, 9)
    assert bootparam.EFI_SETUP_DATA.size == 96 and bootparam.SETUP_DATA_HEADER.size == 16


def test_setup_header_copy_is_0x1f1_to_the_jump_target():
    image = builders.bzimage(version=0x20F)
    hdr = zeropage.setup_header(image)
    assert len(hdr) == 0x202 + image[0x201] - 0x1F1
    assert hdr == image[0x1F1:0x202 + image[0x201]]
    old = builders.bzimage(version=0x20A)
    assert len(zeropage.setup_header(old)) == 0x202 + old[0x201] - 0x1F1 < len(hdr)


def test_setup_header_copy_stops_at_0x290():
    image = bytearray(builders.bzimage())
    image[0x201] = 0xFF                     # a jump far past the header
    assert len(zeropage.setup_header(bytes(image))) == 0x290 - 0x1F1


def test_setup_header_needs_hdrs():
    with pytest.raises(FormatError, match="HdrS"):
        zeropage.setup_header(bytes(0x400))


def _page(**kw) -> dict:
    params = zeropage.BootParams(header=zeropage.setup_header(builders.bzimage()), **kw)
    return read_zero_page(params.pack())


def test_loader_type_and_pointers():
    page = _page(cmd_line_ptr=0x9000, ramdisk_image=0x1_2345_6000, ramdisk_size=0x1_0000_0000 + 0x4000,
                 setup_data=0x7FFF0000)
    assert page["type_of_loader"] == 0xD0 and page["loadflags"] == 0 and page["sentinel"] == 0
    assert page["cmd_line_ptr"] == 0x9000 and page["ext_cmd_line_ptr"] == 0
    assert page["ramdisk_image"] == 0x2345_6000 and page["ext_ramdisk_image"] == 1
    assert page["ramdisk_size"] == 0x4000 and page["ext_ramdisk_size"] == 1
    assert page["setup_data"] == 0x7FFF0000


def test_high_pointers_need_protocol_2_12():
    params = zeropage.BootParams(header=zeropage.setup_header(builders.bzimage(version=0x20A)),
                                 ramdisk_image=1 << 32)
    with pytest.raises(FormatError, match="ext_ramdisk_image"):
        params.pack()


def test_the_image_header_survives_except_the_loader_fields():
    image = builders.bzimage()
    raw = zeropage.BootParams(header=zeropage.setup_header(image)).pack()
    for name in ("setup_sects", "version", "kernel_alignment", "init_size", "pref_address", "xloadflags"):
        assert SETUP_HEADER.get(raw, name) == SETUP_HEADER.get(image, name)


def test_e820_table_and_mem_k():
    e820 = (E820Entry(0x1000, 0x9F000, E820_RAM), E820Entry(0xF0000, 0x10000, E820_RESERVED),
            E820Entry(MiB, 0x3FEE0000, E820_RAM), E820Entry(0x3FFE0000, 0x20000, E820_ACPI))
    raw = zeropage.BootParams(header=zeropage.setup_header(builders.bzimage()), e820=e820).pack()
    page = read_zero_page(raw)
    assert page["e820_entries"] == 4 and page["e820"] == list(e820)
    assert raw[0x2D0:0x2D0 + 20] == struct.pack("<QQI", 0x1000, 0x9F000, 1)
    assert BOOT_PARAMS.get(raw, "alt_mem_k") == (0x3FFE0000 >> 10) - 1024
    assert BOOT_PARAMS.get(raw, "ext_mem_k") == 0xFC00


@given(st.integers(0, 400))
def test_more_than_128_entries_go_to_setup_e820_ext(count):
    entries = [E820Entry(i * 0x2000, 0x1000, E820_RAM) for i in range(count)]
    head, ext = zeropage.e820_table(entries)
    assert list(head) == entries[:128]
    if count <= 128:
        assert ext is None
    else:
        assert ext.type == bootparam.SETUP_E820_EXT
        assert len(ext.data) == 20 * (count - 128)
        back = [E820Entry(*struct.unpack_from("<QQI", ext.data, 20 * i)) for i in range(count - 128)]
        assert back == entries[128:]


def test_setup_data_chain_links_each_node_to_the_next():
    a, b = zeropage.SetupData(1, b"x" * 5), zeropage.SetupData(9, b"y" * 32)
    (addr_a, raw_a), (addr_b, raw_b) = zeropage.chain([(0x1000, a), (0x5000, b)])
    assert (addr_a, addr_b) == (0x1000, 0x5000)
    assert struct.unpack_from("<QII", raw_a) == (0x5000, 1, 5) and raw_a[16:] == b"x" * 5
    assert struct.unpack_from("<QII", raw_b) == (0, 9, 32)


def test_rng_seed_is_32_bytes_from_getrandom():
    seen = []
    node = zeropage.rng_seed(lambda n: seen.append(n) or b"\xAB" * n)
    assert seen == [32] and node.type == 9 and node.data == b"\xAB" * 32


EFI = EfiState(systab=0x1_7FE0_0018, fw_vendor=0x7FE01000, runtime=0x7FE02000, config_table=0x7FE03000,
               smbios=0x7F000000, memdesc_size=48, memdesc_version=1,
               runtime_map=(EfiMemoryDescriptor(5, 0x7F000000, 0xFFFFFFFEFF000000, 16, 0x800000000000000F),
                            EfiMemoryDescriptor(6, 0x7F010000, 0xFFFFFFFEFF010000, 2, 0x800000000000000F)))


def test_efi_info_and_setup_efi():
    fw = Firmware(efi=EFI, acpi_rsdp=0x7FBFE014)
    raw = zeropage.BootParams(header=zeropage.setup_header(builders.bzimage()), firmware=fw,
                              efi_memmap=(0x1_0000_2000, 96)).pack()
    assert BOOT_PARAMS.get(raw, "efi_loader_signature") == b"EL64"
    assert BOOT_PARAMS.get(raw, "efi_systab") == 0x7FE00018 and BOOT_PARAMS.get(raw, "efi_systab_hi") == 1
    assert BOOT_PARAMS.get(raw, "efi_memmap") == 0x2000 and BOOT_PARAMS.get(raw, "efi_memmap_hi") == 1
    assert BOOT_PARAMS.get(raw, "efi_memmap_size") == 96 and BOOT_PARAMS.get(raw, "efi_memdesc_size") == 48
    assert BOOT_PARAMS.get(raw, "efi_memdesc_version") == 1
    assert BOOT_PARAMS.get(raw, "acpi_rsdp_addr") == 0x7FBFE014
    node = zeropage.efi_setup_data(EFI)
    assert node.type == 4 and struct.unpack_from("<QQQQ", node.data) == (0x7FE01000, 0x7FE02000, 0x7FE03000,
                                                                          0x7F000000)
    runtime = zeropage.efi_runtime_map(EFI)
    assert len(runtime) == 96
    assert struct.unpack_from("<IIQQQQ", runtime, 48) == (6, 0, 0x7F010000, 0xFFFFFFFEFF010000, 2,
                                                         0x800000000000000F)


def test_acpi_rsdp_needs_protocol_2_14():
    fw = Firmware(acpi_rsdp=0xF5A40)
    old = zeropage.BootParams(header=zeropage.setup_header(builders.bzimage(version=0x20C)), firmware=fw).pack()
    assert BOOT_PARAMS.get(old, "acpi_rsdp_addr") == 0


def test_running_boot_params_carry_screen_info_and_edd():
    running = bytearray(4096)
    running[0:0x40] = bytes(range(0x40))
    running[0x1E9] = 2
    running[0xD00:0xD00 + 82] = b"E" * 82
    running[0x1EC] = 3
    running[0x23C] = 0                         # hardware_subarch PC
    raw = zeropage.BootParams(header=zeropage.setup_header(builders.bzimage()),
                              firmware=Firmware(boot_params=bytes(running))).pack()
    assert raw[:0x40] == bytes(range(0x40))
    assert raw[0x1E9] == 2 and raw[0xD00:0xD00 + 82] == b"E" * 82 and raw[0x1EC] == 3


def test_synthetic_header_for_a_vmlinux():
    hdr = zeropage.synthetic_header()
    raw = zeropage.BootParams(header=hdr, cmd_line_ptr=0x20000).pack()
    assert SETUP_HEADER.get(raw, "header") == 0x53726448 and SETUP_HEADER.get(raw, "boot_flag") == 0xAA55
    assert SETUP_HEADER.get(raw, "version") == 0x020F and raw[0x201] == len(hdr) + 0x1F1 - 0x202
    assert SETUP_HEADER.get(raw, "cmdline_size") == 2047 and SETUP_HEADER.get(raw, "cmd_line_ptr") == 0x20000
