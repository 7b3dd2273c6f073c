"""arm64 Image (booting.rst): the 64-byte header, magic at 0x38, flags decoded."""

from __future__ import annotations

import pytest

from pykexec import formats
from pykexec.errors import FormatError
from pykexec.formats import arm64_image, pe
from pykexec.formats.arm64_image import Arm64Image
from pykexec.formats.prepare import prepare
from tests import builders as b

from ..contract import parse_or_error, truncations, unwrap_or_error

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection


@pytest.mark.parametrize("name, offset", [("code0", 0), ("code1", 4), ("text_offset", 8),
                                          ("image_size", 0x10), ("flags", 0x18), ("magic", 0x38),
                                          ("res5", 0x3C)])
def test_header_offsets_are_pinned(name, offset):
    assert arm64_image.HEADER.offset(name) == offset


def test_magic_is_arm_x64_at_0x38():
    image = b.arm64_image()
    assert image[0x38:0x3C] == b"ARM\x64"
    assert arm64_image.probe(image)


@pytest.mark.parametrize("flags, endianness, page_size, placement", [
    (0b0000, "little", None, "2MiB-aligned-near-dram-base"),
    (0b0001, "big", None, "2MiB-aligned-near-dram-base"),
    (0b0010, "little", 4096, "2MiB-aligned-near-dram-base"),
    (0b0100, "little", 16384, "2MiB-aligned-near-dram-base"),
    (0b0110, "little", 65536, "2MiB-aligned-near-dram-base"),
    (0b1010, "little", 4096, "anywhere"),
    (0b1111, "big", 65536, "anywhere"),
])
def test_flags_decoded(flags, endianness, page_size, placement):
    layer = arm64_image.parse(b.arm64_image(flags=flags))
    assert (layer.flags, layer.endianness, layer.page_size, layer.placement) == (
        flags, endianness, page_size, placement)


@pytest.mark.parametrize("pe_header", [True, False])
@pytest.mark.parametrize("text_offset, image_size", [(0, 0x200000), (0x80000, 0x1234000), (0, 0)])
def test_fields_reported(pe_header, text_offset, image_size):
    image = b.arm64_image(text_offset=text_offset, image_size=image_size, pe=pe_header)
    layer = formats.identify(image)
    assert isinstance(layer, Arm64Image)
    assert layer.format == "arm64-image" and layer.arch == "arm64"
    assert (layer.text_offset, layer.image_size, layer.pe_header) == (text_offset, image_size, pe_header)
    assert layer.to_json()["text_offset"] == text_offset


def test_gzip_image_unwraps():
    """Image.gz: gzip → arm64 Image, and the loader gets the decompressed Image."""
    image = b.arm64_image()
    layers = formats.unwrap(b.compress("gzip", image))
    assert [l.format for l in layers] == ["gzip", "arm64-image"]
    assert bytes(prepare(b.compress("gzip", image)).kernel) == image


@pytest.mark.parametrize("algorithm", b.ALGORITHMS)
def test_any_compressed_image_unwraps(algorithm):
    assert [l.format for l in formats.unwrap(b.compress(algorithm, b.arm64_image()))] == [
        algorithm, "arm64-image"]


def test_signed_image_padded_with_zeros_is_trimmed():
    """A signed Image inside a zboot payload or UKI section carries zero fill after its
    certificate table; the loader hands on the Image up to its PE end."""
    signed = b.arm64_image(signed=True)
    padded = signed + bytes(0x1000)
    layer = arm64_image.parse(padded)
    assert bytes(layer.kernel_bytes) == signed
    assert bytes(pe.trim_padding(padded)) == signed


def test_image_without_pe_header_is_not_trimmed():
    image = b.arm64_image(pe=False) + bytes(64)
    assert bytes(arm64_image.parse(image).kernel_bytes) == image


def test_wrong_magic():
    image = b.arm64_image(magic=0x644D5242)
    assert not arm64_image.probe(image)
    err = parse_or_error(arm64_image.parse, image)
    assert isinstance(err, FormatError) and (err.field, err.offset) == ("magic", 0x38)


@pytest.mark.parametrize("pe_header", [False, True])
def test_truncation(pe_header):
    image = b.arm64_image(pe=pe_header, signed=pe_header)
    for n in truncations(image, 0x40):
        result = parse_or_error(arm64_image.parse, image[:n])
        assert isinstance(result, (Arm64Image, FormatError))
        assert isinstance(result, Arm64Image) == (n >= 0x40)
    for n in truncations(image, 0x200, stride=4):
        unwrap_or_error(image[:n])


@pytest.mark.parametrize("signed", [False, True])
def test_authenticode_is_reported_and_unknown_when_the_pe_is_cut(signed):
    image = b.arm64_image(pe=True, signed=signed)
    assert arm64_image.parse(image).authenticode is signed
    assert arm64_image.parse(image[:0x80]).authenticode is None      # the PE headers are cut off
