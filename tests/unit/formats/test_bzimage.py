"""x86 bzImage: the setup header of boot.rst, protocol gating, the payload and its size."""

from __future__ import annotations

import struct

import pytest

from pykexec import formats
from pykexec.errors import FormatError, LimitExceeded
from pykexec.formats import bzimage
from pykexec.formats.bzimage import BzImage
from pykexec.formats.prepare import prepare
from tests import builders as b

from ..contract import parse_or_error, truncations, unwrap_or_error

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection

VERSIONS = (0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20A,
            0x20B, 0x20C, 0x20D, 0x20E, 0x20F)


# ---------------------------------------------------------------- the layout, pinned


@pytest.mark.parametrize("name, offset", [
    ("setup_sects", 0x1F1), ("syssize", 0x1F4), ("boot_flag", 0x1FE), ("jump", 0x200),
    ("header", 0x202), ("version", 0x206), ("loadflags", 0x211), ("code32_start", 0x214),
    ("kernel_alignment", 0x230), ("xloadflags", 0x236), ("cmdline_size", 0x238),
    ("payload_offset", 0x248), ("payload_length", 0x24C), ("pref_address", 0x258),
    ("init_size", 0x260), ("handover_offset", 0x264), ("kernel_info_offset", 0x268),
])
def test_key_offsets_are_pinned(name, offset):
    assert bzimage.SETUP_HEADER.offset(name) == offset


def test_flags_pinned_to_boot_rst():
    """loadflags and xloadflags bits, as boot.rst and arch/x86/include/uapi/asm/bootparam.h number them."""
    assert (bzimage.LOADED_HIGH, bzimage.KASLR_FLAG, bzimage.QUIET_FLAG, bzimage.KEEP_SEGMENTS,
            bzimage.CAN_USE_HEAP) == (1 << 0, 1 << 1, 1 << 5, 1 << 6, 1 << 7)
    assert (bzimage.XLF_KERNEL_64, bzimage.XLF_CAN_BE_LOADED_ABOVE_4G, bzimage.XLF_EFI_HANDOVER_32,
            bzimage.XLF_EFI_HANDOVER_64, bzimage.XLF_EFI_KEXEC, bzimage.XLF_5LEVEL,
            bzimage.XLF_5LEVEL_ENABLED, bzimage.XLF_MEM_ENCRYPTION) == tuple(1 << i for i in range(8))
    assert bzimage.SETUP_HEADER_OFFSET == 0x1F1 and bzimage.HDRS_MAGIC.to_bytes(4, "little") == b"HdrS"
    assert bzimage.STARTUP_64_OFFSET == 0x200


@pytest.mark.parametrize("setup_sects, start", [(0, 5 * 512), (1, 2 * 512), (4, 5 * 512), (0x1F, 0x20 * 512)])
def test_protected_mode_kernel_start(setup_sects, start):
    assert bzimage.setup_size(setup_sects) == start


@pytest.mark.parametrize("name", sorted(b.SETUP_FIELDS))
def test_layout_matches_boot_rst_table(name):
    """The parser's table and the builder's (written independently from boot.rst) agree."""
    off, code, since = b.SETUP_FIELDS[name]
    field = bzimage.SETUP_HEADER.fields[name]
    assert (field.offset, field.size) == (off, struct.calcsize("<" + code))
    if name in bzimage.SINCE:
        assert bzimage.SINCE[name] == since


# ---------------------------------------------------------------- fields under their names


@pytest.mark.parametrize("field, value", [
    ("kernel_alignment", 0x400000), ("relocatable_kernel", 1), ("min_alignment", 13),
    ("xloadflags", 0x1B), ("cmdline_size", 0xFFF), ("initrd_addr_max", 0x3FFFFFFF),
    ("init_size", 0x1234000), ("pref_address", 0x2000000), ("handover_offset", 0x3F0),
    ("kernel_info_offset", 0x12340), ("loadflags", 0x21), ("syssize", 0x4321),
])
def test_field_reported_under_spec_name(field, value):
    layer = bzimage.parse(b.bzimage(**{field: value}))
    assert getattr(layer, field) == value
    assert layer.to_json()[field] == value


