"""Multiboot 1 and 2 for kexec_load: where the image goes, and the information structure it gets.

Specifications: The Multiboot2 Specification 2.0 (3.1 header tags, 3.3 machine
state, 3.6 boot information), The Multiboot Specification 0.6.96 (3.1 header,
3.2 machine state, 3.3 boot information).  Loader behaviour follows GRUB
(grub-core/loader/multiboot_mbi2.c, multiboot_elfxx.c) and kexec-tools
(kexec/arch/i386/kexec-mb2-x86.c, kexec-multiboot-x86.c):

* an image without an address tag (or a.out kludge) must be ELF: its PT_LOAD
  segments go to their physical addresses, the entry is ``e_entry`` turned
  into a physical address through the segment that holds it;
* with an address tag, the file from ``header_offset - (header_addr -
  load_addr)`` up to ``load_end_addr`` (0: the end of the file) goes to
  ``load_addr``, zeroes up to ``bss_end_addr``; the entry tag is then required;
* the relocatable tag (min_addr, max_addr as the highest address the image may
  occupy, align, preference) lets the loader move the whole image; the entry
  moves with it and the MBI carries a load base address tag (type 21);
* modules are page aligned (the module-alignment tag and Multiboot 1's
  PAGE_ALIGN bit ask for it; kexec segments are pages anyway).

The low 1 MiB stays untouched (seed 004: Xen's head.S trusts the BIOS Data
Area's low-memory size, which a Multiboot information structure put there
overwrote): pykexec places nothing below 1 MiB and refuses an image linked
there.  Strings get the image name as their first word because the bootloader
name is "kexec", not "GRUB 2", and Xen's ``cmdline_cook`` strips the first word
for every other loader (xen/arch/x86/setup.c).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import FormatError, UsageError
from ..formats.elf import Elf
from ..formats.layer import Layer
from ..formats.multiboot import Multiboot, MultibootHeader
from ..formats.multiboot2 import Multiboot2, Multiboot2Header
from .e820 import E820Entry, lower_upper_kib

MB2_BOOTLOADER_MAGIC = 0x36D76289
MB1_BOOTLOADER_MAGIC = 0x2BADB002
BOOTLOADER_NAME = "kexec"
LOW_MEMORY_END = 1 << 20
MB_ADDRESS_LIMIT = (1 << 32) - 1

# Multiboot2 information tag types (3.6).
TAG_END, TAG_CMDLINE, TAG_BOOT_LOADER_NAME, TAG_MODULE, TAG_BASIC_MEMINFO = 0, 1, 2, 3, 4
TAG_MMAP, TAG_ACPI_OLD, TAG_ACPI_NEW, TAG_LOAD_BASE_ADDR = 6, 14, 15, 21
KNOWN_INFO_TAGS = range(0, 22)      # what GRUB accepts in a required information request
PROVIDED_INFO_TAGS = {TAG_CMDLINE, TAG_BOOT_LOADER_NAME, TAG_MODULE, TAG_BASIC_MEMINFO, TAG_MMAP,
                      TAG_LOAD_BASE_ADDR}
MB2_MMAP_ENTRY = struct.Struct("<QQII")          # base_addr, length, type, reserved
MB2_TAG = struct.Struct("<II")
PREFERENCE = {0: "none", 1: "low", 2: "high"}

# Multiboot 1 information structure (3.3).
MB1_INFO_SIZE = 88                               # up to vbe_*; the framebuffer fields are not offered
MBI_FLAG_MEM, MBI_FLAG_CMDLINE, MBI_FLAG_MODS = 1 << 0, 1 << 2, 1 << 3
MBI_FLAG_MMAP, MBI_FLAG_LOADER_NAME = 1 << 6, 1 << 9
MB1_MODULE = struct.Struct("<IIII")              # mod_start, mod_end, string, reserved
MB1_MMAP_ENTRY = struct.Struct("<IQQI")          # size (20), base_addr, length, type
MB1_PAGE_ALIGN, MB1_MEMORY_INFO, MB1_VIDEO_MODE, MB1_AOUT_KLUDGE = 1 << 0, 1 << 1, 1 << 2, 1 << 16
MB1_SUPPORTED = MB1_PAGE_ALIGN | MB1_MEMORY_INFO | MB1_VIDEO_MODE


# -- modules ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModuleArg:
    """``--module FILE[,cmdline]`` as given."""

    path: str
    cmdline: str | None = None


def parse_module_arg(text: str) -> ModuleArg:
    """``FILE[,cmdline]``: the file name up to the first comma, the module's arguments after it."""
    path, sep, args = text.partition(",")
    if not path:
        raise UsageError(f"--module {text!r}: expected FILE[,cmdline], the file name is empty")
    return ModuleArg(path, args if sep else None)


