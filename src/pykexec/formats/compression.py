"""Compressed wrappers the kernel build uses: gzip, zstd, xz, lzma, lz4, lzo, bzip2.

Each codec is a registry entry of its own.  The stdlib decodes gzip, xz, lzma
and bzip2; ``zstandard``, ``lz4`` and ``python-lzo`` decode the rest.  Two of
them are kernel-specific framings:

* LZ4 is the *legacy* frame (``lz4 -l``): magic 0x184C2102, then blocks of
  ``le32 compressed size`` + data, each at most 8 MiB decompressed.
* LZO is lzop's container: a magic, a header, then blocks of
  ``be32 uncompressed size, be32 compressed size, checksums, data``.

Decoders stop at the end of their stream, so the size trailer the kernel
build appends is ignored.  Output is produced in chunks and never grows past
``Limits.max_output``: going past it is a :class:`LimitExceeded`, not a hang.

Each decoder imports its library when it runs: probes read magic bytes only,
so recognising a zstd stream does not load lz4, lzo, lzma or bz2.
"""

from __future__ import annotations

import importlib
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable

from ..errors import FormatError, LimitExceeded
from ..limits import Limits
from .layer import Buffer, Format, Layer

CHUNK = 1 << 20
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20
LZ4_LEGACY_BOUND = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16
LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"
LZOP_MAX_BLOCK = 64 << 20
F_ADLER32_D, F_ADLER32_C, F_H_EXTRA_FIELD = 0x1, 0x2, 0x40
F_CRC32_D, F_CRC32_C, F_H_FILTER = 0x100, 0x200, 0x800
ZSTD_MAGIC = 0xFD2FB528


@dataclass(frozen=True)
class Compressed(Layer):
    """A compressed stream and what it decompressed to."""

    algorithm: str = ""
    compressed_size: int = 0
    decompressed_size: int = 0

    @property
    def format(self) -> str:
        return self.algorithm

    def inner(self) -> Buffer:
        return self.data


class Sink:
    """Collects decoder output, refusing to grow past the limit.

    The output is kept in memory, or, given ``out``, written to that file as it
    comes and not kept (``extract`` writes a bzImage's vmlinux this way).
    """

    def __init__(self, name: str, limits: Limits, out: BinaryIO | None = None) -> None:
        self.name, self.limits, self.out = name, limits, out
        self.buf: bytearray | bytes = bytearray()
        self.size = 0

    def add(self, chunk: Buffer) -> None:
        self.reserve(len(chunk))
        if self.out is None:
            self.buf += chunk
        else:
            self.out.write(chunk)
        self.size += len(chunk)
        if self.limits.progress is not None:
            total = self.limits.max_output if self.limits.declared else None
            self.limits.progress(f"decompressing {self.name}", self.size, total)

    @property
    def whole(self) -> bool:
        """Whether a decoder may hand over its complete output at once (see :meth:`take`)."""
        return self.out is None and not self.size

    def take(self, whole: bytes) -> None:
        """Adopt a decoder's complete output without copying it."""
        self.reserve(len(whole))
        self.buf, self.size = whole, len(whole)

    def reset(self) -> None:
        """Forget output adopted by :meth:`take`."""
        self.buf, self.size = bytearray(), 0

    def reserve(self, size: int) -> None:
        """Fail before producing ``size`` more bytes if they would pass the limit."""
        if self.size + size > self.limits.max_output:
            raise LimitExceeded(self.name, f"decompressed output exceeds {self.limits.max_output} "
                                f"bytes, {self.limits.why}", field="decompressed_size")

    @property
    def remaining(self) -> int:
        """How much more may be asked for: one byte past the limit reveals a bomb."""
        return max(1, self.limits.max_output - self.size + 1)

    @property
    def room(self) -> int:
        """The next chunk to ask a streaming decoder for."""
        return min(CHUNK, self.remaining)


def _truncated(name: str, at: int) -> FormatError:
    return FormatError(name, "stream ends before its end marker", field="compressed data", offset=at)


def _gzip(data: memoryview, sink: Sink) -> int:
    d = zlib.decompressobj(wbits=31)
    pos = 0
    while not d.eof:
        if d.unconsumed_tail:
            feed = d.unconsumed_tail
        elif pos < len(data):
            feed, pos = data[pos:pos + CHUNK], min(pos + CHUNK, len(data))
        else:
            raise _truncated("gzip", len(data))
        sink.add(d.decompress(feed, sink.room))
    return pos - len(d.unused_data)