def test_reports_the_whole_header():
    vmlinux = b.elf64(load=b"\x90" * 300)
    image = b.bzimage(vmlinux=vmlinux)
    start, end = b.bzimage_payload_range(image)
    layer = bzimage.parse(image)
    assert layer.format == "bzimage"
    assert layer.version == "2.15" and layer.protocol == 0x20F
    assert layer.setup_sects == 4 and layer.setup_size == 5 * 512
    assert layer.header_end == b.header_end_for(0x20F)
    assert layer.arch == "x86_64"
    assert layer.loadflags_names == ("LOADED_HIGH", "CAN_USE_HEAP")
    assert "XLF_KERNEL_64" in layer.xloadflags_names
    assert layer.payload_found_by == "header"
    assert layer.setup_size + layer.payload_offset == start
    assert layer.payload_length == end - start
    assert layer.decompressed_size == len(vmlinux)
    assert bytes(layer.inner()) == image[start:end]
    assert bytes(layer.setup_bytes) == image[:5 * 512]
    assert bytes(layer.kernel_bytes) == image[5 * 512:]
    assert layer.pe_header is False and layer.authenticode is False


@pytest.mark.parametrize("xloadflags, arch", [(0x1, "x86_64"), (0x0, "x86"), (0x7E, "x86")])
def test_arch_follows_xlf_kernel_64(xloadflags, arch):
    assert bzimage.parse(b.bzimage(xloadflags=xloadflags)).arch == arch


@pytest.mark.parametrize("written, sectors", [(0, 4), (1, 1), (4, 4), (17, 17), (30, 30)])
def test_setup_sects_zero_means_four(written, sectors):
    image = b.bzimage(setup_sects=written)
    layer = bzimage.parse(image)
    assert layer.setup_sects == sectors
    assert layer.setup_size == (sectors + 1) * 512
    assert [l.format for l in formats.unwrap(image)] == ["bzimage", "gzip", "elf"]


@pytest.mark.parametrize("pe, signed", [(False, False), (True, False), (True, True)])
def test_efi_stub_pe_header_and_signature(pe, signed):
    layer = bzimage.parse(b.bzimage(pe=pe, signed=signed))
    assert layer.pe_header is pe
    assert layer.authenticode is signed


# ---------------------------------------------------------------- protocol versions


@pytest.mark.parametrize("version", VERSIONS)
def test_fields_newer_than_the_version_are_ignored(version):
    """Bytes where later fields would be are garbage (0xff) in an older header: boot.rst's
    defaults apply instead."""
    layer = bzimage.parse(b.bzimage(version=version, fill_absent=0xFF))
    assert layer.protocol == version
    assert layer.version == f"2.{version & 0xFF:02d}"
    # absent fields are None; assumed() gives boot.rst's defaults for a loader
    assert layer.initrd_addr_max == (None if version < 0x203 else 0x7FFFFFFF)
    assert layer.assumed("initrd_addr_max") == (0x37FFFFFF if version < 0x203 else 0x7FFFFFFF)
    if version < 0x205:
        assert layer.kernel_alignment == 0x100000 and layer.relocatable_kernel is None
    else:
        assert layer.kernel_alignment == 0x200000 and layer.relocatable_kernel == 1
    assert layer.cmdline_size == (None if version < 0x206 else 2047)
    assert layer.assumed("cmdline_size") == (255 if version < 0x206 else 2047)
    assert layer.min_alignment == (None if version < 0x20A else 21)
    assert layer.xloadflags == (0 if version < 0x20C else 0x7F)
    assert layer.pref_address == (None if version < 0x20A else 0x1000000)
    assert layer.assumed("pref_address") == (0x100000 if version < 0x20A else 0x1000000)
    assert layer.init_size == (None if version < 0x20A else 0x2000000)
    assert layer.handover_offset == (None if version < 0x20B else 0x190)
    assert layer.kernel_info_offset == (None if version < 0x20F else 0x4000)
    if version < 0x208:
        assert (layer.payload_found_by, layer.decompressed_size) == ("scan", None)
    else:
        assert layer.payload_found_by == "header"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_unwraps_to_the_vmlinux(version):
    vmlinux = b.elf64(load=b"\xcc" * 200)
    layers = formats.unwrap(b.bzimage(version=version, vmlinux=vmlinux))
    assert [l.format for l in layers] == ["bzimage", "gzip", "elf"]
    assert bytes(layers[-1].data) == vmlinux


