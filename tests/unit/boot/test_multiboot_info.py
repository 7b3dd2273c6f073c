"""Multiboot 1 and 2: header interpretation, information structures, module arguments."""

from __future__ import annotations

import struct

import pytest

from pykexec.boot import multiboot_info as mb
from pykexec.boot.e820 import E820_RAM, E820_RESERVED, E820Entry
from pykexec.errors import FormatError, UsageError
from pykexec.formats import identify
from tests import builders

E820 = (E820Entry(0x1000, 0x9EC00, E820_RAM), E820Entry(0xF0000, 0x10000, E820_RESERVED),
        E820Entry(0x100000, 0x3FEE0000, E820_RAM))


# -- --module FILE[,cmdline] -------------------------------------------------------------------------

@pytest.mark.parametrize("text, path, cmdline", [
    ("/boot/vmlinuz", "/boot/vmlinuz", None),
    ("/boot/vmlinuz,console=hvc0 root=/dev/xvda", "/boot/vmlinuz", "console=hvc0 root=/dev/xvda"),
    ("initrd.img,", "initrd.img", ""),
    ("a,b=c,d", "a", "b=c,d"),
])
def test_parse_module_arg(text, path, cmdline):
    assert mb.parse_module_arg(text) == mb.ModuleArg(path, cmdline)


def test_module_arg_needs_a_file():
    with pytest.raises(UsageError, match="FILE"):
        mb.parse_module_arg(",console=hvc0")


def test_load_module_puts_the_name_first(tmp_path):
    (tmp_path / "dom0.img").write_bytes(b"KERNEL")
    m = mb.load_module(f"{tmp_path}/dom0.img,console=hvc0 earlyprintk=xen")
    assert m.data == b"KERNEL" and m.string == "dom0.img console=hvc0 earlyprintk=xen"
    assert mb.load_module(str(tmp_path / "dom0.img")).string == "dom0.img"
    with pytest.raises(UsageError, match="missing"):
        mb.load_module(str(tmp_path / "missing"))


# -- Multiboot2 information structure (spec 3.6) -----------------------------------------------------

