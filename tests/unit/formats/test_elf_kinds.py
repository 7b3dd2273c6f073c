"""ELF files that are not kernels: object files, core dumps, firmware.

The e_type names come from the gABI (``readelf -h`` prints them); a compiler's
object file and Debian's OpenSBI firmware are the real material.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pykexec import formats
from pykexec.errors import NotLoadable
from pykexec.formats.elf import Elf, ElfNotKernel
from pykexec.formats.prepare import prepare
from tests import builders as b


def _refusal(data: bytes) -> NotLoadable:
    with pytest.raises(NotLoadable) as info:
        prepare(data)
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("e_type, name, what", [
    (1, "ET_REL", "an ELF relocatable object (ET_REL), not an executable kernel"),
    (4, "ET_CORE", "an ELF core dump (ET_CORE), not an executable kernel"),
    (0, "ET_NONE", "an ELF file of no type (ET_NONE), not an executable kernel"),
])
@pytest.mark.parametrize("elf_class", [32, 64])
def test_not_an_executable_is_reported_and_refused(elf_class, e_type, name, what):
    data = b.elf(elf_class, e_type=e_type)
    layer = formats.identify(data)
    assert isinstance(layer, ElfNotKernel) and not isinstance(layer, Elf)
    assert layer.to_json()["elf_type"] == name and layer.to_json()["what"] == what
    err = _refusal(data)
    assert str(err) == f"elf e_type at offset 0x10: {what}"


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("readelf") is None,
                    reason="gcc and readelf are needed")
def test_a_compiled_object_file(tmp_path):
    (tmp_path / "a.c").write_text("int f(void) { return 1; }\n")
    subprocess.run(["gcc", "-c", "-o", str(tmp_path / "a.o"), str(tmp_path / "a.c")], check=True)
    readelf = subprocess.run(["readelf", "-h", str(tmp_path / "a.o")], capture_output=True,
                             text=True, check=True).stdout
    assert "REL (Relocatable file)" in readelf
    data = (tmp_path / "a.o").read_bytes()
    [layer] = formats.unwrap(data)
    assert layer.elf_type == "ET_REL"
    assert "relocatable object (ET_REL)" in str(_refusal(data))


@pytest.mark.parametrize("e_type", [2, 3])
def test_an_executable_without_kernel_notes_is_firmware_not_a_kernel(e_type):
    data = b.elf64(machine=b.EM_RISCV, notes=(), vaddr=0x80000000, e_type=e_type)
    layer = formats.identify(data)
    assert isinstance(layer, ElfNotKernel)
    err = _refusal(data)
    assert err.field == "notes"
    assert "EM_RISCV ELF executable" in str(err) and "linked at 0x80000000" in str(err)
    assert "no Linux or Xen note and no Multiboot header" in str(err)


@pytest.mark.parametrize("notes", [
    ((b"Linux", 6, b"6.1.0\0"),),
    ((b"Xen", 5, b"xen-3.0\0"),),
    ((b"GNU", 3, b"\x01" * 20), (b"Linux", 0x100, b"\0" * 4)),
])
@pytest.mark.parametrize("e_type", [2, 3])
def test_kernel_notes_make_an_executable_a_kernel(notes, e_type):
    data = b.elf64(notes=notes, e_type=e_type)
    assert isinstance(formats.identify(data), Elf)
    assert prepare(data).kernel_layer.format == "elf"


def test_a_gnu_build_id_alone_does_not_make_a_kernel():
    data = b.elf64(notes=((b"GNU", 3, b"\x01" * 20),))
    assert isinstance(formats.identify(data), ElfNotKernel)


def test_a_multiboot_header_makes_an_executable_a_kernel():
    assert isinstance(formats.identify(b.xen_like_elf()), Elf)


def test_compressed_object_file_is_refused_below_its_wrapper():
    err = _refusal(b.compress("gzip", b.elf64(e_type=1)))
    assert "relocatable object (ET_REL)" in str(err)
    assert [x.format for x in formats.unwrap(b.compress("gzip", b.elf64(e_type=1)))] == ["gzip", "elf"]


@pytest.mark.real
@pytest.mark.parametrize("name", ["fw_jump.elf", "fw_dynamic.elf"])
def test_debian_opensbi_firmware(name):
    from tests import material
    tree = material._package(material._apt("system"), "opensbi", ["*/generic/fw_*.elf"])
    path = next(tree.glob(f"**/generic/{name}"))
    readelf = subprocess.run(["readelf", "-hn", str(path)], capture_output=True, text=True,
                             check=True).stdout
    assert "EXEC (Executable file)" in readelf and "RISC-V" in readelf
    assert "Owner" not in readelf  # no notes at all
    err = _refusal(path.read_bytes())
    assert "EM_RISCV ELF executable (ET_EXEC) linked at 0x80000000" in str(err)
