"""Systematic mutations of real images: truncations and hostile header fields.

For every mutant, ``inspect --json`` and ``extract`` must exit 0 or 2, never
show a traceback, on 2 print exactly one stderr line starting
``pykexec: error: ``, and finish within 30 s.
"""

from __future__ import annotations

import json
import struct

import pytest

from . import oracles as o
from .helpers import assert_clean_error, assert_no_traceback, describe, material, run_cli

pytestmark = pytest.mark.real

TIMEOUT = 30


def _check(path, tmp_path):
    for args in (["inspect", path, "--json"], ["extract", path, "-o", tmp_path / "out"]):
        proc = run_cli(*args, timeout=TIMEOUT)
        assert proc.returncode in (0, 2), describe(proc)
        assert_no_traceback(proc)
        if proc.returncode == 2:
            assert_clean_error(proc)
        elif args[0] == "inspect":
            try:
                json.loads(proc.stdout)
            except ValueError:
                pytest.fail(f"inspect exited 0 without one JSON object: {describe(proc)}")


def _put(data: bytearray, off: int, fmt: str, value: int) -> None:
    struct.pack_into(fmt, data, off, value)


# --------------------------------------------------------------------------
# the bookworm cloud bzImage


def _bz_mutations():
    """name -> function(original bytes) -> mutated bytes."""
    def cut(at):
        return lambda b: b[: at(b)]

    def setfield(off, fmt, value):
        def f(b):
            m = bytearray(b)
            _put(m, off, fmt, value(b) if callable(value) else value)
            return bytes(m)
        return f

    def payload_start(b):
        return o.setup_size(b) + o.bzimage_header(b)["payload_offset"]

    def flip_payload(at):
        def f(b):
            m = bytearray(b)
            start = payload_start(b)
            i = start + int(o.bzimage_header(b)["payload_length"] * at)
            for k in range(i, i + 64):
                m[k] ^= 0xA5
            return bytes(m)
        return f

    def pe_sections_huge(b):
        m = bytearray(b)
        pe = struct.unpack_from("<I", b, 0x3C)[0]
        _put(m, pe + 6, "<H", 0xFFFF)  # NumberOfSections
        return bytes(m)

    def appended_size_huge(b):
        # the kernel build appends the decompressed size (le32) to the payload
        m = bytearray(b)
        end = payload_start(b) + o.bzimage_header(b)["payload_length"]
        _put(m, end - 4, "<I", 0xFFFFFFF0)
        return bytes(m)

    muts = {
        "cut-0": cut(lambda b: 0),
        "cut-1": cut(lambda b: 1),
        "cut-0x1f1": cut(lambda b: 0x1F1),
        "cut-0x1f2": cut(lambda b: 0x1F2),
        "cut-0x202": cut(lambda b: 0x202),
        "cut-0x206": cut(lambda b: 0x206),
        "cut-0x250": cut(lambda b: 0x250),
        "cut-header-end": cut(lambda b: o.bzimage_header(b)["header_end"]),
        "cut-setup-end": cut(lambda b: o.setup_size(b)),
        "cut-payload+16": cut(lambda b: payload_start(b) + 16),
        "cut-half-payload": cut(lambda b: payload_start(b) + o.bzimage_header(b)["payload_length"] // 2),
        "cut-payload-end-1": cut(lambda b: payload_start(b) + o.bzimage_header(b)["payload_length"] - 1),
        "cut-last-byte": cut(lambda b: len(b) - 1),
        "setup_sects-0xff": setfield(0x1F1, "<B", 0xFF),
        "setup_sects-0": setfield(0x1F1, "<B", 0),
        "header-len-0xff": setfield(0x201, "<B", 0xFF),
        "version-0xffff": setfield(0x206, "<H", 0xFFFF),
        "version-0x0100": setfield(0x206, "<H", 0x0100),
        "payload_offset-huge": setfield(0x248, "<I", 0xFFFFFFFF),
        "payload_offset-0": setfield(0x248, "<I", 0),
        "payload_length-huge": setfield(0x24C, "<I", 0xFFFFFFFF),
        "payload_length-0": setfield(0x24C, "<I", 0),
        "payload_length-past-eof": setfield(0x24C, "<I", lambda b: len(b)),
        "init_size-0": setfield(0x260, "<I", 0),
        "init_size-huge": setfield(0x260, "<I", 0xFFFFFFFF),
        "kernel_alignment-0": setfield(0x230, "<I", 0),
        "kernel_alignment-3": setfield(0x230, "<I", 3),
        "cmdline_size-0": setfield(0x238, "<I", 0),
        "e_lfanew-outside": setfield(0x3C, "<I", 0xFFFFFFF0),
        "e_lfanew-at-eof": setfield(0x3C, "<I", lambda b: len(b) - 2),
        "pe-sections-huge": pe_sections_huge,
        "no-HdrS": setfield(0x202, "<I", 0),
        "payload-corrupt-start": flip_payload(0.0),
        "payload-corrupt-middle": flip_payload(0.5),
        "appended-size-huge": appended_size_huge,
    }
    return muts


BZ_MUTATIONS = _bz_mutations()


@pytest.fixture(scope="module")
def bz_original(bookworm_cloud):
    return bookworm_cloud.read_bytes()


@pytest.mark.parametrize("name", sorted(BZ_MUTATIONS))
def test_bzimage_mutation(name, bz_original, tmp_path):
    path = tmp_path / f"vmlinuz.{name}"
    path.write_bytes(BZ_MUTATIONS[name](bz_original))
    _check(path, tmp_path)


# --------------------------------------------------------------------------
# the gzip arm64 zboot kernel


def _zboot_mutations():
    def cut(at):
        return lambda b: b[: at(b)]

    def setfield(off, fmt, value):
        def f(b):
            m = bytearray(b)
            _put(m, off, fmt, value(b) if callable(value) else value)
            return bytes(m)
        return f

    def payload_at(frac):
        def at(b):
            h = o.zboot_header(b)
            return h["payload_offset"] + int(h["payload_size"] * frac)
        return at

    def set_comp(name: bytes):
        def f(b):
            m = bytearray(b)
            m[24:56] = name.ljust(32, b"\0")
            return bytes(m)
        return f

    def flip(frac):
        def f(b):
            m = bytearray(b)
            i = payload_at(frac)(b)
            for k in range(i, i + 64):
                m[k] ^= 0x5A
            return bytes(m)
        return f

    def gzip_isize_huge(b):
        h = o.zboot_header(b)
        m = bytearray(b)
        _put(m, h["payload_offset"] + h["payload_size"] - 4, "<I", 0xFFFFFFF0)
        return bytes(m)

    return {
        "cut-0": cut(lambda b: 0),
        "cut-1": cut(lambda b: 1),
        "cut-4": cut(lambda b: 4),
        "cut-8": cut(lambda b: 8),
        "cut-12": cut(lambda b: 12),
        "cut-24": cut(lambda b: 24),
        "cut-0x40": cut(lambda b: 0x40),
        "cut-payload-start": cut(payload_at(0.0)),
        "cut-payload+16": cut(lambda b: payload_at(0.0)(b) + 16),
        "cut-half-payload": cut(payload_at(0.5)),
        "cut-payload-end-1": cut(lambda b: payload_at(1.0)(b) - 1),
        "cut-last-byte": cut(lambda b: len(b) - 1),
        "payload_size-negative": setfield(12, "<I", 0x80000000),
        "payload_size-minus-1": setfield(12, "<I", 0xFFFFFFFF),
        "payload_size-0": setfield(12, "<I", 0),
        "payload_size-past-eof": setfield(12, "<I", lambda b: len(b)),
        "payload_offset-huge": setfield(8, "<I", 0xFFFFFFFF),
        "payload_offset-eof": setfield(8, "<I", lambda b: len(b)),
        "payload_offset-0": setfield(8, "<I", 0),
        "compression-bogus": set_comp(b"bogus"),
        "compression-empty": set_comp(b""),
        "compression-zstd22-on-gzip": set_comp(b"zstd22"),
        "compression-unterminated": lambda b: b[:24] + b"x" * 32 + b[56:],
        "e_lfanew-outside": setfield(0x3C, "<I", 0xFFFFFFF0),
        "e_lfanew-at-eof": setfield(0x3C, "<I", lambda b: len(b) - 2),
        "payload-corrupt-start": flip(0.0),
        "payload-corrupt-middle": flip(0.5),
        "gzip-isize-huge": gzip_isize_huge,
    }


ZBOOT_MUTATIONS = _zboot_mutations()


@pytest.fixture(scope="module")
def zboot_original():
    efi, _ = material.arm64_zboot("gzip")
    return efi.read_bytes()


@pytest.mark.parametrize("name", sorted(ZBOOT_MUTATIONS))
def test_zboot_mutation(name, zboot_original, tmp_path):
    path = tmp_path / f"vmlinuz.efi.{name}"
    path.write_bytes(ZBOOT_MUTATIONS[name](zboot_original))
    _check(path, tmp_path)


# --------------------------------------------------------------------------
# inputs that are not images at all


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "random"])
def test_bad_input_is_a_clean_error(kind, tmp_path):
    import os

    path = tmp_path / "input"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    for args in (["inspect", path, "--json"], ["extract", path, "-o", tmp_path / "out"]):
        assert_clean_error(run_cli(*args, timeout=TIMEOUT))
