"""Multiboot2 headers (The Multiboot2 Specification, version 2.0, section 3.1).

The header is 64-bit aligned within the first 32768 bytes of the image:
``u32 magic 0xE85250D6, u32 architecture, u32 header_length, u32 checksum``
(the four sum to zero mod 2^32), then 8-byte aligned tags
``u16 type, u16 flags, u32 size`` ending with a type-0 tag of size 8.

"If bit 0 of flags (also known as 'optional') is set, the bootloader may
ignore this tag if it lacks relevant support" (3.1.3): a tag without it is a
requirement, and so is every type listed in a required information request
(3.1.4: "If bootloader doesn't understand a tag from the list [...] it must
fail").  pykexec's loader (``boot/multiboot_info.py``, after GRUB's
``grub_multiboot2_load``) implements tag types 1-6 and 8-10 (the EFI entry
tags 8 and 9 are ignored, as GRUB ignores them outside EFI) and information
types 0-21 (3.6); it cannot honour a required EFI boot services tag (7),
since boot services are gone after kexec.  Such a header is reported, and
refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError, NotLoadable
from ..layout import aligned_u32
from .layer import Buffer, Format, Layer, ignoring_limits

MAGIC = 0xE85250D6
SEARCH = 32768
ARCHITECTURES = {0: "i386", 4: "mips32"}
OPTIONAL = 1
TAG_INFORMATION_REQUEST, TAG_EFI_BOOT_SERVICES = 1, 7
#: Multiboot2 information tag types (3.6, multiboot2.h ``MULTIBOOT_TAG_TYPE_*``)
INFO_TAGS = {0: "end", 1: "cmdline", 2: "boot_loader_name", 3: "module", 4: "basic_meminfo",
             5: "bootdev", 6: "mmap", 7: "vbe", 8: "framebuffer", 9: "elf_sections", 10: "apm",
             11: "efi32", 12: "efi64", 13: "smbios", 14: "acpi_old", 15: "acpi_new",
             16: "network", 17: "efi_mmap", 18: "efi_bs", 19: "efi32_ih", 20: "efi64_ih",
             21: "load_base_addr"}
# type: (name, field names of the u32s after the 8-byte tag header)
TAGS = {
    1: ("information_request", ()),
    2: ("address", ("header_addr", "load_addr", "load_end_addr", "bss_end_addr")),
    3: ("entry_address", ("entry_addr",)),
    4: ("console_flags", ("console_flags",)),
    5: ("framebuffer", ("width", "height", "depth")),
    6: ("module_alignment", ()),
    7: ("efi_boot_services", ()),
    8: ("entry_address_efi32", ("entry_addr",)),
    9: ("entry_address_efi64", ("entry_addr",)),
    10: ("relocatable", ("min_addr", "max_addr", "align", "preference")),
}


@dataclass(frozen=True)
class Tag:
    type: int
    name: str
    optional: bool
    size: int
    fields: dict[str, int]
    offset: int = 0
    #: an information request's ``mbi_tag_types`` (3.1.4), and their names (3.6)
    mbi_tag_types: tuple[int, ...] = ()
    mbi_tag_names: tuple[str, ...] = ()

    def refusal(self) -> NotLoadable | None:
        """Why pykexec's loader cannot honour this tag, when it is required; else None."""
        if self.optional:
            return None
        if self.name.startswith("unknown_"):
            return NotLoadable("multiboot2", f"the header requires tag type {self.type}, which "
                               "pykexec does not implement (3.1.3: the loader must then fail)",
                               field="type", offset=self.offset)
        if self.type == TAG_EFI_BOOT_SERVICES:
            return NotLoadable("multiboot2", "the header requires EFI boot services (tag type 7), "
                               "which no longer exist after kexec", field="type", offset=self.offset)
        unknown = [t for t in self.mbi_tag_types if t not in INFO_TAGS]
        if unknown:
            return NotLoadable("multiboot2", f"the header requires information tag types {unknown}, "
                               "which pykexec does not know (3.1.4: the loader must then fail)",
                               field="mbi_tag_types", offset=self.offset + 8)
        return None


