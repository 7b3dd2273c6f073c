"""RISC-V Image (boot-image-header.rst): magic2 "RSC\\x05" at 0x38, deprecated "RISCV" at 0x30."""

from __future__ import annotations

import pytest

from pykexec import formats
from pykexec.errors import FormatError
from pykexec.formats import riscv_image
from pykexec.formats.riscv_image import RiscvImage
from tests import builders as b

from ..contract import parse_or_error, truncations, unwrap_or_error

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection


@pytest.mark.parametrize("name, offset", [("text_offset", 8), ("image_size", 0x10), ("flags", 0x18),
                                          ("version", 0x20), ("magic", 0x30), ("magic2", 0x38),
                                          ("res3", 0x3C)])
def test_header_offsets_are_pinned(name, offset):
    assert riscv_image.HEADER.offset(name) == offset


@pytest.mark.parametrize("magic, magic2", [
    (b.RISCV_MAGIC, b.RISCV_MAGIC2),     # both, as v0.2 images carry
    (b"\0" * 8, b.RISCV_MAGIC2),         # magic2 only
    (b.RISCV_MAGIC, 0),                  # the deprecated magic only (v0.1)
])
def test_either_magic_is_enough(magic, magic2):
    layer = formats.identify(b.riscv_image(magic=magic, magic2=magic2))
    assert layer.format == "riscv-image" and layer.arch == "riscv64"


@pytest.mark.parametrize("version, text", [(0x2, "0.2"), (0x10003, "1.3"), (0, "0.0")])
def test_version(version, text):
    assert riscv_image.parse(b.riscv_image(version=version)).version == text


@pytest.mark.parametrize("flags, endianness", [(0, "little"), (1, "big")])
@pytest.mark.parametrize("pe_header", [True, False])
def test_fields_reported(flags, endianness, pe_header):
    layer = riscv_image.parse(b.riscv_image(flags=flags, text_offset=0x400000,
                                            image_size=0x1230000, pe=pe_header))
    assert (layer.flags, layer.endianness, layer.text_offset, layer.image_size, layer.pe_header) == (
        flags, endianness, 0x400000, 0x1230000, pe_header)


def test_no_magic():
    image = b.riscv_image(magic=b"\0" * 8, magic2=0)
    assert not riscv_image.probe(image)
    err = parse_or_error(riscv_image.parse, image)
    assert isinstance(err, FormatError) and err.field == "magic2"


def test_zboot_for_riscv():
    zb = b.zboot(b.riscv_image(), machine=b.IMAGE_FILE_MACHINE_RISCV64, compression="zstd22")
    layers = formats.unwrap(zb)
    assert [l.format for l in layers] == ["zboot", "zstd", "riscv-image"]
    assert layers[0].arch == "riscv64"


@pytest.mark.parametrize("pe_header", [False, True])
def test_truncation(pe_header):
    image = b.riscv_image(pe=pe_header)
    for n in truncations(image, 0x40):
        result = parse_or_error(riscv_image.parse, image[:n])
        assert isinstance(result, RiscvImage) == (n >= 0x40)
    for n in truncations(image, 0x200, stride=4):
        unwrap_or_error(image[:n])