def test_header_end_comes_from_the_jump():
    """A 2.15 header whose jump says it ends at 0x248 has no payload fields: scan instead."""
    layer = bzimage.parse(b.bzimage(header_end=0x248))
    assert layer.header_end == 0x248
    assert layer.payload_found_by == "scan"
    assert layer.init_size is None and layer.kernel_info_offset is None


def test_old_protocol_without_gzip_payload_has_no_inner():
    layer = bzimage.parse(b.bzimage(version=0x204, compression="xz"))
    assert layer.payload_found_by == "absent" and layer.inner() is None


# ---------------------------------------------------------------- compression


@pytest.mark.parametrize("algorithm", b.ALGORITHMS)
def test_every_compression_unwraps(algorithm):
    vmlinux = b.elf64(load=bytes(range(256)) * 4)
    layers = formats.unwrap(b.bzimage(compression=algorithm, vmlinux=vmlinux))
    assert [l.format for l in layers] == ["bzimage", algorithm, "elf"]
    assert layers[0].decompressed_size == len(vmlinux)
    assert layers[1].decompressed_size == len(vmlinux)
    assert bytes(layers[2].data) == vmlinux


@pytest.mark.parametrize("algorithm", b.ALGORITHMS)
def test_declared_size_larger_than_the_payload_is_an_error(algorithm):
    vmlinux = b.elf64()
    payload = b.compress_with_size(algorithm, vmlinux)
    payload = payload[:-4] + b.le32(len(vmlinux) + 1)
    err = unwrap_or_error(b.bzimage(payload=payload))
    assert isinstance(err, FormatError) and not isinstance(err, LimitExceeded)
    # gzip's own ISIZE is the declared size, so zlib's length check may notice first
    assert err.layer in (("bzimage", "gzip") if algorithm == "gzip" else ("bzimage",))


@pytest.mark.parametrize("algorithm", b.ALGORITHMS)
def test_declared_size_smaller_than_the_payload_caps_decompression(algorithm):
    vmlinux = b.elf64(load=b"\x90" * 4000)
    payload = b.compress_with_size(algorithm, vmlinux)
    payload = payload[:-4] + b.le32(100)
    err = unwrap_or_error(b.bzimage(payload=payload))
    assert isinstance(err, LimitExceeded), err
    assert "declared" in str(err)


# ---------------------------------------------------------------- malformed input


def test_setup_sects_beyond_the_file():
    image = b.bzimage(setup_sects=0xFF)[:0x2000]
    err = parse_or_error(bzimage.parse, image)
    assert isinstance(err, FormatError)
    assert (err.layer, err.field, err.offset) == ("bzimage", "setup_sects", 0x1F1)


@pytest.mark.parametrize("overrides", [
    {"payload_offset": 0xFFFFFFF0},
    {"payload_length": 0xFFFFFFFF},
    {"payload_offset": 0x100, "payload_length": 0x10000},
])
def test_payload_outside_the_file(overrides):
    """Reported as truncated (see test_bzimage_truncated.py); a loader is refused."""
    image = b.bzimage(**overrides)
    layer = parse_or_error(bzimage.parse, image)
    assert isinstance(layer, BzImage) and layer.truncated and layer.inner() is None
    err = parse_or_error(prepare, image)
    assert isinstance(err, FormatError) and err.field == "payload_length"