@dataclass(frozen=True)
class Multiboot2Header:
    offset: int
    architecture: str
    header_length: int
    tags: tuple[Tag, ...]

    def tag(self, name: str) -> Tag | None:
        return next((t for t in self.tags if t.name == name), None)

    def refusal(self) -> NotLoadable | None:
        """The first required tag pykexec's loader cannot honour, as a refusal; else None."""
        return next((r for t in self.tags if (r := t.refusal()) is not None), None)


@dataclass(frozen=True)
class Multiboot2(Layer):
    """An image recognised by its Multiboot2 header alone (not an ELF)."""

    FORMAT = "multiboot2"
    KERNEL = True
    header: Multiboot2Header | None = None
    #: the information the header asks for (3.1.4), as ``name(type)``; "optional" last when
    #: the request tag is optional
    information_request: tuple[str, ...] = ()

    def refusal(self) -> NotLoadable | None:
        return None if self.header is None else self.header.refusal()


def find(data: Buffer) -> Multiboot2Header | None:
    """The first valid header in the search window, parsed; None when absent."""
    for at in aligned_u32(data, MAGIC, SEARCH, 8):
        if at + 16 <= len(data):
            magic, arch, length, checksum = struct.unpack_from("<4I", data, at)
            if (magic + arch + length + checksum) & 0xFFFFFFFF == 0:
                return _parse_header(data, at, arch, length)
    return None


def _parse_header(data: Buffer, at: int, arch: int, length: int) -> Multiboot2Header:
    end = at + length
    if length < 24 or end > len(data):
        raise FormatError("multiboot2", f"header_length {length} runs outside the image",
                          field="header_length", offset=at + 8)
    tags, pos = [], at + 16
    while True:
        if pos + 8 > end:
            raise FormatError("multiboot2", "tags end without an end tag", field="tag", offset=pos)
        ttype, flags, size = struct.unpack_from("<HHI", data, pos)
        if ttype == 0:
            break
        if size < 8 or pos + size > end:
            raise FormatError("multiboot2", f"tag size {size} is invalid", field="size", offset=pos + 4)
        name, names = TAGS.get(ttype, (f"unknown_{ttype}", ()))
        count = min(len(names), (size - 8) // 4)
        values = struct.unpack_from(f"<{count}I", data, pos + 8)
        types: tuple[int, ...] = ()
        if ttype == TAG_INFORMATION_REQUEST:
            types = struct.unpack_from(f"<{(size - 8) // 4}I", data, pos + 8)
        tags.append(Tag(ttype, name, bool(flags & OPTIONAL), size, dict(zip(names, values)), pos,
                        types, tuple(INFO_TAGS.get(t, f"unknown_{t}") for t in types)))
        pos += (size + 7) & ~7
    return Multiboot2Header(offset=at, architecture=ARCHITECTURES.get(arch, f"unknown_{arch}"),
                            header_length=length, tags=tuple(tags))


def probe(data: Buffer) -> bool:
    try:
        return find(data) is not None
    except FormatError:
        return True  # a header is there, and parse() will say what is wrong with it


def parse(data: Buffer) -> Multiboot2:
    header = find(data)
    if header is None:
        raise FormatError("multiboot2", f"no header in the first {SEARCH} bytes", field="magic")
    return Multiboot2(arch="x86" if header.architecture == "i386" else None, data=data,
                      header=header, information_request=information_request(header))


def information_request(header: Multiboot2Header) -> tuple[str, ...]:
    """The information tags the header's request tags ask for, readably: ``mmap(6)``."""
    out: list[str] = []
    for tag in header.tags:
        if tag.type == TAG_INFORMATION_REQUEST:
            out += [f"{n}({t})" for t, n in zip(tag.mbi_tag_types, tag.mbi_tag_names)]
            out += ["optional"] if tag.optional else []
    return tuple(out)


FORMAT = Format("multiboot2", probe, ignoring_limits(parse), "magic 0xE85250D6 in the first 32 KiB")
