"""LoongArch vmlinux.efi (asm/image.h): a PE image whose COFF Machine is LoongArch64."""

from __future__ import annotations

import pytest

from pykexec import formats
from pykexec.errors import FormatError
from pykexec.formats import loongarch_image
from pykexec.formats.loongarch_image import LoongarchImage
from tests import builders as b

from ..contract import parse_or_error, truncations, unwrap_or_error

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection


@pytest.mark.parametrize("name, offset", [("kernel_entry", 8), ("kernel_asize", 0x10),
                                          ("text_offset", 0x18), ("pe_header", 0x3C)])
def test_header_offsets_are_pinned(name, offset):
    assert loongarch_image.HEADER.offset(name) == offset


def test_fields_reported():
    layer = formats.identify(b.loongarch_image(kernel_entry=0x9000000001234000,
                                               kernel_asize=0x2340000, text_offset=0x200000))
    assert isinstance(layer, LoongarchImage)
    assert layer.arch == "loongarch64" and layer.pe_header is True
    assert (layer.kernel_entry, layer.image_size, layer.text_offset) == (
        0x9000000001234000, 0x2340000, 0x200000)


@pytest.mark.parametrize("machine", [b.IMAGE_FILE_MACHINE_AMD64, b.IMAGE_FILE_MACHINE_ARM64, 0x6232])
def test_other_machines_are_not_loongarch(machine):
    image = b.loongarch_image(machine=machine)
    assert not loongarch_image.probe(image)
    assert isinstance(parse_or_error(loongarch_image.parse, image), FormatError)
    assert formats.identify(image).format == "pe"


def test_loongarch_zboot_is_a_zboot():
    zb = b.zboot(b.loongarch_image(), machine=b.IMAGE_FILE_MACHINE_LOONGARCH64)
    assert not loongarch_image.probe(zb)
    assert [l.format for l in formats.unwrap(zb)] == ["zboot", "gzip", "loongarch-image"]


def test_loongarch_uki_is_a_uki():
    """A UKI built for LoongArch64 has COFF Machine 0x6264 too; its .linux section makes it
    a UKI, as for every other architecture."""
    u = b.uki(b.loongarch_image(), machine=b.IMAGE_FILE_MACHINE_LOONGARCH64)
    assert [l.format for l in formats.unwrap(u)] == ["uki", "loongarch-image"]


def test_loongarch_addon_is_an_addon():
    a = b.addon(machine=b.IMAGE_FILE_MACHINE_LOONGARCH64)
    assert formats.identify(a).format == "uki-addon"


def test_truncation():
    image = b.loongarch_image()
    for n in truncations(image, 0x200, stride=4):
        result = parse_or_error(loongarch_image.parse, image[:n])
        assert isinstance(result, (LoongarchImage, FormatError))
        unwrap_or_error(image[:n])