@dataclass(frozen=True)
class Module:
    """A module's bytes and the string its MBI entry carries."""

    data: bytes = field(repr=False)
    string: str
    name: str = ""


def module_string(name: str, cmdline: str | None) -> str:
    """The module's string: its name first (stripped by Xen), then its arguments."""
    return f"{name} {cmdline}" if cmdline else name


def load_module(arg: str | ModuleArg) -> Module:
    """Read ``--module FILE[,cmdline]`` into a :class:`Module`."""
    spec = parse_module_arg(arg) if isinstance(arg, str) else arg
    try:
        data = Path(spec.path).read_bytes()
    except OSError as e:
        raise UsageError(f"--module {spec.path}: {e.strerror or e}") from e
    name = os.path.basename(spec.path)
    return Module(data, module_string(name, spec.cmdline), name)


# -- the image ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    """Bytes that go to ``paddr`` (at the image's link address), zero-filled to ``memsz``."""

    paddr: int
    data: bytes = field(repr=False)
    memsz: int


@dataclass(frozen=True)
class Relocatable:
    """The Multiboot2 relocatable tag: where the whole image may be moved."""

    min_addr: int
    max_addr: int
    align: int
    preference: str


@dataclass(frozen=True)
class MultibootImage:
    """What a Multiboot loader takes from the image: pieces, entry, and what it asks for."""

    version: int
    pieces: tuple[Piece, ...]
    entry: int
    relocatable: Relocatable | None = None
    requested: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def link_base(self) -> int:
        return min(p.paddr for p in self.pieces)

    @property
    def link_end(self) -> int:
        return max(p.paddr + p.memsz for p in self.pieces)

    @property
    def magic(self) -> int:
        return MB2_BOOTLOADER_MAGIC if self.version == 2 else MB1_BOOTLOADER_MAGIC


def headers(layer: Layer) -> tuple[Multiboot2Header | None, MultibootHeader | None]:
    """The Multiboot2 and Multiboot 1 headers of a parsed layer, either may be None."""
    if isinstance(layer, Multiboot2):
        return layer.header, None
    if isinstance(layer, Multiboot):
        return None, layer.header
    if isinstance(layer, Elf):
        found = {m["format"]: m["header"] for m in layer.multiboot}
        return found.get("multiboot2"), found.get("multiboot")
    return None, None


