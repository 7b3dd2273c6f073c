"""EFI zboot (zboot-header.S): "zimg", signed payload offset/size, compression name,
the decompressed size after (or, for gzip, inside) the payload."""

from __future__ import annotations

import struct

import pytest

from pykexec import formats
from pykexec.errors import FormatError, LimitExceeded
from pykexec.limits import Limits
from pykexec.formats import zboot
from pykexec.formats.zboot import Zboot
from pykexec.formats.prepare import prepare
from tests import builders as b

from ..contract import parse_or_error, truncations, unwrap_or_error

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection

ZBOOT_TYPES = tuple(b.ZBOOT_COMPRESSIONS)


@pytest.mark.parametrize("name, offset", [("mz_magic", 0), ("image_type", 4), ("payload_offset", 8),
                                          ("payload_size", 0xC), ("compress_type", 0x18)])
def test_header_offsets_are_pinned(name, offset):
    assert zboot.HEADER.offset(name) == offset


def test_builder_layout():
    image = b.zboot()
    assert image[:2] == b"MZ" and image[4:8] == b"zimg"
    assert image[0x18:0x1C] == b"gzip"
    assert struct.unpack_from("<II", image, 0x38) == (b.LINUX_PE_MAGIC, 0x40)


def test_compression_names_match_makefile_zboot():
    assert set(zboot.COMPRESSIONS) == set(ZBOOT_TYPES)
    assert zboot.COMPRESSIONS["gzip"] == 0
    assert all(zboot.COMPRESSIONS[t] == 4 for t in ZBOOT_TYPES if t != "gzip")


@pytest.mark.parametrize("compression", ZBOOT_TYPES)
def test_every_compression_unwraps(compression):
    inner = b.arm64_image(data=bytes(range(256)) * 3)
    image = b.zboot(inner, compression=compression)
    layers = formats.unwrap(image)
    algorithm = b.ZBOOT_COMPRESSIONS[compression]
    assert [l.format for l in layers] == ["zboot", algorithm, "arm64-image"]
    z = layers[0]
    assert (z.compression, z.decompressed_size, z.arch, z.machine) == (
        compression, len(inner), "arm64", 0xAA64)
    payload = b.compress(algorithm, inner)
    assert bytes(z.inner()) == payload
    assert z.payload_size == len(payload)
    assert bytes(layers[-1].data) == inner
    assert bytes(prepare(image).kernel) == inner


def test_signed_zboot_and_signed_inner_image():
    inner = b.arm64_image(signed=True)
    layers = formats.unwrap(b.zboot(inner + bytes(0x600), signed=True))
    assert layers[0].signature is True
    assert bytes(layers[-1].kernel_bytes) == inner


def test_fields_reported_in_json():
    report = formats.identify(b.zboot(compression="zstd22")).to_json()
    assert report["format"] == "zboot" and report["compression"] == "zstd22"
    assert {"payload_offset", "payload_size", "decompressed_size", "machine"} <= set(report)


# ---------------------------------------------------------------- malformed


@pytest.mark.parametrize("overrides, field", [
    ({"payload_offset": -1}, "payload_offset"),
    ({"payload_offset": -0x80000000}, "payload_offset"),
    ({"payload_offset": 0}, "payload_offset"),
    ({"payload_offset": 0x3F}, "payload_offset"),
    ({"payload_size": -1}, "payload_size"),
    ({"payload_size": -0x80000000}, "payload_size"),
    ({"payload_size": 0x7FFFFFFF}, "payload_size"),
    ({"payload_size": 3}, "payload_size"),
    ({"payload_offset": 0x7FFFFFF0}, "payload_size"),
    ({"compress_type": b"bzip2"}, "compress_type"),
    ({"compress_type": b"gzip9"}, "compress_type"),
    ({"compress_type": b"\xff\xfe"}, "compress_type"),
])
def test_bad_header_fields(overrides, field):
    err = parse_or_error(zboot.parse, b.zboot(**overrides))
    assert isinstance(err, FormatError), err
    assert err.layer == "zboot" and err.field == field


def test_payload_without_room_for_its_size_trailer():
    """For every codec but gzip the le32 size follows the counted payload and must fit."""
    image = b.zboot(compression="zstd22")
    z = zboot.parse(image)
    cut = image[:z.payload_offset + z.payload_size + 3]
    err = parse_or_error(zboot.parse, cut)
    assert isinstance(err, FormatError) and err.field == "payload_size"


@pytest.mark.parametrize("compression", ZBOOT_TYPES)
def test_declared_size_too_large(compression):
    inner = b.arm64_image()
    if compression == "gzip":
        return  # gzip's ISIZE is part of the stream: covered by the codec's own check
    err = unwrap_or_error(b.zboot(inner, compression=compression, size_trailer=len(inner) + 4))
    assert isinstance(err, FormatError) and not isinstance(err, LimitExceeded)
    assert err.layer == "zboot"


@pytest.mark.parametrize("compression", ZBOOT_TYPES)
def test_declared_size_too_small_caps_decompression(compression):
    inner = b.arm64_image(data=b"x" * 5000)
    if compression == "gzip":
        payload = bytearray(b.compress("gzip", inner))
        payload[-4:] = b.le32(64)
        image = b.zboot(inner, payload=bytes(payload))
    else:
        image = b.zboot(inner, compression=compression, size_trailer=64)
    err = unwrap_or_error(image)
    assert isinstance(err, LimitExceeded), err


def test_not_zimg():
    image = b.zboot(image_type=b"zimh")
    assert not zboot.probe(image)
    assert formats.identify(image).format != "zboot"


@pytest.mark.parametrize("compression", ["gzip", "lz4"])
def test_truncation(compression):
    image = b.zboot(compression=compression)
    for n in truncations(image, 0x40):
        assert isinstance(parse_or_error(zboot.parse, image[:n]), (Zboot, FormatError))
    for n in truncations(image, 0x400, stride=8):
        assert isinstance(parse_or_error(zboot.parse, image[:n]), (Zboot, FormatError))
        unwrap_or_error(image[:n])


def test_zboot_inside_a_zboot_is_followed_until_the_depth_limit():
    image = b.arm64_image()
    for _ in range(3):
        image = b.zboot(image)
    assert [l.format for l in formats.unwrap(image)] == ["zboot", "gzip"] * 3 + ["arm64-image"]
    err = unwrap_or_error(image, Limits(max_depth=4))
    assert isinstance(err, LimitExceeded) and err.field == "payload"
