"""api.extract: a bzImage's vmlinux is decoded straight into its file, and a failure
leaves nothing behind (no directory it created, no partial or temporary file)."""

from __future__ import annotations

import pytest
import zstandard

from pykexec import api
from pykexec.errors import FormatError, LimitExceeded
from pykexec.limits import Limits
from pykexec.output import OutputDir
from pykexec.formats.prepare import prepare, vmlinux_written
from tests import builders as b

from .contract import outcome

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection

CODECS = ["gzip", "zstd", "xz", "lzma", "lz4", "lzo", "bzip2"]
VMLINUX = b.elf64(load=bytes(range(256)) * 600)


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("compression", CODECS)
def test_vmlinux_is_what_prepare_decompresses(compression, image_file, tmp_path):
    image = image_file(b.bzimage(vmlinux=VMLINUX, compression=compression))
    written = api.extract(image, tmp_path / "out")
    assert list(written) == ["kernel", "vmlinux"]
    assert written["vmlinux"].read_bytes() == bytes(prepare(image.read_bytes(), vmlinux=True).vmlinux)
    assert written["vmlinux"].read_bytes() == VMLINUX
    assert listing(tmp_path / "out") == ["kernel", "vmlinux"]


def test_uki_profile_with_its_own_bzimage_writes_that_vmlinux(image_file, tmp_path):
    other = b.elf64(load=b"\x90" * 33)
    uki = b.uki(b.bzimage(), profiles=[{"cmdline": "a"},
                                       {"linux": b.bzimage(vmlinux=other, compression="zstd")}])
    assert api.extract(image_file(uki), tmp_path / "p1", profile=1)["vmlinux"].read_bytes() == other
    assert api.extract(image_file(uki), tmp_path / "p0", profile=0)["vmlinux"].read_bytes() == b.elf64()


def test_an_empty_vmlinux_is_an_empty_file(image_file, tmp_path):
    written = api.extract(image_file(b.bzimage(vmlinux=b"", compression="zstd")), tmp_path / "o")
    assert written["vmlinux"].read_bytes() == b""


BIG = b.elf64(load=bytes(range(256)) * (12 << 10))  # 3 MiB: several chunks reach the file


def corrupt_zstd_bzimage() -> bytes:
    """A zstd payload whose frame and block headers are intact but whose last block's
    contents are not: it fails after the first blocks have been written out."""
    stream = bytearray(b.compress("zstd", BIG))
    pos = zstandard.frame_header_size(bytes(stream))
    while True:
        header = int.from_bytes(stream[pos:pos + 3], "little")
        size = 1 if (header >> 1) & 3 == 1 else header >> 3
        if header & 1:
            break
        pos += 3 + size
    for at in range(pos + 3, pos + 3 + size):
        stream[at] ^= 0xA5
    return b.bzimage(payload=bytes(stream) + b.le32(len(BIG)))


@pytest.mark.parametrize("case", ["corrupt", "declared", "limit"])
@pytest.mark.parametrize("outdir", ["new/nested", "existing"])
def test_a_failed_stream_leaves_nothing(case, outdir, image_file, tmp_path):
    data = {"corrupt": corrupt_zstd_bzimage(),
            "declared": b.bzimage(payload=b.compress("zstd", VMLINUX) + b.le32(len(VMLINUX) + 1)),
            "limit": b.bzimage(vmlinux=BIG, compression="zstd")}[case]
    image = image_file(data)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "vmlinux").write_bytes(b"old")
    before = listing(tmp_path)
    limits = Limits(max_output=len(BIG) - 1) if case == "limit" else Limits()
    err = outcome(api.extract, image, tmp_path / outdir, limits=limits)
    assert isinstance(err, LimitExceeded if case == "limit" else FormatError), err
    assert listing(tmp_path) == before
    assert (existing / "vmlinux").read_bytes() == b"old"


def test_the_streamed_layer_holds_no_bytes(tmp_path):
    with open(tmp_path / "v", "wb") as f:
        p = prepare(b.bzimage(vmlinux=VMLINUX, compression="zstd"), vmlinux=f)
    assert p.vmlinux is None and vmlinux_written(p)
    assert p.layers[-1].format == "zstd" and p.layers[-1].decompressed_size == len(VMLINUX)
    assert (tmp_path / "v").read_bytes() == VMLINUX
    assert not vmlinux_written(prepare(b.bzimage(), vmlinux=True))


def test_an_uncompressed_payload_is_identified_as_before(tmp_path):
    """A payload that is not a compressed stream is parsed in memory; there is no vmlinux."""
    image = b.bzimage(payload=b.elf64() + b.le32(0))
    with open(tmp_path / "v", "wb") as f:
        streamed = outcome(prepare, image, vmlinux=f)
    in_memory = outcome(prepare, image, vmlinux=True)
    assert type(streamed) is type(in_memory)
    if isinstance(in_memory, FormatError):
        assert str(streamed) == str(in_memory)
    else:
        assert [x.format for x in streamed.layers] == [x.format for x in in_memory.layers]
        assert streamed.vmlinux is None and in_memory.vmlinux is None


def test_nothing_is_created_before_the_first_byte(tmp_path):
    with pytest.raises(RuntimeError):
        with OutputDir(tmp_path / "a" / "b") as out:
            out.stream("vmlinux")
            raise RuntimeError
    assert listing(tmp_path) == []


@pytest.mark.parametrize("outdir", ["a-file", "a-file/sub"])
def test_a_bad_image_is_reported_before_a_bad_output_directory(outdir, image_file, tmp_path):
    """As when the vmlinux was decoded in memory before anything was written."""
    (tmp_path / "a-file").write_bytes(b"x")
    assert isinstance(outcome(api.extract, image_file(corrupt_zstd_bzimage()), tmp_path / outdir),
                      FormatError)
    with pytest.raises(OSError):
        api.extract(image_file(b.bzimage(vmlinux=VMLINUX, compression="zstd")), tmp_path / outdir)
    assert listing(tmp_path) == ["a-file", "image"]