def multiboot2_image(layer: Layer, data: bytes) -> MultibootImage:
    """Interpret the Multiboot2 header tags of ``layer`` (GRUB ``grub_multiboot2_load``)."""
    header, _ = headers(layer)
    if header is None:
        raise FormatError(layer.format, "no Multiboot2 header", field="magic")
    if header.architecture != "i386":
        raise FormatError("multiboot2", f"architecture {header.architecture}; only i386 (0) boots on x86",
                          field="architecture", offset=header.offset + 4)
    notes: list[str] = []
    requested: list[int] = []
    address = entry = reloc = None
    for tag in header.tags:
        if tag.name == "information_request":
            types = _request_types(data, header, tag)
            unknown = [t for t in types if t not in KNOWN_INFO_TAGS]
            if unknown and not tag.optional:
                raise FormatError("multiboot2", f"requires information tag(s) {unknown} this loader does "
                                  "not know", field="information_request")
            requested.extend(types)
            missing = sorted(set(types) - PROVIDED_INFO_TAGS - {TAG_END, TAG_ACPI_OLD, TAG_ACPI_NEW})
            if missing:
                notes.append(f"the image asks for information tags {missing}, which kexec cannot provide")
        elif tag.name == "address":
            address = tag.fields
        elif tag.name == "entry_address":
            entry = tag.fields["entry_addr"]
        elif tag.name == "relocatable":
            f = tag.fields
            reloc = Relocatable(f["min_addr"], f["max_addr"], f["align"] or 1,
                                PREFERENCE.get(f["preference"], "none"))
        elif tag.name == "efi_boot_services" and not tag.optional:
            raise FormatError("multiboot2", "requires EFI boot services, which no longer exist after kexec",
                              field="efi_boot_services")
        elif tag.name in ("console_flags", "framebuffer") and not tag.optional:
            notes.append(f"the image requires a {tag.name.replace('_', ' ')} tag; kexec passes no "
                         "console or framebuffer information")
        elif tag.name.startswith("unknown_") and not tag.optional:
            raise FormatError("multiboot2", f"unsupported required header tag type {tag.type}",
                              field="tag")
    if address is not None:
        if entry is None:
            raise FormatError("multiboot2", "an address tag without an entry address tag",
                              field="entry_address")
        pieces = (_aout_piece(data, header.offset, address, "multiboot2"),)
    else:
        pieces, elf_entry = _elf_pieces(layer, "multiboot2")
        entry = elf_entry if entry is None else entry
    return MultibootImage(2, pieces, entry, reloc, tuple(requested), tuple(notes))


def multiboot1_image(layer: Layer, data: bytes) -> MultibootImage:
    """Interpret the Multiboot 1 header of ``layer`` (spec 3.1.2)."""
    _, header = headers(layer)
    if header is None:
        raise FormatError(layer.format, "no Multiboot header", field="magic")
    unknown = header.flags & 0xFFFF & ~MB1_SUPPORTED
    if unknown:
        raise FormatError("multiboot", f"header flags {unknown:#x} ask for features this loader does not "
                          "know (spec 3.1.2: the loader must then fail)", field="flags", offset=header.offset + 4)
    notes = []
    if header.flags & MB1_VIDEO_MODE:
        notes.append("the image asks for a video mode; kexec leaves the display as it is")
    if header.flags & MB1_AOUT_KLUDGE:
        f = header.fields
        address = {"header_addr": f["header_addr"], "load_addr": f["load_addr"],
                   "load_end_addr": f["load_end_addr"], "bss_end_addr": f["bss_end_addr"]}
        pieces = (_aout_piece(data, header.offset, address, "multiboot"),)
        entry = f["entry_addr"]
    else:
        pieces, entry = _elf_pieces(layer, "multiboot")
    return MultibootImage(1, pieces, entry, None, (), tuple(notes))


def _request_types(data: bytes, header: Multiboot2Header, tag) -> list[int]:
    start = header.offset + 16
    pos = start
    for t in header.tags:  # find this tag's position: tags are laid out in order
        if t is tag:
            break
        pos += (t.size + 7) & ~7
    count = (tag.size - 8) // 4
    return list(struct.unpack_from(f"<{count}I", data, pos + 8))