def _stdlib(name: str, make: Callable[[], object]) -> Callable[[memoryview, Sink], int]:
    """Drive an lzma or bz2 decompressor object with bounded output."""
    def run(data: memoryview, sink: Sink) -> int:
        d = make()
        pos = 0
        while not d.eof:
            if d.needs_input:
                if pos >= len(data):
                    raise _truncated(name, len(data))
                feed, pos = data[pos:pos + CHUNK], min(pos + CHUNK, len(data))
            else:
                feed = b""
            sink.add(d.decompress(feed, sink.room))
        return pos - len(d.unused_data)
    return run


def zstd_frame_size(data: memoryview) -> int:
    """Length of the first zstd frame, by walking its block headers (RFC 8878 §3.1.1).

    python-zstandard does not expose ZSTD_findFrameCompressedSize, and its
    stream reader fails on bytes after the frame, which the kernel appends.
    """
    import zstandard
    try:
        pos = zstandard.frame_header_size(data)
    except zstandard.ZstdError as e:
        raise FormatError("zstd", f"bad frame header: {e}", field="Frame_Header", offset=4) from e
    checksum = 4 if data[4] & 0x04 else 0
    while True:
        if pos + 3 > len(data):
            raise _truncated("zstd", pos)
        header = int.from_bytes(data[pos:pos + 3], "little")
        last, block_type, size = header & 1, (header >> 1) & 3, header >> 3
        if block_type == 3:
            raise FormatError("zstd", "reserved block type", field="Block_Type", offset=pos)
        pos += 3 + (1 if block_type == 1 else size)
        if last:
            break
    if pos + checksum > len(data):
        raise _truncated("zstd", pos)
    return pos + checksum


def _zstd(data: memoryview, sink: Sink) -> int:
    """One call into libzstd when the container declared the size, else streamed.

    The one-shot call cannot tell a short output buffer from a corrupt frame,
    so when it fails the stream decoder runs and says which it was.
    """
    import zstandard
    size = zstd_frame_size(data)
    frame = data[:size]
    if sink.limits.declared and sink.whole:
        try:
            sink.take(zstandard.ZstdDecompressor().decompress(frame, max_output_size=sink.remaining))
            return size
        except zstandard.ZstdError:
            sink.reset()
    reader = zstandard.ZstdDecompressor().stream_reader(frame, read_size=CHUNK)
    chunk = memoryview(bytearray(CHUNK))
    try:
        while n := reader.readinto(chunk[:sink.room]):
            sink.add(chunk[:n])
    except zstandard.ZstdError as e:
        raise FormatError("zstd", str(e), field="compressed data") from e
    return size


def _lz4_legacy(data: memoryview, sink: Sink) -> int:
    import lz4.block
    pos = 4
    while len(data) - pos > 4:
        size = int.from_bytes(data[pos:pos + 4], "little")
        if size == LZ4_LEGACY_MAGIC:
            pos += 4
            continue
        if size == 0 or size > LZ4_LEGACY_BOUND:
            break
        if pos + 4 + size > len(data):
            raise _truncated("lz4", pos)
        block = data[pos + 4:pos + 4 + size]
        try:
            out = lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError as e:
            raise FormatError("lz4", f"block does not decode within {LZ4_LEGACY_BLOCK} bytes "
                              f"({e})", field="block", offset=pos) from e
        sink.add(out)
        pos += 4 + size
    return pos


