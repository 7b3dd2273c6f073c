"""Lay a PE/COFF image out in memory as a UEFI image loader does.

PE/COFF specification, "Section Table" and "The .reloc Section": the headers
(SizeOfHeaders bytes) go at the image base, each section's raw data at its
VirtualAddress, zero-filled up to VirtualSize, then base relocations are
applied for the distance between ImageBase and the actual base.  The Linux
stub reads its setup header from the mapped headers and systemd-stub parses
its own section table there, so the headers are part of the image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pefile

from ..formats.pe import (DOS_HEADER, DOS_MAGIC, IMAGE_DIRECTORY_ENTRY_BASERELOC, IMAGE_SCN_MEM_EXECUTE,
                          PE32PLUS_MAGIC)
from . import constants as c
from .memory import EfiStatusError

REL_ABSOLUTE, REL_HIGH, REL_LOW, REL_HIGHLOW, REL_DIR64 = 0, 1, 2, 3, 10


@dataclass(frozen=True)
class Section:
    name: str
    virtual_address: int
    virtual_size: int
    raw_offset: int
    raw_size: int
    characteristics: int


@dataclass(frozen=True)
class PeInfo:
    """What the loader needs from the headers."""

    machine: int
    subsystem: int
    image_base: int
    size_of_image: int
    size_of_headers: int
    section_alignment: int
    entry: int
    sections: tuple[Section, ...]
    reloc_rva: int
    reloc_size: int

    @property
    def executable_ranges(self) -> tuple[tuple[int, int], ...]:
        """RVA ranges of sections marked IMAGE_SCN_MEM_EXECUTE."""
        return tuple((s.virtual_address, s.virtual_address + max(s.virtual_size, s.raw_size))
                     for s in self.sections if s.characteristics & IMAGE_SCN_MEM_EXECUTE)


def read_pe(data: bytes) -> PeInfo:
    """Parse the headers; a buffer that is not a PE image is EFI_LOAD_ERROR."""
    if len(data) < DOS_HEADER.size or data[:2] != DOS_MAGIC:
        raise EfiStatusError(c.EFI_LOAD_ERROR, "no 'MZ' at offset 0")
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as e:
        raise EfiStatusError(c.EFI_LOAD_ERROR, f"not a PE image: {e.value}") from e
    opt = pe.OPTIONAL_HEADER
    if opt.Magic != PE32PLUS_MAGIC:
        raise EfiStatusError(c.EFI_UNSUPPORTED, f"not a PE32+ image (magic {opt.Magic:#x})")
    dirs = opt.DATA_DIRECTORY
    reloc = dirs[IMAGE_DIRECTORY_ENTRY_BASERELOC] if len(dirs) > IMAGE_DIRECTORY_ENTRY_BASERELOC else None
    sections = tuple(Section(s.Name.rstrip(b"\0").decode("ascii", "replace"), s.VirtualAddress,
                             s.Misc_VirtualSize, s.PointerToRawData, s.SizeOfRawData,
                             s.Characteristics) for s in pe.sections)
    info = PeInfo(machine=pe.FILE_HEADER.Machine, subsystem=opt.Subsystem,
                  image_base=opt.ImageBase, size_of_image=opt.SizeOfImage,
                  size_of_headers=opt.SizeOfHeaders,
                  section_alignment=max(opt.SectionAlignment, c.PAGE),
                  entry=opt.AddressOfEntryPoint, sections=sections,
                  reloc_rva=reloc.VirtualAddress if reloc else 0,
                  reloc_size=reloc.Size if reloc else 0)
    for s in sections:
        if s.virtual_address + max(s.virtual_size, 0) > info.size_of_image \
                or s.raw_offset + min(s.raw_size, s.virtual_size or s.raw_size) > len(data):
            raise EfiStatusError(c.EFI_LOAD_ERROR, f"section {s.name!r} lies outside the image")
    if not 0 < info.entry < info.size_of_image:
        raise EfiStatusError(c.EFI_LOAD_ERROR, f"entry point {info.entry:#x} outside the image")
    return info


def layout(data: bytes, info: PeInfo, base: int) -> bytearray:
    """The image as it sits in memory at ``base``: headers, sections, relocations applied."""
    image = bytearray(info.size_of_image)
    hdr = min(info.size_of_headers, len(data), info.size_of_image)
    image[:hdr] = data[:hdr]
    for s in info.sections:
        size = min(s.raw_size, s.virtual_size) if s.virtual_size else s.raw_size
        image[s.virtual_address:s.virtual_address + size] = data[s.raw_offset:s.raw_offset + size]
    delta = (base - info.image_base) & 0xFFFFFFFFFFFFFFFF
    if delta and info.reloc_size:
        relocate(image, info.reloc_rva, info.reloc_size, delta)
    return image


def relocate(image: bytearray, rva: int, size: int, delta: int) -> int:
    """Apply the base relocation blocks at ``rva``; return how many fixups were applied."""
    pos, end, applied = rva, rva + size, 0
    while pos + 8 <= end:
        page, block = struct.unpack_from("<II", image, pos)
        if block < 8 or pos + block > end:
            if block == 0:
                break
            raise EfiStatusError(c.EFI_LOAD_ERROR, f"base relocation block at {pos:#x} has "
                                 f"size {block}")
        for i in range(pos + 8, pos + block - 1, 2):
            entry = struct.unpack_from("<H", image, i)[0]
            kind, off = entry >> 12, page + (entry & 0xFFF)
            if kind == REL_ABSOLUTE:
                continue
            if kind == REL_DIR64:
                v = struct.unpack_from("<Q", image, off)[0]
                struct.pack_into("<Q", image, off, (v + delta) & 0xFFFFFFFFFFFFFFFF)
            elif kind == REL_HIGHLOW:
                v = struct.unpack_from("<I", image, off)[0]
                struct.pack_into("<I", image, off, (v + delta) & 0xFFFFFFFF)
            elif kind == REL_HIGH:
                v = struct.unpack_from("<H", image, off)[0]
                struct.pack_into("<H", image, off, (v + (delta >> 16)) & 0xFFFF)
            elif kind == REL_LOW:
                v = struct.unpack_from("<H", image, off)[0]
                struct.pack_into("<H", image, off, (v + delta) & 0xFFFF)
            else:
                raise EfiStatusError(c.EFI_UNSUPPORTED, f"base relocation type {kind} at "
                                     f"rva {off:#x}")
            applied += 1
        pos += block
    return applied