def _aout_piece(data: bytes, header_offset: int, f: dict, layer: str) -> Piece:
    load_addr = f["load_addr"]
    if load_addr == 0xFFFFFFFF:
        load_addr = f["header_addr"] - header_offset
    offset = header_offset - (f["header_addr"] - load_addr)
    if offset < 0:
        raise FormatError(layer, f"header_addr {f['header_addr']:#x} and load_addr {load_addr:#x} put the "
                          "load before the start of the file", field="load_addr")
    if offset >= len(data):
        raise FormatError(layer, f"the load starts at file offset {offset:#x}, past the end of the "
                          f"{len(data):#x}-byte image", field="load_addr")
    size = len(data) - offset if f["load_end_addr"] == 0 else f["load_end_addr"] - load_addr
    if size <= 0:
        raise FormatError(layer, f"load_end_addr {f['load_end_addr']:#x} is not above load_addr "
                          f"{load_addr:#x}", field="load_end_addr")
    memsz = f["bss_end_addr"] - load_addr if f["bss_end_addr"] else size
    if memsz < size:
        raise FormatError(layer, f"bss_end_addr {f['bss_end_addr']:#x} is below the end of the load",
                          field="bss_end_addr")
    # A file shorter than load_end_addr says is loaded as far as it goes, the rest zeroed (as GRUB,
    # whose short read leaves the zeroed chunk).
    return Piece(load_addr, bytes(data[offset:offset + size]), memsz)


def _elf_pieces(layer: Layer, fmt: str) -> tuple[tuple[Piece, ...], int]:
    if not isinstance(layer, Elf):
        raise FormatError(fmt, "no address tag, so the image must be an ELF file, and it is not",
                          field="address")
    if layer.machine not in ("EM_386", "EM_X86_64"):
        raise FormatError(fmt, f"an ELF for {layer.machine}, not x86", field="e_machine")
    loads = [s for s in layer.loads if s.p_memsz]
    if not loads:
        raise FormatError(fmt, "the ELF has no PT_LOAD segment", field="PT_LOAD")
    pieces = tuple(Piece(s.p_paddr, bytes(layer.segment_bytes(s)), s.p_memsz) for s in loads)
    for s in loads:   # GRUB: the entry, a virtual address, through the segment that maps it
        if s.p_vaddr <= layer.entry < s.p_vaddr + s.p_memsz:
            return pieces, layer.entry - s.p_vaddr + s.p_paddr
    raise FormatError(fmt, f"entry point {layer.entry:#x} is not inside any PT_LOAD segment", field="e_entry")


def choose_base(image: MultibootImage, *, min_addr: int = LOW_MEMORY_END) -> tuple[int, int, int, bool]:
    """(lowest, highest start, alignment, top_down) for the image's base address.

    Without a relocatable tag the image stays at its link address.  With one,
    the base may be anywhere in [min_addr, max_addr - size + 1] aligned to
    ``align``, never in the low 1 MiB; preference "high" places it top-down.
    """
    size = image.link_end - image.link_base
    r = image.relocatable
    if r is None:
        return image.link_base, image.link_base, 1, False
    low = max(r.min_addr, min_addr)
    high = min(r.max_addr, MB_ADDRESS_LIMIT) - size + 1
    if size > r.max_addr or high < low:
        raise FormatError("multiboot2", f"the {size:#x}-byte image cannot be placed within the relocatable "
                          f"tag's [{r.min_addr:#x}, {r.max_addr:#x}] above 1 MiB", field="relocatable")
    return low, high, r.align, r.preference == "high"


# -- information structures ---------------------------------------------------------------------

@dataclass(frozen=True)
class PlacedModule:
    start: int
    end: int          # exclusive, as GRUB and kexec-tools set mod_end
    string: str


