"""Real arm64 EFI zboot kernels, built from Debian's linux-source-6.1 for each compression.

The oracle is the arch/arm64/boot/Image that the same build left beside vmlinuz.efi.
"""

from __future__ import annotations

import hashlib

import pytest

from . import oracles as o
from .helpers import extract, formats, inspect_json, material, num

pytestmark = pytest.mark.real

COMPRESSIONS = sorted(material.ZBOOT_COMPRESSIONS)


@pytest.fixture(params=COMPRESSIONS, scope="module")
def zboot(request):
    """(compression, vmlinuz.efi, Image) of one build."""
    efi, image = material.arm64_zboot(request.param)
    return request.param, efi, image


def test_zboot_header_is_what_the_build_wrote(zboot):
    comp, efi, _ = zboot
    assert o.zboot_header(efi.read_bytes())["compression"] == material.ZBOOT_HEADER_NAMES[comp]


def test_zboot_inspect(zboot):
    comp, efi, image = zboot
    data, img = efi.read_bytes(), image.read_bytes()
    doc = inspect_json(efi)
    f = formats(doc)
    assert f[0] == "zboot"
    assert f[-1] == "arm64-image"
    assert set(f[1:-1]) <= o.COMPRESSION_FORMATS, f
    layer = doc["layers"][0]
    want = o.zboot_header(data)
    assert layer["compression"] == material.ZBOOT_HEADER_NAMES[comp]
    assert num(layer["payload_offset"]) == want["payload_offset"]
    assert num(layer["payload_size"]) == want["payload_size"]
    assert num(layer["decompressed_size"]) == len(img)
    inner = doc["layers"][-1]
    for field, value in o.arm64_header(img).items():
        assert num(inner[field]) == value, field


def test_zboot_extract_gives_the_build_image(zboot, tmp_path):
    _, efi, image = zboot
    out = extract(efi, tmp_path / "out")
    got = (out / "kernel").read_bytes()
    want = image.read_bytes()
    assert len(got) == len(want)
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()


def test_zboot_around_debians_image_extracts_to_it(tmp_path):
    """The build's zboot rules wrapping Debian's own arm64 Image: extraction gives that Image back."""
    efi, image = material.arm64_zboot_debian("gzip")
    assert o.zboot_header(efi.read_bytes())["compression"] == "gzip"
    out = extract(efi, tmp_path / "out")
    assert hashlib.sha256((out / "kernel").read_bytes()).digest() == hashlib.sha256(image.read_bytes()).digest()
    assert formats(inspect_json(efi))[-1] == "arm64-image"