class _Cursor:
    """Reads big-endian fields from lzop's container, bounds-checked."""

    def __init__(self, data: memoryview, pos: int) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise FormatError("lzo", f"truncated: needs {n} bytes", field=what, offset=self.pos)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def be(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")


def _lzop_header(c: _Cursor) -> int:
    """Skip lzop's file header, returning its flags (lzop's src/lzop.c: p_header)."""
    version = c.be(2, "version")
    c.be(2, "lib_version")
    if version >= 0x0940:
        c.be(2, "version_needed_to_extract")
    c.be(1, "method")
    if version >= 0x0940:
        c.be(1, "level")
    flags = c.be(4, "flags")
    if flags & F_H_FILTER:
        c.be(4, "filter")
    c.take(8, "mode, mtime_low")
    if version >= 0x0940:
        c.be(4, "mtime_high")
    c.take(c.be(1, "name_len"), "name")
    c.be(4, "header_checksum")
    if flags & F_H_EXTRA_FIELD:
        c.take(c.be(4, "extra_field_len"), "extra_field")
        c.be(4, "extra_field_checksum")
    return flags


def _lzo(data: memoryview, sink: Sink) -> int:
    import lzo
    c = _Cursor(data, len(LZOP_MAGIC))
    flags = _lzop_header(c)
    while dst_len := c.be(4, "dst_len"):
        src_len = c.be(4, "src_len")
        if dst_len > LZOP_MAX_BLOCK or src_len > dst_len:
            raise FormatError("lzo", f"block sizes {src_len}/{dst_len} are invalid",
                              field="src_len", offset=c.pos - 4)
        c.take(4 * bool(flags & F_ADLER32_D) + 4 * bool(flags & F_CRC32_D), "checksum")
        if src_len < dst_len:
            c.take(4 * bool(flags & F_ADLER32_C) + 4 * bool(flags & F_CRC32_C), "checksum")
        block = c.take(src_len, "block")
        sink.reserve(dst_len)
        try:
            sink.add(block if src_len == dst_len else lzo.decompress(bytes(block), False, dst_len))
        except lzo.error as e:
            raise FormatError("lzo", str(e), field="block", offset=c.pos - src_len) from e
    return c.pos


def _is_lzma_alone(d: Buffer) -> bool:
    """The .lzma header the kernel build writes: props 0x5d (lc=3, lp=0, pb=2) and a
    dictionary size whose low two bytes are zero, as scripts/extract-vmlinux expects."""
    return len(d) >= 13 and bytes(d[:3]) == b"\x5d\x00\x00"


def _lzma(fmt: str) -> Callable[[], object]:
    def make():
        import lzma
        return lzma.LZMADecompressor(getattr(lzma, fmt))
    return make


def _bz2() -> object:
    import bz2
    return bz2.BZ2Decompressor()


Decoder = Callable[[memoryview, Sink], int]
# name: (probe, decoder, the library's exception as (module, attribute), imported on failure)
CODECS: dict[str, tuple[Callable[[Buffer], bool], Decoder, tuple[str, str]]] = {
    "gzip": (lambda d: bytes(d[:2]) == b"\x1f\x8b", _gzip, ("zlib", "error")),
    "zstd": (lambda d: len(d) >= 4 and struct.unpack_from("<I", d)[0] == ZSTD_MAGIC,
             _zstd, ("zstandard", "ZstdError")),
    "xz": (lambda d: bytes(d[:6]) == b"\xfd7zXZ\x00", _stdlib("xz", _lzma("FORMAT_XZ")),
           ("lzma", "LZMAError")),
    "lzma": (_is_lzma_alone, _stdlib("lzma", _lzma("FORMAT_ALONE")), ("lzma", "LZMAError")),
    "lz4": (lambda d: len(d) >= 4 and struct.unpack_from("<I", d)[0] == LZ4_LEGACY_MAGIC,
            _lz4_legacy, ("lz4.block", "LZ4BlockError")),
    "lzo": (lambda d: bytes(d[:9]) == LZOP_MAGIC, _lzo, ("lzo", "error")),
    "bzip2": (lambda d: len(d) >= 4 and bytes(d[:3]) == b"BZh" and b"1" <= bytes(d[3:4]) <= b"9",
              _stdlib("bzip2", _bz2), ("builtins", "OSError")),
}


def _library_error(where: tuple[str, str]) -> type[Exception]:
    module, name = where
    return getattr(importlib.import_module(module), name)


def decompress(algorithm: str, data: Buffer, limits: Limits, out: BinaryIO | None = None) -> Compressed:
    """Decode one stream of ``algorithm``, bounded by ``limits``.

    With ``out``, the output goes to that file as it is decoded, and the layer
    returned holds no bytes (``data`` is None).
    """
    _, decoder, lib_error = CODECS[algorithm]
    sink = Sink(algorithm, limits, out)
    view = memoryview(data)
    try:
        consumed = decoder(view, sink)
    except (_library_error(lib_error), EOFError, ValueError) as e:  # evaluated only on failure
        if isinstance(e, FormatError):
            raise
        raise FormatError(algorithm, f"corrupt stream: {e}", field="compressed data") from e
    if limits.progress is not None:
        limits.progress(f"decompressing {algorithm}", sink.size, sink.size)
    return Compressed(arch=None, data=memoryview(sink.buf) if out is None else None,
                      algorithm=algorithm, compressed_size=consumed, decompressed_size=sink.size)


def _entry(name: str) -> Format:
    probe = CODECS[name][0]
    return Format(name, probe, lambda data, limits: decompress(name, data, limits),
                  f"{name} magic at 0")


FORMATS = tuple(_entry(name) for name in CODECS)
