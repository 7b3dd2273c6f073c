"""PE/COFF images (Microsoft PE and COFF specification), read with ``pefile``.

This module is both the ``pe`` format (any PE not claimed by a more specific
format) and the shared reader the UKI, add-on, zboot and bzImage formats use.
Sections are sized by VirtualSize, as firmware and systemd-stub size them;
the raw size is only FileAlignment padding.

pefile stays the judge of odd headers, but importing it costs more than
reading a well-formed header: headers in the plain shape every linker writes
(all tables inside the file, a PE32 or PE32+ optional header, no section that
pefile would warn about) are read from the layouts below, and anything else
goes to pefile, so its checks and messages are unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from ..errors import FormatError, NotLoadable
from ..layout import Field, Layout
from .layer import Buffer, Format, Layer, ignoring_limits

# The MS-DOS stub header: its magic and the file offset of the PE signature.
DOS_HEADER = Layout("pe", [Field("e_magic", 0x00, "2s"), Field("e_lfanew", 0x3C, "I")])
DOS_MAGIC = b"MZ"
PE_SIGNATURE = b"PE\0\0"
# Relative to e_lfanew: the signature and the COFF file header.
COFF_HEADER = Layout("pe", [
    Field("Signature", 0x00, "4s"), Field("Machine", 0x04, "H"),
    Field("NumberOfSections", 0x06, "H"), Field("PointerToSymbolTable", 0x0C, "I"),
    Field("NumberOfSymbols", 0x10, "I"), Field("SizeOfOptionalHeader", 0x14, "H"),
])
COFF_SYMBOL_SIZE = 18       # the string table follows the symbol table
MAX_LONG_NAME = 256
COFF_HEADER_END = 0x18
# Relative to the optional header; the same offsets in PE32 and PE32+ (ImageBase,
# which is not, is read by magic below).
OPTIONAL_HEADER = Layout("pe", [
    Field("Magic", 0x00, "H"), Field("AddressOfEntryPoint", 0x10, "I"),
    Field("SectionAlignment", 0x20, "I"), Field("SizeOfImage", 0x38, "I"),
    Field("SizeOfHeaders", 0x3C, "I"), Field("CheckSum", 0x40, "I"), Field("Subsystem", 0x44, "H"),
])
PE32_MAGIC, PE32PLUS_MAGIC = 0x10B, 0x20B
# Magic: the size of the fixed part, whose last field is NumberOfRvaAndSizes;
# the data directories (8 bytes each) follow it.
OPTIONAL_HEADER_SIZES = {PE32_MAGIC: 96, PE32PLUS_MAGIC: 112}
DATA_DIRECTORY = Layout("pe", [Field("VirtualAddress", 0x00, "I"), Field("Size", 0x04, "I")])
# Data directory indices ("Optional Header Data Directories").
IMAGE_DIRECTORY_ENTRY_SECURITY = 4      # the Attribute Certificate Table: a file offset, not an RVA
IMAGE_DIRECTORY_ENTRY_BASERELOC = 5
SECTION_HEADER = Layout("pe", [
    Field("Name", 0x00, "8s"), Field("VirtualSize", 0x08, "I"), Field("VirtualAddress", 0x0C, "I"),
    Field("SizeOfRawData", 0x10, "I"), Field("PointerToRawData", 0x14, "I"),
    Field("Characteristics", 0x24, "I"),
])
SECTION_HEADER_SIZE = 40
IMAGE_SCN_MEM_EXECUTE = 0x20000000
# pefile (fast_load) reads at most 16 data directories and 0x800 sections, and
# stops or gives up on sections whose sizes it finds suspicious.
PEFILE_MAX_DATA_DIRECTORIES = 16
PEFILE_MAX_SECTIONS = 0x800
PEFILE_MAX_VIRTUAL_SIZE = 0x10000000
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
    if len(data) < DOS_HEADER.size or bytes(data[:2]) != DOS_MAGIC:
        return False
    at = e_lfanew(data)
    return at + 4 <= len(data) and bytes(data[at:at + 4]) == PE_SIGNATURE


def e_lfanew(data: Buffer) -> int:
    """Where the PE signature and the COFF header start."""
    return DOS_HEADER.get(data, "e_lfanew")


def optional_header_offset(data: Buffer) -> int:
    return e_lfanew(data) + COFF_HEADER_END


def data_directory_offset(magic: int, index: int) -> int:
    """Where DataDirectory[index] is, relative to an optional header of ``magic``."""
    return OPTIONAL_HEADER_SIZES[magic] + DATA_DIRECTORY.size * index


def number_of_rva_and_sizes_offset(magic: int) -> int:
    """Where NumberOfRvaAndSizes, the fixed part's last field, is, relative to the optional header."""
    return OPTIONAL_HEADER_SIZES[magic] - 4