def _mb2_tag(kind: int, payload: bytes) -> bytes:
    raw = MB2_TAG.pack(kind, 8 + len(payload)) + payload
    return raw + bytes(-len(raw) % 8)


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def multiboot2_info(*, cmdline: str, modules: Sequence[PlacedModule], e820: Sequence[E820Entry],
                    load_base: int | None = None, rsdp_v1: bytes | None = None, rsdp_v2: bytes | None = None,
                    bootloader_name: str = BOOTLOADER_NAME) -> bytes:
    """The Multiboot2 boot information (3.6): fixed part, then 8-aligned tags, then the end tag."""
    lower, upper = lower_upper_kib(e820)
    tags = [_mb2_tag(TAG_CMDLINE, _cstr(cmdline)),
            _mb2_tag(TAG_BOOT_LOADER_NAME, _cstr(bootloader_name))]
    for m in modules:
        tags.append(_mb2_tag(TAG_MODULE, struct.pack("<II", m.start, m.end) + _cstr(m.string)))
    tags.append(_mb2_tag(TAG_BASIC_MEMINFO, struct.pack("<II", lower, upper)))
    mmap = struct.pack("<II", MB2_MMAP_ENTRY.size, 0) + b"".join(
        MB2_MMAP_ENTRY.pack(e.addr, e.size, e.type, 0) for e in e820)
    tags.append(_mb2_tag(TAG_MMAP, mmap))
    if load_base is not None:
        tags.append(_mb2_tag(TAG_LOAD_BASE_ADDR, struct.pack("<I", load_base)))
    if rsdp_v1 is not None:
        tags.append(_mb2_tag(TAG_ACPI_OLD, rsdp_v1))
    if rsdp_v2 is not None:
        tags.append(_mb2_tag(TAG_ACPI_NEW, rsdp_v2))
    tags.append(MB2_TAG.pack(TAG_END, 8))
    body = b"".join(tags)
    return struct.pack("<II", 8 + len(body), 0) + body


def multiboot1_info(base: int, *, cmdline: str, modules: Sequence[PlacedModule], e820: Sequence[E820Entry],
                    bootloader_name: str = BOOTLOADER_NAME) -> bytes:
    """The Multiboot 1 information structure (3.3) at ``base``, with its module list, memory map
    and strings after it in the same buffer; every pointer is a 32-bit physical address."""
    lower, upper = lower_upper_kib(e820)
    mods_at = MB1_INFO_SIZE
    mmap_at = mods_at + MB1_MODULE.size * len(modules)
    mmap = b"".join(MB1_MMAP_ENTRY.pack(20, e.addr, e.size, e.type) for e in e820)
    strings_at = mmap_at + len(mmap)
    strings = bytearray()

    def string(text: str) -> int:
        addr = base + strings_at + len(strings)
        strings.extend(_cstr(text))
        return addr

    size = strings_at + len(_cstr(cmdline)) + len(_cstr(bootloader_name)) + sum(len(_cstr(m.string))
                                                                              for m in modules)
    if base + size > MB_ADDRESS_LIMIT + 1:
        raise FormatError("multiboot", f"the information structure at {base:#x} would end above 4 GiB",
                          field="mbi")
    cmdline_addr = string(cmdline)
    name_addr = string(bootloader_name)
    mods = b"".join(MB1_MODULE.pack(m.start, m.end, string(m.string), 0) for m in modules)
    flags = MBI_FLAG_MEM | MBI_FLAG_CMDLINE | MBI_FLAG_MODS | MBI_FLAG_MMAP | MBI_FLAG_LOADER_NAME
    info = bytearray(MB1_INFO_SIZE)
    struct.pack_into("<IIII", info, 0, flags, lower, upper, 0xFFFFFFFF)     # boot_device: none
    struct.pack_into("<III", info, 16, cmdline_addr, len(modules), base + mods_at)
    struct.pack_into("<II", info, 44, len(mmap), base + mmap_at)
    struct.pack_into("<I", info, 64, name_addr)
    return bytes(info) + mods + mmap + bytes(strings)


def parse_multiboot2_info(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of every tag, for tests: the inverse of :func:`multiboot2_info`."""
    total = struct.unpack_from("<I", data, 0)[0]
    pos, out = 8, []
    while pos < total:
        kind, size = MB2_TAG.unpack_from(data, pos)
        out.append((kind, bytes(data[pos + 8:pos + size])))
        if kind == TAG_END:
            break
        pos += (size + 7) & ~7
    return out
