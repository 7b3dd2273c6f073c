"""What the running system passes on to the next kernel: its boot_params, EFI state, ACPI RSDP.

Sources, as kexec-tools' kexec/arch/i386/x86-linux-setup.c and the kernel's
own kexec_file loader (arch/x86/kernel/kexec-bzimage64.c
``setup_boot_parameters``/``setup_efi_state``) read them:

* ``/sys/kernel/boot_params/data`` (arch/x86/kernel/ksysfs.c): the running
  kernel's struct boot_params, after the decompressor filled
  ``acpi_rsdp_addr``.  screen_info, hardware_subarch, efi_info, EDD and
  secure_boot are copied from it.
* ``/sys/firmware/efi/{fw_vendor,runtime,config_table}`` ("0x%lx"),
  ``/sys/firmware/efi/systab`` (``ACPI20=``, ``ACPI=``, ``SMBIOS=``,
  ``SMBIOS3=`` lines), and ``/sys/firmware/efi/runtime-map/N/{type,
  phys_addr,virt_addr,num_pages,attribute}`` (drivers/firmware/efi/runtime-map.c):
  the runtime regions with the virtual addresses the first kernel gave them,
  which the next kernel must reuse (SetVirtualAddressMap works only once).

Every root is a parameter; nothing here raises for a file it cannot read, it
records why in ``unreadable`` and leaves the field ``None``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ..formats.bzimage import SETUP_HEADER
from .bootparam import BOOT_PARAMS, SIZEOF_BOOT_PARAMS

EFI64_LOADER_SIGNATURE = b"EL64"
EFI_MEMDESC = struct.Struct("<IIQQQQ")  # efi_memory_desc_t: type, pad, phys, virt, num_pages, attribute


@dataclass(frozen=True)
class EfiMemoryDescriptor:
    """One EFI runtime region as /sys/firmware/efi/runtime-map shows it."""

    type: int
    phys_addr: int
    virt_addr: int
    num_pages: int
    attribute: int

    def pack(self, size: int) -> bytes:
        """The descriptor padded to the firmware's descriptor size (``efi_memdesc_size``)."""
        raw = EFI_MEMDESC.pack(self.type, 0, self.phys_addr, self.virt_addr, self.num_pages, self.attribute)
        return raw + bytes(max(size - len(raw), 0))


@dataclass(frozen=True)
class EfiState:
    """The EFI handover of the running system (struct efi_setup_data plus efi_info)."""

    systab: int
    fw_vendor: int
    runtime: int
    config_table: int
    smbios: int
    memdesc_size: int
    memdesc_version: int
    runtime_map: tuple[EfiMemoryDescriptor, ...]
    loader_signature: bytes = EFI64_LOADER_SIGNATURE


@dataclass(frozen=True)
class Firmware:
    """The running system's hand-over data; ``None`` where it could not be read."""

    boot_params: bytes | None = None
    efi: EfiState | None = None
    acpi_rsdp: int | None = None
    hardware_subarch: int = 0
    unreadable: tuple[tuple[str, str], ...] = ()

    @classmethod
    def none(cls) -> "Firmware":
        """Nothing known: a BIOS machine without sysfs, as tests and dry runs on other hosts see it."""
        return cls()


def read_firmware(sys: str | Path = "/sys") -> Firmware:
    """Read the hand-over data of the running system under ``sys``."""
    root = Path(sys)
    unreadable: list[tuple[str, str]] = []

    def text(path: Path) -> str | None:
        try:
            return path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            unreadable.append((str(path), e.strerror or str(e)))
            return None

    params = None
    try:
        params = (root / "kernel/boot_params/data").read_bytes()
    except FileNotFoundError:
        unreadable.append((str(root / "kernel/boot_params/data"), "absent (not x86, or sysfs not mounted)"))
    except OSError as e:
        unreadable.append((str(root / "kernel/boot_params/data"), e.strerror or str(e)))
    if params is not None and len(params) < SIZEOF_BOOT_PARAMS:
        unreadable.append((str(root / "kernel/boot_params/data"), f"only {len(params)} bytes"))
        params = None

    efi_dir = root / "firmware/efi"
    systab = _systab(text(efi_dir / "systab") or "")
    rsdp = None
    subarch = 0
    if params is not None:
        rsdp = BOOT_PARAMS.get(params, "acpi_rsdp_addr") or None
        subarch = SETUP_HEADER.get(params, "hardware_subarch")
    if rsdp is None:
        rsdp = systab.get("ACPI20") or systab.get("ACPI")
    efi = _efi(efi_dir, params, systab, text, unreadable) if efi_dir.is_dir() else None
    return Firmware(boot_params=params, efi=efi, acpi_rsdp=rsdp, hardware_subarch=subarch,
                    unreadable=tuple(unreadable))


def _systab(text: str) -> dict[str, int]:
    out = {}
    for key, value in re.findall(r"^(\w+)=(0x[0-9a-fA-F]+)\s*$", text, re.M):
        out[key] = int(value, 16)
    return out


def _hex(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip(), 16)
    except ValueError:
        return None


def _efi(efi_dir: Path, params: bytes | None, systab: dict[str, int], text, unreadable) -> EfiState | None:
    """The EFI state, or None when any piece the next kernel needs is missing (kexec-tools
    ``setup_efi_info`` then zeroes efi_info and passes no SETUP_EFI either)."""
    if params is None:
        unreadable.append(("efi", "boot_params unreadable: efi_info unknown"))
        return None
    info = {name: BOOT_PARAMS.get(params, name) for name in (
        "efi_systab", "efi_systab_hi", "efi_memdesc_size", "efi_memdesc_version", "efi_memmap_size")}
    if info["efi_memmap_size"] == 0:
        unreadable.append(("efi", "the running kernel's efi_info is empty (booted without EFI, or noefi)"))
        return None
    fw_vendor = _hex(text(efi_dir / "fw_vendor"))
    runtime = _hex(text(efi_dir / "runtime"))
    config_table = _hex(text(efi_dir / "config_table"))
    if fw_vendor is None or runtime is None or config_table is None:
        unreadable.append((str(efi_dir), "fw_vendor, runtime or config_table unreadable (needs root)"))
        return None
    runtime_map = _runtime_map(efi_dir / "runtime-map", text)
    if not runtime_map:
        unreadable.append((str(efi_dir / "runtime-map"), "absent or empty (CONFIG_EFI_RUNTIME_MAP)"))
        return None
    systab_addr = info["efi_systab"] | info["efi_systab_hi"] << 32
    signature = BOOT_PARAMS.get(params, "efi_loader_signature")
    return EfiState(systab=systab_addr, fw_vendor=fw_vendor, runtime=runtime, config_table=config_table,
                    smbios=systab.get("SMBIOS") or systab.get("SMBIOS3") or 0,
                    memdesc_size=info["efi_memdesc_size"] or EFI_MEMDESC.size,
                    memdesc_version=info["efi_memdesc_version"], runtime_map=runtime_map,
                    loader_signature=signature if signature.startswith(b"EL") else EFI64_LOADER_SIGNATURE)


def _runtime_map(root: Path, text) -> tuple[EfiMemoryDescriptor, ...]:
    if not root.is_dir():
        return ()
    out = []
    for entry in sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        values = [_hex(text(entry / name)) for name in ("type", "phys_addr", "virt_addr", "num_pages",
                                                         "attribute")]
        if any(v is None for v in values):
            continue
        out.append(EfiMemoryDescriptor(*values))
    return tuple(out)
