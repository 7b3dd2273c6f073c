"""The ordered registry: every format recognised, specific before general, reasons on refusal."""

from __future__ import annotations

import pytest

from pykexec import formats
from pykexec.errors import FormatError, LimitExceeded, UnknownFormat
from pykexec.formats.layer import Format, Layer
from pykexec.limits import Limits
from tests import builders as b

from ..contract import unwrap_or_error

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection

SAMPLES = b.samples()


def test_names_are_unique_and_every_sample_has_one():
    assert len(set(formats.NAMES)) == len(formats.NAMES)
    assert set(SAMPLES) == set(formats.NAMES)
    assert all(isinstance(f, Format) and f.needs for f in formats.FORMATS)


@pytest.mark.parametrize("before, after", [
    ("zboot", "pe"), ("bzimage", "pe"), ("arm64-image", "pe"), ("riscv-image", "pe"),
    ("loongarch-image", "pe"), ("uki", "pe"), ("uki-addon", "pe"), ("uki", "uki-addon"),
    ("elf", "multiboot2"), ("multiboot2", "multiboot"), ("pe", "gzip"),
])
def test_specific_formats_come_first(before, after):
    assert formats.NAMES.index(before) < formats.NAMES.index(after)


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_each_sample_is_identified_as_its_format(name, wrap):
    layer = formats.identify(wrap(SAMPLES[name]))
    assert isinstance(layer, Layer) and layer.format == name
    assert layer.to_json()["format"] == name


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_probe_accepts_its_own_sample(name):
    fmt = next(f for f in formats.FORMATS if f.name == name)
    assert fmt.probe(SAMPLES[name])


@pytest.mark.parametrize("data", [b"", b"\0", b"\0" * 64, b"\xff" * 5000, b"MZ", b"MZ" + bytes(62),
                                  b"\x7fEL", b"hello, world\n"])
def test_unknown_data_names_every_format(data):
    err = unwrap_or_error(data)
    assert isinstance(err, UnknownFormat)
    assert set(err.reasons) == set(formats.NAMES)
    assert (err.layer, err.field, err.offset) == ("image", "magic", 0)
    assert "\n" not in str(err)


def test_unknown_inner_payload_names_the_outer_layer():
    err = unwrap_or_error(b.compress("gzip", b"not a kernel"))
    assert isinstance(err, UnknownFormat) and err.layer == "gzip payload"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_unwraps(name):
    layers = formats.unwrap(SAMPLES[name])
    assert layers[0].format == name
    assert layers[-1].inner() is None


def test_depth_limit():
    data = b.elf64()
    for _ in range(4):
        data = b.compress("zstd", data)
    assert len(formats.unwrap(data, Limits(max_depth=5))) == 5
    err = unwrap_or_error(data, Limits(max_depth=4))
    assert isinstance(err, LimitExceeded) and err.field == "payload"


def test_declared_size_mismatch_names_the_outer_layer():
    vmlinux = b.elf64()
    payload = b.compress("xz", vmlinux) + b.le32(len(vmlinux) + 8)
    err = unwrap_or_error(b.bzimage(payload=payload))
    assert isinstance(err, FormatError) and err.layer == "bzimage" and err.field == "decompressed size"
