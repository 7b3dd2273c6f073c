"""PE/COFF: the builder checked against pefile, the reader, VirtualSize sizing, trim_padding."""

from __future__ import annotations

import struct

import pefile
import pytest

from pykexec import formats
from pykexec.errors import FormatError
from pykexec.formats import pe
from pykexec.formats.pe import PeImage
from tests import builders as b

from .contract import parse_or_error, truncations, unwrap_or_error

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection

SECTIONS = [(".text", b"\xc3" * 100), (".data", b"D" * 700, 0x2000), (".reloc", b"\0" * 12)]


def test_builder_output_is_what_pefile_reads():
    image = b.pe(SECTIONS, machine=0xAA64, subsystem=10, signed=True)
    p = pefile.PE(data=image)
    assert p.FILE_HEADER.Machine == 0xAA64
    assert p.OPTIONAL_HEADER.Magic == 0x20B
    assert p.OPTIONAL_HEADER.Subsystem == 10
    assert [s.Name.rstrip(b"\0") for s in p.sections] == [b".text", b".data", b".reloc"]
    assert [s.Misc_VirtualSize for s in p.sections] == [100, 0x2000, 12]
    assert [s.SizeOfRawData for s in p.sections] == [0x200, 0x400, 0x200]
    assert p.sections[1].get_data()[:700] == b"D" * 700
    sec = p.OPTIONAL_HEADER.DATA_DIRECTORY[4]
    assert sec.Size > 0 and sec.VirtualAddress + sec.Size == len(image)
    assert struct.unpack_from("<HH", image, sec.VirtualAddress + 4) == (0x0200, 0x0002)


@pytest.mark.parametrize("machine, arch", [(0x14C, "x86"), (0x8664, "x86_64"), (0xAA64, "arm64"),
                                           (0x1C2, "arm"), (0x5064, "riscv64"), (0x1234, None)])
def test_parse_reports_header(machine, arch):
    image = b.pe(SECTIONS, machine=machine, subsystem=11)
    layer = formats.identify(image)
    assert isinstance(layer, PeImage) and layer.format == "pe"
    assert (layer.machine, layer.arch, layer.subsystem, layer.signature) == (machine, arch, 11, False)
    assert layer.entry == layer.sections[0].virtual_address
    assert [s.name for s in layer.sections] == [".text", ".data", ".reloc"]
    assert layer.sections[1].virtual_size == 0x2000
    assert layer.to_json()["sections"][0]["name"] == ".text"


def test_signature_reported():
    assert pe.parse(b.pe(SECTIONS, signed=True)).signature is True


def test_section_data_is_virtual_size_long():
    image = b.pe([(".a", b"abc"), (".b", b"xyz", 0x1000)])
    hdr = pe.read_header(image)
    a, c = hdr.sections
    assert bytes(pe.section_data(image, a, "pe")) == b"abc"
    assert bytes(pe.section_data(image, c, "pe")) == b"xyz" + bytes(0x1000 - 3)


def test_zero_fill_is_bounded():
    image = b.pe([(".b", b"xyz", 0xFFFFFFFF)])
    s = pe.read_header(image).sections[0]
    err = parse_or_error(lambda d: pe.section_data(d, s, "pe"), image)
    assert isinstance(err, FormatError) and err.field == "VirtualSize"


@pytest.mark.parametrize("signed", [False, True])
def test_trim_padding_drops_zero_fill_after_the_image(signed):
    image = b.pe(SECTIONS, signed=signed)
    assert bytes(pe.trim_padding(image + bytes(0x1234))) == image
    assert pe.trim_padding(image) is image


def test_trim_padding_keeps_a_non_zero_tail():
    image = b.pe(SECTIONS, signed=True) + bytes(100) + b"\x01"
    assert pe.trim_padding(image) is image


@pytest.mark.parametrize("data", [b"", b"MZ", b"\0" * 4096, b"MZ" + b"\xff" * 200])
def test_trim_padding_leaves_non_pe_alone(data):
    assert pe.trim_padding(data) is data


def test_e_lfanew_past_the_end_is_not_pe():
    image = bytearray(b.pe(SECTIONS))
    struct.pack_into("<I", image, 0x3C, len(image) + 8)
    assert not pe.has_pe_header(bytes(image))
    struct.pack_into("<I", image, 0x3C, 0xFFFFFFFF)
    assert not pe.has_pe_header(bytes(image))


def test_section_past_the_end():
    image = b.pe(SECTIONS)
    err = parse_or_error(pe.parse, image[:-0x100])
    assert isinstance(err, FormatError) and err.field == "PointerToRawData"


def test_certificate_table_past_the_end():
    image = b.pe(SECTIONS, signed=True)
    err = parse_or_error(pe.parse, image[:-8])
    assert isinstance(err, FormatError) and err.field == "DataDirectory[SECURITY]"


SECTION_TABLE = 0x40 + 24 + b.PE_OPT_SIZE


@pytest.mark.parametrize("field, offset, value", [
    ("NumberOfSections", 0x40 + 6, 0xFFFF),
    ("NumberOfSections", 0x40 + 6, 0),
    ("SizeOfOptionalHeader", 0x40 + 20, 0xFFFF),
    ("SizeOfOptionalHeader", 0x40 + 20, 0),
    ("VirtualSize", SECTION_TABLE + 8, 0xFFFFFFFF),
    ("VirtualAddress", SECTION_TABLE + 12, 0xFFFFF000),
    ("SizeOfRawData", SECTION_TABLE + 16, 0xFFFFFFFF),
    ("PointerToRawData", SECTION_TABLE + 20, 0xFFFFFFFF),
    ("SizeOfRawData", SECTION_TABLE + 40 + 16, 0x80000000),
    ("NumberOfRvaAndSizes", 0x40 + 24 + 108, 0xFFFFFFFF),
    ("SecurityDir.Size", 0x40 + 24 + 112 + 4 * 8 + 4, 0xFFFFFFFF),
    ("SecurityDir.VirtualAddress", 0x40 + 24 + 112 + 4 * 8, 0xFFFFFFF0),
])
def test_overflowing_header_fields(field, offset, value):
    image = bytearray(b.pe(SECTIONS, signed=True))
    size = 2 if field in ("NumberOfSections", "SizeOfOptionalHeader") else 4
    image[offset:offset + size] = value.to_bytes(size, "little")
    unwrap_or_error(bytes(image))
    assert isinstance(parse_or_error(pe.parse, bytes(image)), (PeImage, FormatError))


def test_overlapping_sections_are_read_as_declared():
    """Two sections sharing raw bytes are legal for a reader; both read the same bytes."""
    image = bytearray(b.pe([(".a", b"A" * 16), (".b", b"B" * 16)]))
    second = SECTION_TABLE + 40
    first_ptr = struct.unpack_from("<I", image, SECTION_TABLE + 20)[0]
    struct.pack_into("<I", image, second + 20, first_ptr)
    layer = pe.parse(bytes(image))
    a, c = layer.sections
    assert bytes(pe.section_data(image, c, "pe")) == b"A" * 16


def test_truncation():
    image = b.pe(SECTIONS, signed=True)
    for n in truncations(image, SECTION_TABLE + 3 * 40 + 8, stride=4):
        assert isinstance(parse_or_error(pe.parse, image[:n]), (PeImage, FormatError))
        unwrap_or_error(image[:n])