def test_multiboot2_info_tags():
    mods = [mb.PlacedModule(0x7000000, 0x7000123, "dom0 console=hvc0"), mb.PlacedModule(0x7100000, 0x7200000, "rd")]
    raw = mb.multiboot2_info(cmdline="xen.gz console=com1", modules=mods, e820=E820, load_base=0x3F600000)
    total, reserved = struct.unpack_from("<II", raw)
    assert total == len(raw) and reserved == 0 and total % 8 == 0
    tags = mb.parse_multiboot2_info(raw)
    kinds = [t for t, _ in tags]
    assert kinds == [1, 2, 3, 3, 4, 6, 21, 0]
    assert tags[0][1] == b"xen.gz console=com1\0"
    assert tags[1][1] == b"kexec\0"
    assert struct.unpack_from("<II", tags[2][1]) == (0x7000000, 0x7000123) and tags[2][1][8:] == b"dom0 console=hvc0\0"
    assert struct.unpack("<II", tags[4][1]) == (0x9FC00 // 1024, 0x3FEE0000 // 1024)
    entry_size, version = struct.unpack_from("<II", tags[5][1])
    assert (entry_size, version) == (24, 0) and len(tags[5][1]) == 8 + 24 * len(E820)
    assert struct.unpack_from("<QQII", tags[5][1], 8 + 24 * 2) == (0x100000, 0x3FEE0000, 1, 0)
    assert struct.unpack("<I", tags[6][1]) == (0x3F600000,)
    pos = 8                                                     # every tag starts 8-byte aligned
    for kind, payload in tags:
        assert struct.unpack_from("<I", raw, pos)[0] == kind
        pos += (8 + len(payload) + 7) & ~7


def test_multiboot2_acpi_tags():
    rsdp1 = b"RSD PTR " + bytes(12)
    raw = mb.multiboot2_info(cmdline="x", modules=(), e820=E820, rsdp_v1=rsdp1)
    assert (14, rsdp1) in mb.parse_multiboot2_info(raw)


# -- Multiboot 1 information structure (spec 3.3) ----------------------------------------------------

def test_multiboot1_info_structure():
    base = 0x200000
    mods = [mb.PlacedModule(0x7000000, 0x7001000, "dom0 console=hvc0")]
    raw = mb.multiboot1_info(base, cmdline="xen.gz", modules=mods, e820=E820)
    flags, lower, upper, boot_device, cmdline, mods_count, mods_addr = struct.unpack_from("<7I", raw)
    assert flags == (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
    assert (lower, upper, boot_device) == (0x9FC00 // 1024, 0x3FEE0000 // 1024, 0xFFFFFFFF)
    assert mods_count == 1 and mods_addr == base + 88
    start, end, string, _ = struct.unpack_from("<4I", raw, mods_addr - base)
    assert (start, end) == (0x7000000, 0x7001000)
    assert raw[string - base:].split(b"\0")[0] == b"dom0 console=hvc0"
    assert raw[cmdline - base:].split(b"\0")[0] == b"xen.gz"
    mmap_length, mmap_addr = struct.unpack_from("<II", raw, 44)
    assert mmap_length == 24 * len(E820)
    assert struct.unpack_from("<IQQI", raw, mmap_addr - base + 48) == (20, 0x100000, 0x3FEE0000, 1)
    name = struct.unpack_from("<I", raw, 64)[0]
    assert raw[name - base:].split(b"\0")[0] == b"kexec"


def test_multiboot1_info_must_stay_below_4g():
    with pytest.raises(FormatError, match="4 GiB"):
        mb.multiboot1_info(0xFFFFFF00, cmdline="x" * 1000, modules=(), e820=E820)


# -- what the images ask for ------------------------------------------------------------------------

def xen_elf(*, relocatable: bool = True) -> bytes:
    """An ELF32 laid out like Xen 4.17's xen.gz: one PT_LOAD at 2 MiB, Multiboot2 header without an
    address tag, relocatable (2 MiB aligned, preference high), optional EFI tags; a Multiboot 1 header."""
    tags = [builders.mb2_tag(1, (4, 6)), builders.mb2_tag(6)]
    if relocatable:
        tags.append(builders.mb2_tag(10, (0x200000, 0xFFFFFFFF, 0x200000, 2), flags=1))
    tags += [builders.mb2_tag(4, (2,), flags=1), builders.mb2_tag(5, (0, 0, 0), flags=1),
             builders.mb2_tag(7, flags=1), builders.mb2_tag(9, (0x3DD531,), flags=1)]
    mb2 = builders.multiboot2_header(tuple(tags))
    load = mb2 + bytes(-len(mb2) % 8) + builders.multiboot_header(0x3) + b"\x90" * 64
    return builders.elf32(load=load, vaddr=0x200000, entry=0x200000, bss=0x1A7000,
                          notes=((b"Xen", 5, b"xen-3.0\0"),))


def test_xen_like_elf_by_multiboot2_loads_its_pt_load():
    layer = identify(xen_elf())
    image = mb.multiboot2_image(layer, layer.data)
    assert image.version == 2 and image.magic == 0x36D76289
    (piece,) = image.pieces
    assert piece.paddr == 0x200000 and piece.memsz == len(piece.data) + 0x1A7000
    assert image.entry == 0x200000
    assert image.relocatable == mb.Relocatable(0x200000, 0xFFFFFFFF, 0x200000, "high")
    assert image.requested == (4, 6) and image.notes == ()


def test_xen_like_elf_by_multiboot1():
    layer = identify(xen_elf())
    image = mb.multiboot1_image(layer, layer.data)
    assert image.version == 1 and image.entry == 0x200000 and image.pieces[0].paddr == 0x200000


def test_address_tag_image():
    data = builders.multiboot2_image(load_addr=0x200000, image_size=0x1000)
    layer = identify(data)
    image = mb.multiboot2_image(layer, data)
    (piece,) = image.pieces
    assert piece.paddr == 0x200000 and piece.data == data and piece.memsz == 0x2000   # short file: the rest zeroed
    assert image.entry == 0x200080


def test_address_tag_without_entry_tag_is_refused():
    tags = (builders.mb2_tag(2, (0x200000, 0x200000, 0x201000, 0)),)
    data = builders.multiboot2_image(tags)
    with pytest.raises(FormatError, match="entry address tag"):
        mb.multiboot2_image(identify(data), data)


def test_required_efi_boot_services_cannot_be_had():
    tags = (builders.mb2_tag(2, (0x200000, 0x200000, 0x201000, 0)), builders.mb2_tag(3, (0x200080,)),
            builders.mb2_tag(7))
    data = builders.multiboot2_image(tags)
    with pytest.raises(FormatError, match="EFI boot services"):
        mb.multiboot2_image(identify(data), data)


def test_required_unknown_information_request_is_refused():
    tags = (builders.mb2_tag(1, (4, 6, 99)), builders.mb2_tag(2, (0x200000, 0x200000, 0x201000, 0)),
            builders.mb2_tag(3, (0x200080,)))
    data = builders.multiboot2_image(tags)
    with pytest.raises(FormatError, match=r"\[99\]"):
        mb.multiboot2_image(identify(data), data)
    optional = (builders.mb2_tag(1, (4, 6, 8), flags=1), *tags[1:])
    data = builders.multiboot2_image(optional)
    assert mb.multiboot2_image(identify(data), data).requested == (4, 6, 8)


def test_relocatable_tag_range():
    tags = (builders.mb2_tag(2, (0x200000, 0x200000, 0x201000, 0x202000)), builders.mb2_tag(3, (0x200080,)),
            builders.mb2_tag(10, (0x200000, 0xFFFFFFFF, 0x200000, 2)))
    data = builders.multiboot2_image(tags)
    image = mb.multiboot2_image(identify(data), data)
    assert image.relocatable == mb.Relocatable(0x200000, 0xFFFFFFFF, 0x200000, "high")
    low, high, align, top_down = mb.choose_base(image)
    assert (low, high, align, top_down) == (0x200000, 0xFFFFFFFF - 0x2000 + 1, 0x200000, True)


def test_relocation_never_goes_below_1_mib():
    tags = (builders.mb2_tag(2, (0x200000, 0x200000, 0x201000, 0)), builders.mb2_tag(3, (0x200080,)),
            builders.mb2_tag(10, (0x0, 0x7FFFF, 0x1000, 1)))
    data = builders.multiboot2_image(tags)
    image = mb.multiboot2_image(identify(data), data)
    with pytest.raises(FormatError, match="above 1 MiB"):
        mb.choose_base(image)


def test_multiboot1_aout_kludge():
    data = builders.multiboot_image(0x00010003)
    layer = identify(data)
    image = mb.multiboot1_image(layer, data)
    (piece,) = image.pieces
    assert image.version == 1 and image.magic == 0x2BADB002
    assert piece.paddr == 0x100000 and piece.data == data and piece.memsz == len(data) + 0x1000
    assert image.entry == 0x100030


def test_multiboot1_unknown_required_flag():
    data = builders.multiboot_image(0x00010003 | 1 << 5)
    with pytest.raises(FormatError, match="0x20"):
        mb.multiboot1_image(identify(data), data)


def test_multiboot1_elf_entry_through_its_segment():
    data = builders.elf32(load=builders.multiboot_header(0x3) + b"\x90" * 32, vaddr=0xC0100000, entry=0xC0100010)
    layer = identify(data)
    # the builder links vaddr == paddr; move paddr to see the vaddr -> paddr translation
    seg = layer.loads[0]
    image = mb.multiboot1_image(layer, data)
    assert image.entry == 0xC0100010 - seg.p_vaddr + seg.p_paddr
