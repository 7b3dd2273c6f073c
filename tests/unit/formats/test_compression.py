"""The kernel's codecs: round trips, the kernel's framings, external encoders as oracles,
corrupt and truncated streams, and decompression bombs under Limits(max_output)."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc

import pytest

from pykexec import formats
from pykexec.errors import FormatError, LimitExceeded
from pykexec.formats import compression
from pykexec.formats.compression import Compressed
from pykexec.limits import Limits
from tests import builders as b

from ..contract import parse_or_error, truncations, unwrap_or_error

ALGORITHMS = b.ALGORITHMS
#: not compressible, so every codec's output is about the input's size
NOISE = random.Random(1).randbytes(3000)


def test_every_kernel_codec_is_registered():
    assert set(compression.CODECS) == set(ALGORITHMS)
    assert set(ALGORITHMS) <= set(formats.NAMES)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("data", [b"", b"x", b"hello world" * 100, NOISE], ids=["empty", "1", "text", "noise"])
def test_round_trip(algorithm, data):
    stream = b.compress(algorithm, data)
    layer = compression.decompress(algorithm, stream, Limits())
    assert isinstance(layer, Compressed) and layer.format == algorithm
    assert bytes(layer.data) == data
    assert (layer.compressed_size, layer.decompressed_size) == (len(stream), len(data))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_identified_by_magic(algorithm):
    assert formats.identify(b.compress(algorithm, b"payload" * 10)).format == algorithm


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_kernel_size_trailer_is_not_part_of_the_stream(algorithm):
    data = b"vmlinux" * 50
    stream = b.compress(algorithm, data)
    layer = compression.decompress(algorithm, b.compress_with_size(algorithm, data), Limits())
    assert bytes(layer.data) == data and layer.compressed_size == len(stream)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_multi_block_streams(algorithm):
    """Larger than one lz4 legacy block (8 MiB) and many lzop blocks (256 KiB)."""
    data = (NOISE * 3000)[:(9 << 20) if algorithm in ("lz4", "lzo") else (1 << 20)]
    layer = compression.decompress(algorithm, b.compress(algorithm, data), Limits())
    assert bytes(layer.data) == data


def test_lzma_is_the_legacy_alone_format():
    stream = b.compress("lzma", b"x")
    assert stream[:3] == b"\x5d\x00\x00"
    assert struct.unpack_from("<Q", stream, 5)[0] == 0xFFFFFFFFFFFFFFFF, "size unknown, end marker"


def test_lz4_legacy_frame_layout():
    stream = b.compress("lz4", b"abc" * 100)
    assert struct.unpack_from("<I", stream)[0] == 0x184C2102
    assert struct.unpack_from("<I", stream, 4)[0] == len(stream) - 8


def test_lz4_legacy_frames_concatenated():
    """lz4 -l output may repeat the magic between blocks (concatenated frames)."""
    data = b"first" * 100 + b"second" * 100
    stream = b.lz4_legacy(data[:500]) + b.lz4_legacy(data[500:])
    assert bytes(compression.decompress("lz4", stream, Limits()).data) == data


@pytest.mark.parametrize("header", [
    {"version": 0x1030}, {"version": 0x0900, "level": 0}, {"name": b"vmlinux.bin"},
    {"flags": b.F_ADLER32_D | b.F_H_FILTER, "filter_": 1},
    {"flags": b.F_ADLER32_D | b.F_ADLER32_C},
    {"flags": 0},
    {"flags": b.F_ADLER32_D | 0x100 | 0x200},  # CRC32 too, no checksum written for it
])
def test_lzop_header_variants(header):
    data = NOISE[:100] + b"z" * 3000
    flags = header.pop("flags", b.F_ADLER32_D | b.F_OS_UNIX)
    if flags & 0x300:
        # the builder does not write CRC32 checksums: patch them in as zeros
        stream = _lzop_with_crc(data, flags)
    else:
        stream = b.lzop(data, flags=flags, **header)
    assert bytes(compression.decompress("lzo", stream, Limits()).data) == data


def _lzop_with_crc(data: bytes, flags: int) -> bytes:
    c = b.lzo.compress(data, 1, False)
    d_sums = bool(flags & 0x1) + bool(flags & 0x100)
    c_sums = bool(flags & 0x2) + bool(flags & 0x200)
    block = struct.pack(">II", len(data), len(c)) + bytes(4 * d_sums) + bytes(4 * c_sums) + c
    return b.lzop_header(flags=flags) + block + bytes(4)


def test_lzop_stored_block():
    """lzop stores a block uncompressed when compression does not help (src_len == dst_len)."""
    stream = b.lzop(NOISE)
    assert struct.unpack_from(">II", stream, len(b.lzop_header()))[0:2] == (len(NOISE), len(NOISE))
    assert bytes(compression.decompress("lzo", stream, Limits()).data) == NOISE


@pytest.mark.parametrize("dst, src", [(100, 200), (0x7FFFFFFF, 10), (0xFFFFFFFF, 0xFFFFFFFF)])
def test_lzop_bad_block_sizes(dst, src):
    stream = b.lzop_header() + struct.pack(">III", dst, src, 0) + bytes(64) + bytes(4)
    err = parse_or_error(lambda d: compression.decompress("lzo", d, Limits(max_output=1 << 20)), stream)
    assert isinstance(err, FormatError) and err.layer == "lzo"


# ---------------------------------------------------------------- external encoders as oracles

CLI = {
    "gzip": ["gzip", "-n", "-9", "-c"],
    "zstd": ["zstd", "-19", "-c", "-q"],
    "xz": ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-c"],
    "lzma": ["xz", "--format=lzma", "-9", "-c"],
    "lz4": ["lz4", "-l", "-9", "-c"],
    "lzo": ["lzop", "-9", "-c"],
    "bzip2": ["bzip2", "-9", "-c"],
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("size", [0, 5000, 300 << 10])
def test_command_line_encoders_decode(algorithm, size):
    """What the kernel build's own tools write (scripts/Makefile.lib) decodes."""
    cmd = CLI[algorithm]
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} is not installed (apt-get install {cmd[0]})")
    data = (NOISE * (size // len(NOISE) + 1))[:size // 2] + b"k" * (size - size // 2)
    stream = subprocess.run(cmd, input=data, capture_output=True, check=True).stdout
    layer = formats.identify(stream + struct.pack("<I", size))  # with the kernel's size trailer
    assert layer.format == algorithm
    assert bytes(layer.data) == data


# ---------------------------------------------------------------- corrupt input


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_truncation_at_every_byte(algorithm):
    stream = b.compress(algorithm, b"abcdefgh" * 64 + NOISE[:256])
    for n in truncations(stream, len(stream) - 1):
        result = parse_or_error(lambda d: compression.decompress(algorithm, d, Limits()), stream[:n])
        if algorithm == "lz4" and not isinstance(result, FormatError):
            continue  # a legacy frame has no end marker: a cut between blocks is a shorter stream
        assert isinstance(result, FormatError), (algorithm, n, result)
        assert result.layer == algorithm


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_byte_flips(algorithm):
    stream = bytearray(b.compress(algorithm, b"abcdefgh" * 64 + NOISE[:256]))
    for at in range(0, len(stream), 3):
        for mask in (0x01, 0x80, 0xFF):
            mutated = bytearray(stream)
            mutated[at] ^= mask
            result = parse_or_error(lambda d: compression.decompress(algorithm, d, Limits(max_output=1 << 20)),
                                    bytes(mutated))
            assert isinstance(result, (Compressed, FormatError))


def test_zstd_reserved_block_type():
    stream = bytearray(b.compress("zstd", b"x" * 100))
    header = zstd_first_block(stream)
    stream[header] |= 0b110
    err = parse_or_error(lambda d: compression.decompress("zstd", d, Limits()), bytes(stream))
    assert isinstance(err, FormatError) and err.field == "Block_Type"


def zstd_first_block(stream: bytes) -> int:
    import zstandard
    return zstandard.frame_header_size(stream)


@pytest.mark.parametrize("data", [b"\x28\xb5\x2f\xfd", b"\x28\xb5\x2f\xfd\x00", b"\x28\xb5\x2f\xfd" + b"\xff" * 20])
def test_zstd_short_or_bad_headers(data):
    assert isinstance(unwrap_or_error(data), FormatError)


@pytest.mark.parametrize("data", [b"\x1f\x8b", b"\x5d\x00\x00" + b"\xff" * 10, b"BZh9", b"\xfd7zXZ\x00",
                                  b.LZOP_MAGIC, b"\x02\x21\x4c\x18", b"\x02\x21\x4c\x18" + b"\xff" * 8])
def test_magic_alone(data):
    unwrap_or_error(data)


# ---------------------------------------------------------------- bombs and nesting


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_decompression_bomb_stops_at_the_limit(bombs, algorithm):
    limit = 4 << 20
    bomb = bombs[algorithm]
    tracemalloc.start()
    try:
        start = time.monotonic()
        err = parse_or_error(lambda d: compression.decompress(algorithm, d, Limits(max_output=limit)), bomb)
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, LimitExceeded), err
    assert err.layer == algorithm and str(limit) in str(err)
    assert elapsed < 5
    assert peak < 64 << 20, f"{peak >> 20} MiB traced"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bomb_inside_a_bzimage_is_capped_by_the_declared_size(bombs, algorithm):
    if algorithm in ("lz4", "lzo"):
        bomb = bombs[algorithm][:1 << 20]  # keep the image small; still decodes to far more than declared
    else:
        bomb = bombs[algorithm]
    err = unwrap_or_error(b.bzimage(payload=bomb + b.le32(1 << 20)), Limits())
    assert isinstance(err, LimitExceeded), err
    assert "declared" in str(err)


def test_bomb_peak_memory_in_a_child_process(tmp_path, bombs):
    """Resident memory, C allocations included, of the whole CLI on a 1 GiB gzip bomb."""
    path = tmp_path / "bomb.gz"
    path.write_bytes(bombs["gzip"])
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss across exec,
    # so a child of a large pytest process would report the parent's memory.
    code = ("import sys; from pykexec.cli import main; rc = main(sys.argv[1:]); "
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')));"
            " sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "inspect", "--max-output", str(8 << 20), str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "pykexec: error: gzip" in out.stderr
    assert int(out.stdout.split()[-1]) < 200 << 10, "peak RSS in KiB"


def test_nesting_too_deep():
    vmlinux = b.elf64()
    data = vmlinux
    for _ in range(12):
        data = b.compress("gzip", data)
    err = unwrap_or_error(data, Limits())
    assert isinstance(err, LimitExceeded) and "deeper than 8" in str(err)
    layers = formats.unwrap(data, Limits(max_depth=16))
    assert len(layers) == 13 and bytes(layers[-1].data) == vmlinux


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_max_depth(depth):
    data = b.elf64()
    for algorithm in ("xz", "gzip", "zstd"):
        data = b.compress(algorithm, data)
    err = unwrap_or_error(data, Limits(max_depth=depth))
    assert isinstance(err, LimitExceeded)


def test_nesting_exactly_at_the_limit():
    data = b.compress("gzip", b.compress("gzip", b.elf64()))
    assert len(formats.unwrap(data, Limits(max_depth=3))) == 3
    assert isinstance(unwrap_or_error(data, Limits(max_depth=2)), LimitExceeded)