def test_payload_too_short_for_its_size():
    err = parse_or_error(bzimage.parse, b.bzimage(payload_length=3))
    assert isinstance(err, FormatError) and err.field == "payload_length"


def test_payload_fields_zero_mean_no_payload():
    """boot.rst: payload_offset "If non-zero then this field contains the offset ... to the
    payload".  Images that use the boot protocol without a compressed vmlinux leave both
    fields 0 (2.08+); that is not malformed."""
    layer = parse_or_error(bzimage.parse, b.bzimage(payload_offset=0, payload_length=0))
    assert isinstance(layer, BzImage), layer


@pytest.mark.parametrize("field, value", [("header", 0x53726449), ("boot_flag", 0xAA56)])
def test_bad_magic_is_not_a_bzimage(field, value):
    image = b.bzimage(**{field: value})
    assert not bzimage.probe(image)
    assert isinstance(parse_or_error(bzimage.parse, image), FormatError)


@pytest.mark.parametrize("version, pe", [(0x20F, False), (0x20F, True), (0x204, False)])
def test_truncation_anywhere(version, pe):
    image = b.bzimage(version=version, pe=pe, signed=pe)
    for n in truncations(image, 0x300):
        result = parse_or_error(bzimage.parse, image[:n])
        assert isinstance(result, (BzImage, FormatError)), n
    for n in truncations(image, 0x300, stride=8 if pe else 1):
        unwrap_or_error(image[:n])


@pytest.mark.parametrize("jump", range(0, 0x100, 7))
def test_any_jump_byte(jump):
    image = bytearray(b.bzimage())
    image[0x201] = jump
    unwrap_or_error(bytes(image))
    unwrap_or_error(bytes(image[:0x202 + jump]))


# ---------------------------------------------------------------- what kernel_version says


def _with_version(text: bytes, pointer: int = 0x100) -> bytes:
    """b.bzimage with ``text`` at boot.rst's kernel_version pointer plus 0x200."""
    image = bytearray(b.bzimage(kernel_version=pointer))
    image[pointer + 0x200:pointer + 0x200 + len(text)] = text
    return bytes(image)


@pytest.mark.parametrize("text, program", [
    (b"6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1", "Linux"),
    (b"7.2.0 (user@host) #3 SMP", "Linux"),
    (b"MEMDISK 6.04 20200816", "syslinux's memdisk"),
    (b"Memtest86+ v6.10", "memtest86+"),
    (b"1.0.0+git-20190125.36a4c85-5.1", None),          # iPXE's: nothing says what it is
])
def test_version_string_names_the_program(text, program):
    layer = bzimage.parse(_with_version(text + b"\0"))
    assert layer.version_string == text.decode()
    assert layer.program == program
    assert layer.to_json()["program"] == program


def test_only_memdisk_needs_the_real_mode_entry():
    assert [p.name for p in bzimage.PROGRAMS if p.real_mode] == ["syslinux's memdisk"]
    assert bzimage.program_of(bzimage.parse(_with_version(b"Memtest86+ v6.10\0"))).real_mode == ""


@pytest.mark.parametrize("pointer", [0, 5 * 512 - 0x200, 0x7000])   # none, at the setup's end, past the file
def test_version_pointer_outside_the_setup_code_is_no_string(pointer):
    layer = bzimage.parse(b.bzimage(kernel_version=pointer))
    assert layer.version_string is None and layer.program is None


def test_version_string_that_is_not_text_is_none():
    assert bzimage.parse(_with_version(b"\x90\xeb\xfe\xcc\0")).version_string is None


def test_version_string_is_bounded_without_its_nul():
    layer = bzimage.parse(_with_version(b"A" * 600))
    assert layer.version_string == "A" * bzimage.VERSION_STRING_MAX