def section_headers(data: Buffer) -> list[dict[str, object]] | None:
    """The section table as the COFF header places it, in file order, or None when the
    table (or the headers before it) does not lie inside ``data``.  No other checks: the
    caller decides what an odd entry means."""
    if not has_pe_header(data):
        return None
    coff_at = e_lfanew(data)
    if coff_at + COFF_HEADER_END > len(data):
        return None
    coff = COFF_HEADER.unpack(data, coff_at)
    count = coff["NumberOfSections"]
    table_at = coff_at + COFF_HEADER_END + coff["SizeOfOptionalHeader"]
    if table_at + SECTION_HEADER_SIZE * count > len(data):
        return None
    return [SECTION_HEADER.unpack(data, at)
            for at in range(table_at, table_at + SECTION_HEADER_SIZE * count, SECTION_HEADER_SIZE)]


def read_header(data: Buffer, layer: str = "pe") -> PeHeader:
    """Parse the PE headers, bounds-checking what pefile does not."""
    fields = _read_plain(data)
    if fields is None:
        fields = _read_with_pefile(data, layer)
    machine, subsystem, entry, size_of_image, sections, certificate = fields
    sections = tuple(_long_name(data, s) for s in sections)
    for s in sections:
        if s.pointer_to_raw_data + s.size_of_raw_data > len(data):
            raise FormatError(layer, f"section {s.name!r} raw data "
                              f"[{s.pointer_to_raw_data:#x}, +{s.size_of_raw_data:#x}) "
                              f"runs past the end of the {len(data):#x}-byte image",
                              field="PointerToRawData")
    cert_off, cert_size = _certificate_table(certificate, len(data), layer)
    return PeHeader(machine=machine, subsystem=subsystem, address_of_entry_point=entry,
                    size_of_image=size_of_image, sections=sections,
                    certificate_table_offset=cert_off, certificate_table_size=cert_size)


def _long_name(data: Buffer, s: PeSection) -> PeSection:
    """A section named "/N" has its real name at offset N of the COFF string table (PE Format,
    "Section Table": what GNU ld writes for names longer than 8 bytes, and objdump shows)."""
    if not (s.name[:1] == "/" and s.name[1:].isdigit()):
        return s
    coff = COFF_HEADER.unpack(data, e_lfanew(data))
    table = coff["PointerToSymbolTable"] + coff["NumberOfSymbols"] * COFF_SYMBOL_SIZE
    at = table + int(s.name[1:])
    if not coff["PointerToSymbolTable"] or at >= len(data):
        return s  # no string table in the file: the name stays as written
    raw = bytes(data[at:at + MAX_LONG_NAME]).split(b"\0", 1)[0]
    return replace(s, name=raw.decode("ascii", "replace")) if raw else s


