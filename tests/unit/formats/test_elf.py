"""ELF: the builder checked with pyelftools and readelf, the parser's report, bad tables."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from pykexec import formats
from pykexec.errors import FormatError
from pykexec.formats import elf
from pykexec.formats.elf import Elf
from pykexec.formats.prepare import prepare
from tests import builders as b

from ..contract import parse_or_error, truncations, unwrap_or_error

KINDS = [(64, "little"), (64, "big"), (32, "little"), (32, "big")]


@pytest.mark.parametrize("elf_class, endian", KINDS)
def test_builder_output_is_what_pyelftools_reads(elf_class, endian):
    notes = ((b"Xen", 5, b"xen-3.0\0"), (b"GNU", 3, b"\x01" * 20))
    data = b.elf(elf_class, endian=endian, notes=notes, load=b"\x90" * 33, vaddr=0x200000)
    f = ELFFile(io.BytesIO(data))
    assert (f.elfclass, f.little_endian) == (elf_class, endian == "little")
    segs = list(f.iter_segments())
    assert [s.header.p_type for s in segs] == ["PT_LOAD", "PT_NOTE"]
    assert segs[0].data() == b"\x90" * 33 and segs[0].header.p_vaddr == 0x200000
    assert [(n.n_name, n.n_descsz, n.n_desc) for n in segs[1].iter_notes()] == [
        ("Xen", 8, b"xen-3.0\0"), ("GNU", 20, "01" * 20)]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf not installed")
@pytest.mark.parametrize("elf_class, endian", KINDS)
def test_builder_output_is_what_readelf_reads(tmp_path, elf_class, endian):
    path = tmp_path / "vmlinux"
    path.write_bytes(b.elf(elf_class, endian=endian))
    out = subprocess.run(["readelf", "-lnW", str(path)], capture_output=True, text=True, check=True)
    assert "LOAD" in out.stdout and "NOTE" in out.stdout and "Linux" in out.stdout
    assert "Error" not in out.stderr and "Warning" not in out.stderr


@pytest.mark.parametrize("elf_class, endian", KINDS)
@pytest.mark.parametrize("machine, arch", [(b.EM_X86_64, "x86_64"), (b.EM_386, "x86"),
                                           (b.EM_AARCH64, "arm64"), (b.EM_RISCV, "riscv64"),
                                           (0x9999, None)])
def test_parse_reports_header(elf_class, endian, machine, arch):
    data = b.elf(elf_class, endian=endian, machine=machine, entry=0x1000200)
    layer = formats.identify(data)
    assert isinstance(layer, Elf) and layer.format == "elf"
    assert (layer.elf_class, layer.endianness, layer.arch, layer.entry) == (
        elf_class, endian, arch, 0x1000200)
    assert layer.elf_type == "ET_EXEC"
    assert [s.p_type for s in layer.segments] == ["PT_LOAD", "PT_NOTE"]
    assert [n.n_name for n in layer.notes] == ["Linux"]
    load = layer.loads[0]
    assert bytes(layer.segment_bytes(load)) == b"\x90" * 48 + b"\xf4"
    assert load.p_memsz == load.p_filesz + 0x100
    layer.to_json()


def test_machine_names():
    assert formats.identify(b.elf64()).machine == "EM_X86_64"


def test_multiboot_headers_inside_an_elf_like_xen():
    layer = formats.identify(b.xen_like_elf())
    assert layer.format == "elf"
    assert [m["format"] for m in layer.multiboot] == ["multiboot2", "multiboot"]
    assert layer.multiboot[0]["header"].architecture == "i386"
    assert prepare(b.xen_like_elf()).kernel_layer.format == "elf"


@pytest.mark.parametrize("algorithm", ["gzip", "xz"])
def test_compressed_vmlinux(algorithm):
    vmlinux = b.elf64()
    p = prepare(b.compress(algorithm, vmlinux))
    assert p.kernel_layer.format == "elf" and bytes(p.kernel) == vmlinux


# ---------------------------------------------------------------- malformed


@pytest.mark.parametrize("elf_class", [32, 64])
@pytest.mark.parametrize("fields", [
    {"e_phoff": 0xFFFFFF00}, {"e_phnum": 0xFFFF}, {"e_phnum": 200},
])
def test_program_headers_past_the_end(elf_class, fields):
    err = parse_or_error(elf.parse, b.elf(elf_class, **fields))
    assert isinstance(err, FormatError) and err.field == "e_phoff"
    assert err.offset == (0x20 if elf_class == 64 else 0x1C)


@pytest.mark.parametrize("elf_class", [32, 64])
def test_program_header_entry_size_must_match_the_class(elf_class):
    err = parse_or_error(elf.parse, b.elf(elf_class, e_phentsize=0xFFFF))
    assert isinstance(err, FormatError) and err.field == "e_phentsize"
    assert err.offset == (0x36 if elf_class == 64 else 0x2A)


@pytest.mark.parametrize("elf_class", [32, 64])
@pytest.mark.parametrize("fields", [
    {"e_phentsize": 0}, {"e_phentsize": 1}, {"e_phentsize": 0, "e_phnum": 0xFFFE},
    {"e_phoff": 0}, {"e_phoff": 3}, {"e_shoff": 0xFFFFFFF0, "e_shnum": 3, "e_shentsize": 64},
    {"e_shstrndx": 5, "e_shnum": 1, "e_shoff": 64}, {"e_type": 0x1234}, {"e_version": 0},
    {"e_ehsize": 0}, {"ei_version": 9}, {"e_shnum": 0xFFFF, "e_shoff": 8, "e_shentsize": 0},
])
def test_odd_header_fields(elf_class, fields):
    unwrap_or_error(b.elf(elf_class, **fields))


@pytest.mark.parametrize("fields", [{"ei_class": 0}, {"ei_class": 3}, {"ei_data": 0}, {"ei_data": 3}])
def test_bad_ident(fields):
    err = parse_or_error(elf.parse, b.elf64(**fields))
    assert isinstance(err, FormatError) and (err.field, err.offset) == ("e_ident", 4)


@pytest.mark.parametrize("elf_class", [32, 64])
def test_pt_load_past_the_end(elf_class):
    big = b.Phdr(b.PT_LOAD, 0x100, 0x2000000, 0x2000000, 0x7FFFFFF0, 0x7FFFFFF0, 5, 16)
    err = parse_or_error(elf.parse, b.elf(elf_class, extra_phdrs=(big,)))
    assert isinstance(err, FormatError) and err.field == "p_filesz"


@pytest.mark.parametrize("elf_class", [32, 64])
def test_pt_note_past_the_end(elf_class):
    note = b.Phdr(b.PT_NOTE, 0x80, 0, 0, 0x100000, 0x100000, 4, 4)
    err = parse_or_error(elf.parse, b.elf(elf_class, extra_phdrs=(note,)))
    assert isinstance(err, FormatError)


@pytest.mark.parametrize("namesz, descsz", [(0xFFFFFFFF, 0), (0, 0xFFFFFFFF), (0x7FFFFFFF, 0x7FFFFFFF),
                                            (3, 0xFFFFFFF0)])
def test_note_sizes_past_the_segment(namesz, descsz):
    data = bytearray(b.elf64(notes=((b"Xen", 5, b"1234"),)))
    note_at = 64 + 2 * 56
    data[note_at:note_at + 8] = namesz.to_bytes(4, "little") + descsz.to_bytes(4, "little")
    unwrap_or_error(bytes(data))


def test_many_notes_are_bounded():
    notes = tuple((b"N", i, b"") for i in range(5000))
    err = parse_or_error(elf.parse, b.elf64(notes=notes))
    assert isinstance(err, FormatError)


@pytest.mark.parametrize("elf_class, endian", KINDS)
def test_truncation(elf_class, endian):
    data = b.elf(elf_class, endian=endian)
    for n in truncations(data, len(data)):
        assert isinstance(parse_or_error(elf.parse, data[:n]), (Elf, FormatError)), n
        unwrap_or_error(data[:n])


@pytest.mark.parametrize("elf_class", [32, 64])
def test_note_name_without_terminator(elf_class):
    """n_namesz 4 over the name "ABCD": no NUL inside n_namesz bytes (found by the fuzzer)."""
    data = bytearray(b.elf(elf_class, notes=((b"ABCD", 6, b"abcd"),)))
    note_at = (64 + 2 * 56) if elf_class == 64 else (52 + 2 * 32)
    data[note_at:note_at + 4] = (4).to_bytes(4, "little")
    layer = parse_or_error(elf.parse, bytes(data))
    assert isinstance(layer, elf.ElfFile) and [n.n_name for n in layer.notes] == ["ABCD"]


def test_zero_phentsize_with_many_headers_is_refused_at_once():
    """Found by the atheris campaign: e_phentsize 0 and e_phnum 54784 made pyelftools
    parse the same header 54784 times (10 s)."""
    import time
    from pathlib import Path

    from pykexec.errors import FormatError
    from pykexec.formats import elf as elf_format

    seed = Path(__file__).parents[2] / "fuzz" / "corpus" / "elf" / "phentsize-zero-54784-phdrs.bin"
    start = time.monotonic()
    with pytest.raises(FormatError, match="e_phentsize"):
        elf_format.parse(seed.read_bytes())
    assert time.monotonic() - start < 1
