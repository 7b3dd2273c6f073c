"""What pykexec's purgatories (x86_64 in this package, arm64 in :mod:`.arm64`) share in Python.

Each build starts with a header that names it (magic, version) and says where
its parameter block is; pykexec reads the committed ``purgatory.bin``, checks
that header against the layouts declared beside its source (a :class:`Build`),
tells the planners how much room it needs, and fills the block: the
architecture's own values, then up to ``max_regions`` :class:`Region` records,
each the SHA-256 of a segment's bytes and the length of the zero padding after
them.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from importlib import resources
from typing import Iterable, Mapping, Sequence, TypeVar

from ...errors import PurgatoryError
from ...layout import Layout
from ...plan.common import PurgatorySize

REGION = struct.Struct("<QQQ8x32s")   # start, len, zero_len, reserved, sha256 (struct pg_region)


@dataclass(frozen=True)
class Region:
    """Memory the purgatory checks before the jump: ``length`` bytes that must hash to
    ``sha256``, then ``zero_length`` bytes that must be zero."""

    start: int
    length: int
    sha256: bytes
    zero_length: int = 0

    @classmethod
    def of(cls, start: int, buf: bytes | memoryview, memsz: int) -> "Region":
        """The region a segment fills: its bytes, then the zeroes the kernel fills up to
        ``memsz`` (kexec-tools hashes those too; comparing them with zero is as exact)."""
        return cls(start, len(buf), hashlib.sha256(buf).digest(), max(memsz - len(buf), 0))

    @property
    def end(self) -> int:
        return self.start + self.length + self.zero_length


def regions_for(segments: Iterable, *, skip: Sequence[int] = ()) -> tuple[Region, ...]:
    """One region per segment with bytes (``buffer``/``buf``, ``mem``, ``memsz``), in order."""
    out = []
    for i, seg in enumerate(segments):
        if i in skip:
            continue
        buf = getattr(seg, "buffer", None)
        if buf is None:
            buf = getattr(seg, "buf")
        out.append(Region.of(seg.mem, memoryview(buf)[:getattr(seg, "bufsz", len(buf))], seg.memsz))
    return tuple(out)


@dataclass(frozen=True)
class Build:
    """One purgatory as pykexec reads it.  ``header`` and ``params`` have the fields every build
    shares (``magic``, ``version``, ``params_offset``, ``params_size``, ``image_size``, ``mem_size``,
    ``max_regions``; ``regions``); ``what`` names it in messages, ``package`` holds its
    ``purgatory.bin`` and ``script`` rebuilds it."""

    name: str
    what: str
    magic: bytes
    version: int
    header: Layout = field(repr=False)
    params: Layout = field(repr=False)
    max_regions: int
    package: str
    script: str


@dataclass(frozen=True)
class Image:
    """A built purgatory and its header."""

    data: bytes = field(repr=False)
    header: dict
    build: Build = field(repr=False)

    @property
    def mem_size(self) -> int:
        return self.header["mem_size"]

    @property
    def params_offset(self) -> int:
        return self.header["params_offset"]

    def size(self, page: int = 4096) -> PurgatorySize:
        """The segment the planner must find room for: entry at offset 0."""
        memsz = -(-max(self.mem_size, len(self.data)) // page) * page
        return PurgatorySize(bufsz=len(self.data), memsz=memsz, align=page, entry_offset=0,
                             measured_from=f"{self.build.name} v{self.header['version']} "
                                           f"({len(self.data)} bytes, {self.mem_size:#x} in memory)")

    def filled(self, values: Mapping[str, int], regions: Sequence[Region]) -> bytes:
        """The image with its parameter block holding ``values`` (by field name), ``nr_regions``
        and ``regions``."""
        build = self.build
        if len(regions) > build.max_regions:
            raise PurgatoryError(f"{len(regions)} regions to check; the purgatory holds {build.max_regions}")
        block = bytearray(build.params.size)
        for name, value in {**values, "nr_regions": len(regions)}.items():
            f = build.params.fields[name]
            struct.pack_into("<" + f.code, block, f.offset, value)
        base = build.params.offset("regions")
        for i, r in enumerate(regions):
            REGION.pack_into(block, base + i * REGION.size, r.start, r.length, r.zero_length, r.sha256)
        out = bytearray(self.data)
        out[self.params_offset:self.params_offset + len(block)] = block
        return bytes(out)


ImageT = TypeVar("ImageT", bound=Image)


def parse(build: Build, data: bytes, cls: type[ImageT]) -> ImageT:
    """``data`` as a ``cls`` image, its header checked against what ``build`` declares."""
    if len(data) < build.header.size or build.header.get(data, "magic") != build.magic:
        raise PurgatoryError(f"{build.what} has no {build.magic.decode()} header: rebuild it with {build.script}")
    header = build.header.unpack(data)
    expected = {"version": build.version, "params_size": build.params.size, "max_regions": build.max_regions}
    wrong = {k: (header[k], v) for k, v in expected.items() if header[k] != v}
    if wrong:
        detail = ", ".join(f"{k} {found} (expected {want})" for k, (found, want) in wrong.items())
        raise PurgatoryError(f"{build.what} does not match this pykexec: {detail}; rebuild it")
    if header["params_offset"] + build.params.size > len(data):
        raise PurgatoryError(f"{build.what}: the parameter block lies outside the image")
    return cls(bytes(data), header, build)


def committed(build: Build) -> bytes:
    """The committed ``purgatory.bin`` of ``build`` (package data)."""
    try:
        return resources.files(build.package).joinpath("purgatory.bin").read_bytes()
    except (FileNotFoundError, OSError) as e:
        raise PurgatoryError(f"{build.what} is missing from the pykexec package: {e}") from e