#: component names (:func:`components`) of PE images that are not kernels, and what to call them
NOT_KERNELS = {"shim": "shim, a first-stage boot loader", "grub": "GRUB, a boot loader",
               "systemd-boot": "systemd-boot, a boot manager",
               "systemd-stub": "systemd-stub alone (a UKI's stub without its .linux)",
               "systemd-addon": "a UKI add-on (command line, initrd or DTB for a UKI)",
               "fwupd-efi": "fwupd's firmware updater", "ipxe": "iPXE, a network boot loader",
               "memtest86+": "memtest86+, a memory tester"}


#: what a PE without SBAT (built before 2021) says of itself in its data: the component it is
BANNERS = {b"Open Source Network Boot Firmware": "ipxe"}    # iPXE's banner, printed at every start


@dataclass(frozen=True)
class Claim:
    """A component name a PE image gives itself, and where it says so: the section, and the file
    offset of the words that say it."""

    name: str
    section: str
    offset: int


def banners(data: Buffer, header: PeHeader) -> list[Claim]:
    """The components whose :data:`BANNERS` the sections' data hold."""
    claims = []
    for s in header.sections:
        raw = bytes(section_data(data, s, "pe"))
        claims += [Claim(name, s.name, s.pointer_to_raw_data + raw.index(banner))
                   for banner, name in BANNERS.items() if banner in raw]
    return claims


def components(data: Buffer, header: PeHeader) -> list[Claim]:
    """What the image says it is: the component names of its ``.sbat`` section (the SBAT spec's
    CSV, after the "sbat" header line), then the name in systemd's ``.sdmagic``
    ("#### LoaderInfo: systemd-addon 262.1-1 ####")."""
    claims = []
    for s in header.sections:
        if s.name not in (".sbat", ".sdmagic"):
            continue
        text = bytes(section_data(data, s, "pe")).split(b"\0", 1)[0].decode("utf-8", "replace")
        if s.name == ".sbat":
            lines = [line.split(",", 1)[0].strip() for line in text.splitlines() if line.strip()]
            names = [n for n in lines[1:] if n]
        else:
            names = text[len("#### LoaderInfo: "):].split()[:1] if text.startswith("#### LoaderInfo: ") else []
        claims += [Claim(n, s.name, s.pointer_to_raw_data) for n in names]
    return claims


def not_a_kernel(data: Buffer) -> NotLoadable | None:
    """The refusal of a PE image whose SBAT, LoaderInfo or banner says it is a boot loader, a stub alone
    or an add-on, naming the section that says so (None: it may be a kernel's EFI stub).  Decided from
    the PE alone, before anything runs it."""
    try:
        header = read_header(data)
        claims = components(data, header) or banners(data, header)
    except FormatError:
        return None
    if any(s.name == ".linux" for s in header.sections):
        return None
    claim = next((c for c in claims if c.name in NOT_KERNELS), None)
    if claim is None:
        return None
    return NotLoadable("pe", f"this is {NOT_KERNELS[claim.name]}, not a kernel, and holds none to load",
                       field=f"section {claim.section}", offset=claim.offset)


