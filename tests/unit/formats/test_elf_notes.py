"""ELF notes are named by their owner and type, in the owner's own table.

Expected names come from the owners' headers: glibc's elf.h (NT_GNU_*), Xen's
public elfnote.h (XEN_ELFNOTE_*, also include/xen/interface/elfnote.h in Linux)
and Linux's build-salt.h / elfnote-lto.h (LINUX_ELFNOTE_*).  For GNU notes,
binutils' readelf agrees.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pykexec import formats
from pykexec.errors import FormatError
from pykexec.formats import elf
from tests import builders as b

from ..contract import parse_or_error


@pytest.mark.parametrize("owner, n_type, name", [
    (b"Xen", 3, "XEN_ELFNOTE_VIRT_BASE"),        # NT_GNU_BUILD_ID's number
    (b"Xen", 1, "XEN_ELFNOTE_ENTRY"),
    (b"Xen", 5, "XEN_ELFNOTE_XEN_VERSION"),
    (b"Xen", 18, "XEN_ELFNOTE_PHYS32_ENTRY"),
    (b"Xen", 0, "XEN_ELFNOTE_INFO"),
    (b"GNU", 3, "NT_GNU_BUILD_ID"),
    (b"GNU", 1, "NT_GNU_ABI_TAG"),
    (b"GNU", 5, "NT_GNU_PROPERTY_TYPE_0"),
    (b"Linux", 0x100, "LINUX_ELFNOTE_BUILD_SALT"),
    (b"Linux", 0x101, "LINUX_ELFNOTE_LTO_INFO"),
])
@pytest.mark.parametrize("elf_class, endian", [(64, "little"), (32, "big")])
def test_notes_are_named_by_owner(owner, n_type, name, elf_class, endian):
    notes = ((b"Linux", 0x100, b"salt\0"), (owner, n_type, b"\x01" * 8))
    layer = formats.identify(b.elf(elf_class, endian=endian, notes=notes))
    note = layer.notes[1]
    assert (note.n_name, note.n_type, note.n_descsz, note.type_name) == (owner.decode(), n_type, 8, name)
    assert layer.to_json()["notes"][1] == {"n_name": owner.decode(), "n_type": n_type,
                                           "n_descsz": 8, "type_name": name}


@pytest.mark.parametrize("owner, n_type", [(b"Xen", 99), (b"GNU", 0x4242), (b"Linux", 3),
                                           (b"FDO", 0xCAFE1A7E), (b"", 3), (b"LINUX", 0x202)])
def test_unknown_owners_and_types_are_numbers(owner, n_type):
    notes = ((b"Linux", 0x100, b"salt\0"), (owner, n_type, b"\x00" * 4))
    note = formats.identify(b.elf64(notes=notes)).notes[1]
    assert (note.n_name, note.n_type, note.type_name) == (owner.decode(), n_type, None)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf not installed")
def test_owners_types_and_sizes_agree_with_readelf(tmp_path):
    notes = ((b"Xen", 6, b"linux\0"), (b"GNU", 3, b"\xab" * 20), (b"Linux", 0x100, b"6.1\0"),
             (b"Xen", 3, b"\0" * 8))
    path = tmp_path / "vmlinux"
    path.write_bytes(b.elf64(notes=notes))
    out = subprocess.run(["readelf", "-nW", str(path)], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split()[:2] for line in out.splitlines() if line.startswith("  ") and "0x" in line]
    ours = formats.identify(path.read_bytes()).notes
    assert rows == [[n.n_name, f"{n.n_descsz:#010x}"] for n in ours]
    assert "NT_GNU_BUILD_ID" in out and ours[1].type_name == "NT_GNU_BUILD_ID"


def test_a_note_past_its_segment_is_a_format_error():
    data = bytearray(b.elf64(notes=((b"Xen", 3, b"\0" * 8),)))
    note_at = 64 + 2 * 56  # after the ELF header and two program headers
    data[note_at + 4:note_at + 8] = (0x1000).to_bytes(4, "little")   # n_descsz
    err = parse_or_error(elf.parse, bytes(data))
    assert isinstance(err, FormatError) and (err.field, err.offset) == ("n_descsz", note_at + 4)
