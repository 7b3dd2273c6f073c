"""Multiboot 1 (0.6.96 §3.1) and Multiboot2 (2.0 §3.1) headers in flat images."""

from __future__ import annotations

import pytest

from pykexec import formats
from pykexec.errors import FormatError
from pykexec.formats import multiboot, multiboot2
from pykexec.formats.multiboot import Multiboot
from pykexec.formats.multiboot2 import Multiboot2
from pykexec.formats.prepare import prepare
from tests import builders as b

from ..contract import parse_or_error, truncations, unwrap_or_error

# ---------------------------------------------------------------- Multiboot 1


@pytest.mark.parametrize("flags, names, fields", [
    (0x00000003, ("PAGE_ALIGN", "MEMORY_INFO"), set()),
    (0x00010003, ("PAGE_ALIGN", "MEMORY_INFO", "AOUT_KLUDGE"), set(multiboot.ADDRESS_FIELDS)),
    (0x00010007, ("PAGE_ALIGN", "MEMORY_INFO", "VIDEO_MODE", "AOUT_KLUDGE"),
     set(multiboot.ADDRESS_FIELDS) | set(multiboot.VIDEO_FIELDS)),
])
def test_multiboot_header(flags, names, fields):
    layer = formats.identify(b.multiboot_image(flags))
    assert isinstance(layer, Multiboot) and layer.format == "multiboot" and layer.arch == "x86"
    h = layer.header
    assert (h.offset, h.flags, h.flag_names, set(h.fields)) == (0, flags, names, fields)
    if fields:
        assert h.fields["load_addr"] == 0x100000 and h.fields["entry_addr"] == 0x100000 + 48
    if flags & 4:
        assert (h.fields["width"], h.fields["height"], h.fields["depth"]) == (1024, 768, 32)
    assert prepare(b.multiboot_image(flags)).kernel_layer.format == "multiboot"


@pytest.mark.parametrize("offset, found", [(0, True), (4, True), (8188 - 12, True), (2, False),
                                           (8192, False), (8196, False)])
def test_multiboot_search_window_and_alignment(offset, found):
    image = b.multiboot_image(header_offset=offset)
    header = multiboot.find(image)
    assert (header is not None and header.offset == offset) == found


def test_multiboot_bad_checksum_is_not_a_header():
    image = b.multiboot_image(checksum=0x12345678)
    assert multiboot.find(image) is None
    assert isinstance(unwrap_or_error(image), FormatError)


def test_multiboot_address_fields_past_the_end():
    image = b.multiboot_image(0x00010003)[:20]
    err = parse_or_error(multiboot.parse, image)
    assert isinstance(err, FormatError) and (err.field, err.offset) == ("header_addr", 12)


def test_multiboot_second_candidate_after_a_bad_one():
    bad = b.multiboot_header(checksum=1)
    good = b.multiboot_header(0x3)
    image = bad + bytes(4) + good + bytes(64)
    assert multiboot.find(image).offset == len(bad) + 4


@pytest.mark.parametrize("flags", [0x3, 0x10003, 0x10007])
def test_multiboot_truncation(flags):
    image = b.multiboot_image(flags)
    for n in truncations(image, len(image)):
        assert isinstance(parse_or_error(multiboot.parse, image[:n]), (Multiboot, FormatError))
        unwrap_or_error(image[:n])


# ---------------------------------------------------------------- Multiboot2


def test_multiboot2_header():
    layer = formats.identify(b.multiboot2_image())
    assert isinstance(layer, Multiboot2) and layer.format == "multiboot2" and layer.arch == "x86"
    h = layer.header
    assert (h.offset, h.architecture) == (0, "i386")
    assert [t.name for t in h.tags] == ["information_request", "address", "entry_address"]
    assert h.tag("address").fields == {"header_addr": 0x100000, "load_addr": 0x100000,
                                       "load_end_addr": 0x101000, "bss_end_addr": 0x102000}
    assert h.tag("entry_address").fields == {"entry_addr": 0x100080}
    assert h.tag("framebuffer") is None
    layer.to_json()


@pytest.mark.parametrize("tag, name, fields", [
    (b.mb2_tag(5, (1024, 768, 32), flags=1), "framebuffer", {"width": 1024, "height": 768, "depth": 32}),
    (b.mb2_tag(10, (0x200000, 0xFFFFFFFF, 0x200000, 1)), "relocatable",
     {"min_addr": 0x200000, "max_addr": 0xFFFFFFFF, "align": 0x200000, "preference": 1}),
    (b.mb2_tag(9, (0x100040,)), "entry_address_efi64", {"entry_addr": 0x100040}),
    (b.mb2_tag(7), "efi_boot_services", {}),
    (b.mb2_tag(0x77, (1, 2)), "unknown_119", {}),
    (b.mb2_tag(2, (1,)), "address", {"header_addr": 1}),
])
def test_multiboot2_tags(tag, name, fields):
    t = multiboot2.parse(b.multiboot2_image((tag,))).header.tags[0]
    assert (t.name, t.fields) == (name, fields)


def test_multiboot2_optional_flag():
    t = multiboot2.parse(b.multiboot2_image((b.mb2_tag(5, (0, 0, 0), flags=1),))).header.tags[0]
    assert t.optional is True


@pytest.mark.parametrize("arch, name, layer_arch", [(0, "i386", "x86"), (4, "mips32", None),
                                                     (9, "unknown_9", None)])
def test_multiboot2_architecture(arch, name, layer_arch):
    layer = multiboot2.parse(b.multiboot2_image(arch=arch))
    assert (layer.header.architecture, layer.arch) == (name, layer_arch)


@pytest.mark.parametrize("offset, found", [(0, True), (8, True), (32768 - 64, True), (4, False),
                                           (32768, False)])
def test_multiboot2_search_window_and_alignment(offset, found):
    header = multiboot2.find(b.multiboot2_image(header_offset=offset))
    assert (header is not None and header.offset == offset) == found


@pytest.mark.parametrize("kw, field", [
    ({"header_length": 16}, "header_length"),
    ({"header_length": 0xFFFFFFF0}, "header_length"),
    ({"header_length": 0x10000}, "header_length"),
    ({"end_tag": False}, "tag"),
    ({"tags": (b.mb2_tag(2, size=4),)}, "size"),
    ({"tags": (b.mb2_tag(2, size=0xFFFFFFF8),)}, "size"),
    ({"tags": (b.mb2_tag(2, size=0),)}, "size"),
])
def test_multiboot2_malformed(kw, field):
    err = parse_or_error(multiboot2.parse, b.multiboot2_image(**kw))
    assert isinstance(err, FormatError) and err.layer == "multiboot2" and err.field == field


def test_multiboot2_truncation():
    image = b.multiboot2_image()
    for n in truncations(image, len(image)):
        assert isinstance(parse_or_error(multiboot2.parse, image[:n]), (Multiboot2, FormatError))
        unwrap_or_error(image[:n])


def test_both_headers_in_a_flat_image_prefers_multiboot2():
    image = b.multiboot2_header() + bytes(8) + b.multiboot_header(0x3) + bytes(64)
    assert formats.identify(image).format == "multiboot2"
