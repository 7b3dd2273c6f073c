"""Reading the running system's hand-over data from fake sysfs trees."""

from __future__ import annotations

import struct
from pathlib import Path

from pykexec.boot.firmware import EfiMemoryDescriptor, read_firmware


def boot_params(*, efi: bool, rsdp: int = 0, subarch: int = 0) -> bytes:
    raw = bytearray(4096)
    struct.pack_into("<Q", raw, 0x70, rsdp)
    struct.pack_into("<I", raw, 0x23C, subarch)
    if efi:
        struct.pack_into("<4sIIIIIII", raw, 0x1C0, b"EL64", 0x7FE00018, 48, 1, 0x7E000000, 48 * 30, 0, 0)
    return bytes(raw)


def efi_tree(root: Path, *, rsdp: int = 0, runtime_map: bool = True) -> Path:
    (root / "kernel/boot_params").mkdir(parents=True)
    (root / "kernel/boot_params/data").write_bytes(boot_params(efi=True, rsdp=rsdp))
    efi = root / "firmware/efi"
    efi.mkdir(parents=True)
    (efi / "fw_vendor").write_text("0x7fe01000\n")
    (efi / "runtime").write_text("0x7fe02000\n")
    (efi / "config_table").write_text("0x7fe03000\n")
    (efi / "systab").write_text("ACPI20=0x7fbfe014\nACPI=0x7fbfe000\nSMBIOS=0x7f000000\nSMBIOS3=0x7f001000\n")
    if runtime_map:
        for i, (kind, phys) in enumerate(((5, 0x7F000000), (6, 0x7F010000))):
            d = efi / "runtime-map" / str(i)
            d.mkdir(parents=True)
            (d / "type").write_text(f"0x{kind:x}\n")
            (d / "phys_addr").write_text(f"0x{phys:x}\n")
            (d / "virt_addr").write_text(f"0x{0xFFFFFFFEFF000000 + phys:x}\n")
            (d / "num_pages").write_text("0x10\n")
            (d / "attribute").write_text("0x800000000000000f\n")
    return root


def test_bios_machine(tmp_path):
    (tmp_path / "kernel/boot_params").mkdir(parents=True)
    (tmp_path / "kernel/boot_params/data").write_bytes(boot_params(efi=False, rsdp=0xF5A40))
    fw = read_firmware(tmp_path)
    assert fw.efi is None and fw.acpi_rsdp == 0xF5A40 and fw.hardware_subarch == 0
    assert fw.boot_params is not None


def test_efi_machine(tmp_path):
    fw = read_firmware(efi_tree(tmp_path))
    assert fw.acpi_rsdp == 0x7FBFE014                     # from systab's ACPI20 when boot_params has none
    efi = fw.efi
    assert (efi.systab, efi.fw_vendor, efi.runtime, efi.config_table, efi.smbios) == (
        0x7FE00018, 0x7FE01000, 0x7FE02000, 0x7FE03000, 0x7F000000)
    assert efi.memdesc_size == 48 and efi.memdesc_version == 1 and efi.loader_signature == b"EL64"
    assert efi.runtime_map[1] == EfiMemoryDescriptor(6, 0x7F010000, 0xFFFFFFFEFF000000 + 0x7F010000, 16,
                                                     0x800000000000000F)
    assert len(efi.runtime_map[0].pack(48)) == 48


def test_boot_params_rsdp_wins(tmp_path):
    assert read_firmware(efi_tree(tmp_path, rsdp=0x7FB00000)).acpi_rsdp == 0x7FB00000


def test_without_runtime_map_no_efi_is_passed(tmp_path):
    fw = read_firmware(efi_tree(tmp_path, runtime_map=False))
    assert fw.efi is None
    assert any("runtime-map" in path for path, _ in fw.unreadable)


def test_nothing_readable(tmp_path):
    fw = read_firmware(tmp_path)
    assert fw.boot_params is None and fw.efi is None and fw.acpi_rsdp is None
    assert fw.unreadable