def _read_plain(data: Buffer):
    """The header fields of a PE in the plain shape, as pefile would read them; None otherwise.

    Plain: the COFF header, the whole fixed optional header (PE32 or PE32+),
    DataDirectory[SECURITY] when NumberOfRvaAndSizes includes it, and every
    section header lie inside the file; no section header is all zeros, and
    every section's raw data lies inside the file with a VirtualSize pefile
    accepts.  pefile then raises nothing and drops nothing, and it orders the
    sections by VirtualAddress, as done here.
    """
    if not has_pe_header(data):
        return None
    coff_at = e_lfanew(data)
    opt_at = coff_at + COFF_HEADER_END
    if opt_at + OPTIONAL_HEADER.size > len(data):
        return None
    magic = OPTIONAL_HEADER.get(data, "Magic", opt_at)
    fixed = OPTIONAL_HEADER_SIZES.get(magic)
    if fixed is None or opt_at + fixed > len(data):
        return None
    coff = COFF_HEADER.unpack(data, coff_at)
    opt = OPTIONAL_HEADER.unpack(data, opt_at)
    rva_and_sizes = struct.unpack_from("<I", data, opt_at + number_of_rva_and_sizes_offset(magic))[0]
    directories = min(rva_and_sizes & 0x7FFFFFFF, PEFILE_MAX_DATA_DIRECTORIES)
    certificate = (0, 0)
    if directories > IMAGE_DIRECTORY_ENTRY_SECURITY:
        entry_at = opt_at + data_directory_offset(magic, IMAGE_DIRECTORY_ENTRY_SECURITY)
        if entry_at + DATA_DIRECTORY.size > len(data):
            return None
        entry = DATA_DIRECTORY.unpack(data, entry_at)
        certificate = (entry["VirtualAddress"], entry["Size"])
    count = coff["NumberOfSections"]
    table_at = opt_at + coff["SizeOfOptionalHeader"]
    if count > PEFILE_MAX_SECTIONS or table_at + SECTION_HEADER_SIZE * count > len(data):
        return None
    sections = []
    for at in range(table_at, table_at + SECTION_HEADER_SIZE * count, SECTION_HEADER_SIZE):
        if not any(bytes(data[at:at + SECTION_HEADER_SIZE])):
            return None
        h = SECTION_HEADER.unpack(data, at)
        if (h["PointerToRawData"] + h["SizeOfRawData"] > len(data)
                or h["VirtualSize"] > PEFILE_MAX_VIRTUAL_SIZE):
            return None
        sections.append(PeSection(
            name=h["Name"].rstrip(b"\0").decode("ascii", "replace"),
            virtual_address=h["VirtualAddress"], virtual_size=h["VirtualSize"],
            size_of_raw_data=h["SizeOfRawData"], pointer_to_raw_data=h["PointerToRawData"]))
    sections.sort(key=lambda s: s.virtual_address)
    return (coff["Machine"], opt["Subsystem"], opt["AddressOfEntryPoint"], opt["SizeOfImage"],
            tuple(sections), certificate)


def _read_with_pefile(data: Buffer, layer: str):
    import pefile  # on first use: plain headers and probes by magic never need it
    try:
        pe = pefile.PE(data=bytes(data), fast_load=True)
    except pefile.PEFormatError as e:
        raise FormatError(layer, str(e.value), field="e_lfanew", offset=DOS_HEADER.offset("e_lfanew")) from e
    opt = pe.OPTIONAL_HEADER
    dirs = getattr(opt, "DATA_DIRECTORY", [])
    certificate = (0, 0)
    if len(dirs) > IMAGE_DIRECTORY_ENTRY_SECURITY:
        entry = dirs[IMAGE_DIRECTORY_ENTRY_SECURITY]
        certificate = (entry.VirtualAddress, entry.Size)
    return (pe.FILE_HEADER.Machine, opt.Subsystem, opt.AddressOfEntryPoint, opt.SizeOfImage,
            tuple(_section(s) for s in pe.sections), certificate)


def _section(s) -> PeSection:
    name = s.Name.rstrip(b"\0").decode("ascii", "replace")
    return PeSection(name=name, virtual_address=s.VirtualAddress, virtual_size=s.Misc_VirtualSize,
                     size_of_raw_data=s.SizeOfRawData, pointer_to_raw_data=s.PointerToRawData)


def _certificate_table(entry: tuple[int, int], size: int, layer: str) -> tuple[int, int]:
    """The Authenticode table (DataDirectory[SECURITY]): a file offset (not an RVA) and a size."""
    offset, length = entry
    if length == 0:
        return 0, 0
    if offset + length > size:
        raise FormatError(layer, f"certificate table [{offset:#x}, "
                          f"+{length:#x}) runs past the end of the {size:#x}-byte image",
                          field="DataDirectory[SECURITY]")
    return offset, length


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
