"""Multiboot requirements a loader must refuse when it does not implement them.

Multiboot 0.6.96 §3.1.2: "If bit 0 in the 'flags' word is set [...] Any bits in
the low 16 bits that the boot loader does not understand [...] it must fail".
pykexec implements bits 0 (PAGE_ALIGN), 1 (MEMORY_INFO) and 2 (VIDEO_MODE).
Multiboot2 2.0 §3.1.3: a tag without the 'optional' bit 0 in its flags must be
honoured; §3.1.4: every type listed in a required information request must be
understood.  Tag types 0-10 and information types 0-21 are the ones the
specification (and GRUB's multiboot2.h) defines.
"""

from __future__ import annotations

import pytest

from pykexec import formats
from pykexec.errors import NotLoadable
from pykexec.formats.multiboot import Multiboot
from pykexec.formats.multiboot2 import Multiboot2
from pykexec.formats.prepare import prepare
from tests import builders as b

ADDRESS = b.mb2_tag(2, (0x200000, 0x200000, 0x201000, 0))
ENTRY = b.mb2_tag(3, (0x200080,))


def _refused(data: bytes) -> NotLoadable:
    with pytest.raises(NotLoadable) as info:
        prepare(data)
    assert "\n" not in str(info.value)
    return info.value


# ---------------------------------------------------------------- Multiboot 1


@pytest.mark.parametrize("bit", range(3, 16))
def test_multiboot1_required_bit_not_implemented_is_refused(bit):
    data = b.multiboot_image(0x00010003 | 1 << bit, header_offset=8)
    layer = formats.identify(data)
    assert isinstance(layer, Multiboot) and layer.header.unsupported_flags == 1 << bit
    err = _refused(data)
    assert (err.layer, err.field, err.offset) == ("multiboot", "flags", 8 + 4)
    assert f"requires flags {1 << bit:#x}" in str(err) and "must then fail" in str(err)
    assert [x.format for x in formats.unwrap(data)] == ["multiboot"]  # inspect still reports it


@pytest.mark.parametrize("flags", [0x0, 0x1, 0x2, 0x4 | 0x10000, 0x7 | 0x10000, 0x10003 | 1 << 20,
                                   0x10003 | 0xFFFE0000])
def test_multiboot1_implemented_and_high_bits_load(flags):
    data = b.multiboot_image(flags | 0x10000)
    assert formats.identify(data).header.unsupported_flags == 0
    assert prepare(data).kernel_layer.format == "multiboot"


# ---------------------------------------------------------------- Multiboot2


@pytest.mark.parametrize("ttype", [11, 12, 0x100, 0xFFFF])
def test_multiboot2_required_unknown_tag_is_refused(ttype):
    tags = (ADDRESS, ENTRY, b.mb2_tag(ttype, (1, 2)))
    data = b.multiboot2_image(tags)
    err = _refused(data)
    # the tag follows the 16-byte header and two tags of 24 and 16 bytes
    assert (err.layer, err.field, err.offset) == ("multiboot2", "type", 16 + 24 + 16)
    assert f"requires tag type {ttype}" in str(err)
    optional = b.multiboot2_image((ADDRESS, ENTRY, b.mb2_tag(ttype, (1, 2), flags=1)))
    assert prepare(optional).kernel_layer.format == "multiboot2"


def test_multiboot2_required_efi_boot_services_is_refused():
    err = _refused(b.multiboot2_image((ADDRESS, ENTRY, b.mb2_tag(7))))
    assert err.field == "type" and "EFI boot services" in str(err)
    assert prepare(b.multiboot2_image((ADDRESS, ENTRY, b.mb2_tag(7, flags=1)))).kernel_layer


@pytest.mark.parametrize("types, unknown", [((4, 6, 22), [22]), ((99,), [99]), ((1, 0x12345678), [0x12345678])])
def test_multiboot2_required_unknown_information_is_refused(types, unknown):
    data = b.multiboot2_image((b.mb2_tag(1, types), ADDRESS, ENTRY))
    err = _refused(data)
    assert (err.field, err.offset) == ("mbi_tag_types", 16 + 8)
    assert f"information tag types {unknown}" in str(err)
    optional = b.multiboot2_image((b.mb2_tag(1, types, flags=1), ADDRESS, ENTRY))
    assert prepare(optional).kernel_layer.format == "multiboot2"


@pytest.mark.parametrize("ttype", [1, 2, 3, 4, 5, 6, 8, 9, 10])
def test_multiboot2_implemented_required_tags_load(ttype):
    tags = {1: b.mb2_tag(1, tuple(range(22))), 4: b.mb2_tag(4, (0,)), 5: b.mb2_tag(5, (0, 0, 0)),
            6: b.mb2_tag(6), 8: b.mb2_tag(8, (0x200080,)), 9: b.mb2_tag(9, (0x200080,)),
            10: b.mb2_tag(10, (0x200000, 0xFFFFFFFF, 0x1000, 0))}
    data = b.multiboot2_image((ADDRESS, ENTRY) + ((tags[ttype],) if ttype in tags else ()))
    assert prepare(data).kernel_layer.format == "multiboot2"


def test_multiboot2_information_request_is_shown():
    data = b.multiboot2_image((b.mb2_tag(1, (1, 6, 14, 21, 99)), ADDRESS, ENTRY))
    report = formats.unwrap(data)[0].to_json()
    # names are multiboot2.h's MULTIBOOT_TAG_TYPE_* in lower case
    assert report["information_request"] == ["cmdline(1)", "mmap(6)", "acpi_old(14)",
                                             "load_base_addr(21)", "unknown_99(99)"]
    [request] = [t for t in report["header"]["tags"] if t["type"] == 1]
    assert request["mbi_tag_types"] == [1, 6, 14, 21, 99] and request["optional"] is False
    optional = b.multiboot2_image((b.mb2_tag(1, (4,), flags=1), ADDRESS, ENTRY))
    layer = formats.identify(optional)
    assert isinstance(layer, Multiboot2) and layer.information_request == ("basic_meminfo(4)", "optional")


# ---------------------------------------------------------------- inside an ELF


def test_elf_booted_by_its_multiboot2_header_is_refused_for_a_required_unknown_tag():
    mb2 = b.multiboot2_header((b.mb2_tag(11),))
    data = b.elf32(load=mb2 + b"\x90" * 64, notes=((b"Xen", 5, b"xen-3.0\0"),))
    err = _refused(data)
    assert err.layer == "multiboot2" and "requires tag type 11" in str(err)


def test_elf_booted_by_its_multiboot1_header_is_refused_for_a_required_unknown_flag():
    data = b.elf32(load=b.multiboot_header(0x3 | 1 << 7) + b"\x90" * 64, notes=())
    err = _refused(data)
    assert err.layer == "multiboot" and err.field == "flags" and "0x80" in str(err)


def test_a_linux_vmlinux_is_not_refused_for_its_multiboot_header():
    data = b.elf64(load=b.multiboot_header(0x3 | 1 << 7) + b"\x90" * 64)  # a Linux note
    assert prepare(data).kernel_layer.format == "elf"
