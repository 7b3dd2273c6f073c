"""PE/COFF images (Microsoft PE and COFF specification), read with ``pefile``.

This module is both the ``pe`` format (any PE not claimed by a more specific
format) and the shared reader the UKI, add-on, zboot and bzImage formats use.
Sections are sized by VirtualSize, as firmware and systemd-stub size them;
the raw size is only FileAlignment padding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError
from .layer import Buffer, Format, Layer, ignoring_limits

IMAGE_DIRECTORY_ENTRY_SECURITY = 4
MAX_SECTION_ZERO_FILL = 64 << 20
MACHINES = {
    0x14C: "x86", 0x8664: "x86_64", 0xAA64: "arm64", 0x1C2: "arm", 0x1C4: "arm",
    0x5032: "riscv32", 0x5064: "riscv64", 0x6232: "loongarch32", 0x6264: "loongarch64",
}


@dataclass(frozen=True)
class PeSection:
    """One section header: name, sizes and where its bytes are."""

    name: str
    virtual_address: int
    virtual_size: int
    size_of_raw_data: int
    pointer_to_raw_data: int


@dataclass(frozen=True)
class PeHeader:
    """The fields of the COFF and optional headers that loaders care about."""

    machine: int
    subsystem: int
    address_of_entry_point: int
    size_of_image: int
    sections: tuple[PeSection, ...]
    certificate_table_offset: int
    certificate_table_size: int

    @property
    def arch(self) -> str | None:
        return MACHINES.get(self.machine)

    @property
    def signed(self) -> bool:
        return self.certificate_table_size > 0

    @property
    def file_end(self) -> int:
        """Where the image's own bytes end: last raw section or certificate table."""
        ends = [s.pointer_to_raw_data + s.size_of_raw_data for s in self.sections]
        if self.signed:
            ends.append(self.certificate_table_offset + self.certificate_table_size)
        return max(ends, default=0)


def has_pe_header(data: Buffer) -> bool:
    """'MZ' at 0 and 'PE\\0\\0' where e_lfanew points, nothing more."""
    if len(data) < 0x40 or bytes(data[:2]) != b"MZ":
        return False
    e_lfanew = struct.unpack_from("<I", data, 0x3C)[0]
    return e_lfanew + 4 <= len(data) and bytes(data[e_lfanew:e_lfanew + 4]) == b"PE\0\0"


def read_header(data: Buffer, layer: str = "pe") -> PeHeader:
    """Parse the PE headers with pefile, bounds-checking what pefile does not."""
    import pefile  # on first use: probing by magic never needs it
    try:
        pe = pefile.PE(data=bytes(data), fast_load=True)
    except pefile.PEFormatError as e:
        raise FormatError(layer, str(e.value), field="e_lfanew", offset=0x3C) from e
    sections = tuple(_section(s) for s in pe.sections)
    for s in sections:
        if s.pointer_to_raw_data + s.size_of_raw_data > len(data):
            raise FormatError(layer, f"section {s.name!r} raw data "
                              f"[{s.pointer_to_raw_data:#x}, +{s.size_of_raw_data:#x}) "
                              f"runs past the end of the {len(data):#x}-byte image",
                              field="PointerToRawData")
    opt = pe.OPTIONAL_HEADER
    cert_off, cert_size = _certificate_table(opt, len(data), layer)
    return PeHeader(machine=pe.FILE_HEADER.Machine, subsystem=opt.Subsystem,
                    address_of_entry_point=opt.AddressOfEntryPoint,
                    size_of_image=opt.SizeOfImage, sections=sections,
                    certificate_table_offset=cert_off, certificate_table_size=cert_size)


def _section(s) -> PeSection:
    name = s.Name.rstrip(b"\0").decode("ascii", "replace")
    return PeSection(name=name, virtual_address=s.VirtualAddress, virtual_size=s.Misc_VirtualSize,
                     size_of_raw_data=s.SizeOfRawData, pointer_to_raw_data=s.PointerToRawData)


def _certificate_table(opt, size: int, layer: str) -> tuple[int, int]:
    """The Authenticode table: a file offset (not an RVA) and a size."""
    dirs = getattr(opt, "DATA_DIRECTORY", [])
    if len(dirs) <= IMAGE_DIRECTORY_ENTRY_SECURITY:
        return 0, 0
    entry = dirs[IMAGE_DIRECTORY_ENTRY_SECURITY]
    if entry.Size == 0:
        return 0, 0
    if entry.VirtualAddress + entry.Size > size:
        raise FormatError(layer, f"certificate table [{entry.VirtualAddress:#x}, "
                          f"+{entry.Size:#x}) runs past the end of the {size:#x}-byte image",
                          field="DataDirectory[SECURITY]")
    return entry.VirtualAddress, entry.Size


def section_data(data: Buffer, s: PeSection, layer: str) -> memoryview:
    """A section's contents, VirtualSize long (zero-filled past the raw data)."""
    view = memoryview(data)
    raw = view[s.pointer_to_raw_data:s.pointer_to_raw_data + min(s.virtual_size, s.size_of_raw_data)]
    if s.virtual_size <= s.size_of_raw_data:
        return raw
    fill = s.virtual_size - s.size_of_raw_data
    if fill > MAX_SECTION_ZERO_FILL:
        raise FormatError(layer, f"section {s.name!r} VirtualSize {s.virtual_size:#x} exceeds "
                          f"its raw size {s.size_of_raw_data:#x} by more than "
                          f"{MAX_SECTION_ZERO_FILL:#x}", field="VirtualSize")
    return memoryview(bytes(raw) + bytes(fill))


def trim_padding(data: Buffer) -> Buffer:
    """Drop zero padding after a PE image's own end (signed inner images carry it).

    Returns the input unchanged when it is not a PE, or the tail is not all zero.
    """
    if not has_pe_header(data):
        return data
    try:
        end = read_header(data).file_end
    except FormatError:
        return data
    if 0 < end < len(data) and not any(memoryview(data)[end:]):
        return memoryview(data)[:end]
    return data


@dataclass(frozen=True)
class PeImage(Layer):
    """A PE/COFF image that no more specific format claimed."""

    FORMAT = "pe"
    machine: int = 0
    subsystem: int = 0
    entry: int = 0
    size_of_image: int = 0
    sections: tuple[PeSection, ...] = ()
    signature: bool = False


def probe(data: Buffer) -> bool:
    return has_pe_header(data)


def parse(data: Buffer) -> PeImage:
    hdr = read_header(data)
    return PeImage(arch=hdr.arch, data=data, machine=hdr.machine, subsystem=hdr.subsystem,
                   entry=hdr.address_of_entry_point, size_of_image=hdr.size_of_image,
                   sections=hdr.sections, signature=hdr.signed)


FORMAT = Format("pe", probe, ignoring_limits(parse), "'MZ' at 0 and 'PE\\0\\0' at e_lfanew")
