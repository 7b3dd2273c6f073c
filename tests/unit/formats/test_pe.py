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

from ..contract import outcome, parse_or_error, truncations, unwrap_or_error

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


def test_header_offsets_are_where_pefile_finds_the_fields():
    """Every declared header field is at the file offset pefile gives it, in a signed PE32+."""
    image = b.pe(SECTIONS, signed=True)
    p = pefile.PE(data=image, fast_load=True)
    assert pe.DOS_HEADER.offset("e_lfanew") == p.DOS_HEADER.get_field_relative_offset("e_lfanew") == 0x3C
    coff_at = pe.e_lfanew(image)
    assert coff_at == p.DOS_HEADER.e_lfanew
    for name in ("Machine", "NumberOfSections", "SizeOfOptionalHeader"):
        assert coff_at + pe.COFF_HEADER.offset(name) == p.FILE_HEADER.get_field_absolute_offset(name)
    opt_at = pe.optional_header_offset(image)
    assert opt_at == p.OPTIONAL_HEADER.get_file_offset()
    for name in pe.OPTIONAL_HEADER.fields:
        assert opt_at + pe.OPTIONAL_HEADER.offset(name) == p.OPTIONAL_HEADER.get_field_absolute_offset(name)
    assert opt_at + pe.number_of_rva_and_sizes_offset(pe.PE32PLUS_MAGIC) == \
        p.OPTIONAL_HEADER.get_field_absolute_offset("NumberOfRvaAndSizes")
    for index in (pe.IMAGE_DIRECTORY_ENTRY_SECURITY, pe.IMAGE_DIRECTORY_ENTRY_BASERELOC):
        assert opt_at + pe.data_directory_offset(pe.PE32PLUS_MAGIC, index) == \
            p.OPTIONAL_HEADER.DATA_DIRECTORY[index].get_file_offset()
    headers = pe.section_headers(image)
    assert [h["Name"].rstrip(b"\0") for h in headers] == [s.Name.rstrip(b"\0") for s in p.sections]
    names = {"VirtualSize": "Misc_VirtualSize"}
    for name in pe.SECTION_HEADER.fields:
        assert p.sections[1].get_file_offset() + pe.SECTION_HEADER.offset(name) == \
            p.sections[1].get_field_absolute_offset(names.get(name, name))
        assert headers[1][name] == getattr(p.sections[1], names.get(name, name))


def test_authenticode_positions_pinned_for_pe32_and_pe32plus():
    """Authenticode_PE.docx: CheckSum at optional header + 64; the Certificate Table entry at
    + 128 (PE32) or + 144 (PE32+), after NumberOfRvaAndSizes at + 92 or + 108."""
    assert pe.OPTIONAL_HEADER.offset("CheckSum") == 64
    assert [pe.data_directory_offset(m, pe.IMAGE_DIRECTORY_ENTRY_SECURITY)
            for m in (pe.PE32_MAGIC, pe.PE32PLUS_MAGIC)] == [128, 144]
    assert [pe.number_of_rva_and_sizes_offset(m) for m in (pe.PE32_MAGIC, pe.PE32PLUS_MAGIC)] == [92, 108]
    assert pe.SECTION_HEADER.size == pe.SECTION_HEADER_SIZE == 40


def test_no_section_table_outside_the_file():
    image = b.pe(SECTIONS)
    table_end = pe.optional_header_offset(image) + 0xF0 + 40 * len(SECTIONS)
    assert pe.section_headers(image[:table_end]) is not None
    assert pe.section_headers(image[:table_end - 1]) is None
    assert pe.section_headers(b"MZ" + bytes(0x3E)) is None


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


# ---------------------------------------------------------------- the plain reader against pefile

PE_SEEDS = {name: data for name, data in b.samples().items() if pe.has_pe_header(data)}
PE_SEEDS.update({
    "pe-signed": b.pe(SECTIONS, signed=True),
    "pe-unsorted": b.pe([(".b", b"B" * 16), (".a", b"A" * 16)]),
    "bzimage-pe-signed": b.bzimage(pe=True, signed=True),
    "uki-signed-arm64": b.uki(b.arm64_image(signed=True), machine=b.IMAGE_FILE_MACHINE_ARM64),
})


def pefile_only(data: bytes):
    """read_header as it was before the plain reader: pefile for every header."""
    fields = outcome(pe._read_with_pefile, data, "pe")
    if isinstance(fields, FormatError):
        return fields
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pe, "_read_plain", lambda d: fields)
        return outcome(pe.read_header, data)


def same_result(data: bytes) -> None:
    """read_header gives what pefile alone gives: the same header, or the same error."""
    got, want = outcome(pe.read_header, data), pefile_only(data)
    if isinstance(want, FormatError):
        assert type(got) is type(want) and str(got) == str(want)
    else:
        assert got == want


@pytest.mark.parametrize("name", sorted(PE_SEEDS))
def test_plain_reader_reads_what_pefile_reads(name):
    data = PE_SEEDS[name]
    assert pe._read_plain(data) is not None, "a builder's PE is plain: pefile is not needed"
    assert pe._read_plain(data) == pe._read_with_pefile(data, "pe")
    same_result(data)


@pytest.mark.parametrize("name", sorted(PE_SEEDS))
def test_plain_reader_agrees_with_pefile_on_mutants(name):
    """Flipped bytes and boundary values in the headers: either the plain reader declines
    (pefile decides), or it reads exactly what pefile reads."""
    from hypothesis import HealthCheck, given, settings

    from .test_fuzz_parsers import mutated

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated(PE_SEEDS[name]))
    def run(data):
        same_result(data)
    run()


def test_plain_reader_agrees_with_pefile_on_truncations():
    image = b.pe(SECTIONS, signed=True)
    for n in truncations(image, SECTION_TABLE + 3 * 40 + 8, stride=2):
        same_result(image[:n])


@pytest.mark.parametrize("where, value", [
    ("Magic", 0x10B), ("Magic", 0x107), ("NumberOfRvaAndSizes", 4), ("NumberOfRvaAndSizes", 0),
    ("NumberOfSections", 0), ("NumberOfSections", 0x801), ("SizeOfOptionalHeader", 0),
    ("VirtualSize", 0x10000001), ("all-zero section", 0),
])
def test_plain_reader_declines_or_agrees_at_the_edges(where, value):
    image = bytearray(b.pe(SECTIONS, signed=True))
    opt = 0x40 + 24
    at, size = {"Magic": (opt, 2), "NumberOfRvaAndSizes": (opt + 108, 4),
                "NumberOfSections": (0x40 + 6, 2), "SizeOfOptionalHeader": (0x40 + 20, 2),
                "VirtualSize": (SECTION_TABLE + 40 + 8, 4),
                "all-zero section": (SECTION_TABLE + 40, 40)}[where]
    image[at:at + size] = value.to_bytes(size, "little")
    same_result(bytes(image))
