"""Debian bookworm's arm64 kernel: an uncompressed Image with a PE header, and that Image gzip'd."""

from __future__ import annotations

import gzip

import pytest

from . import oracles as o
from .helpers import extract, formats, inspect_json, num

pytestmark = pytest.mark.real


def test_arm64_image_is_arm64_image_not_pe(arm64_image):
    data = arm64_image.read_bytes()
    assert data[:2] == b"MZ" and data[0x38:0x3C] == b"ARM\x64"  # the material is what we think
    doc = inspect_json(arm64_image)
    assert formats(doc) == ["arm64-image"]
    layer = doc["layers"][0]
    assert layer["arch"] in ("arm64", "aarch64")
    want = o.arm64_header(data)
    for field, value in want.items():
        assert num(layer[field]) == value, field


def test_arm64_image_extract_is_identity(arm64_image, tmp_path):
    out = extract(arm64_image, tmp_path / "out")
    assert (out / "kernel").read_bytes() == arm64_image.read_bytes()


def test_arm64_image_gz_chain(arm64_image_gz, arm64_image):
    gz = arm64_image_gz.read_bytes()
    image = arm64_image.read_bytes()
    assert gzip.decompress(gz) == image  # the material is what we think
    doc = inspect_json(arm64_image_gz)
    assert formats(doc) == ["gzip", "arm64-image"]
    comp, inner = doc["layers"]
    assert comp["algorithm"] == "gzip"
    assert num(comp["decompressed_size"]) == len(image)
    assert num(comp["compressed_size"]) == len(gz)
    for field, value in o.arm64_header(image).items():
        assert num(inner[field]) == value, field


def test_arm64_image_gz_extracts_the_image(arm64_image_gz, arm64_image, tmp_path):
    out = extract(arm64_image_gz, tmp_path / "out")
    assert (out / "kernel").read_bytes() == arm64_image.read_bytes()


def test_a_signed_arm64_image_reports_authenticode(arm64_image):
    """Debian signs its arm64 Images' EFI stub: pefile sees a certificate table, and inspect says so."""
    import pefile
    pe = pefile.PE(str(arm64_image), fast_load=True)
    security = pe.OPTIONAL_HEADER.DATA_DIRECTORY[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]]
    layer = inspect_json(arm64_image)["layers"][0]
    assert layer["format"] == "arm64-image"
    assert layer["authenticode"] is (security.Size > 0)
    assert security.Size > 0          # the material is what we think: Debian's signed Image
