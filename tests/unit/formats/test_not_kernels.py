"""Images pykexec names but does not load: a 32-bit ARM zImage, a cpio archive
(initramfs, also compressed), a UEFI firmware volume.

Oracles: file(1) for the zImage builder, cpio(1) for the archives (made and
listed by it), gzip/xz/zstd for the compressed ones, OVMF_CODE.fd for a real
firmware volume.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pykexec import formats
from pykexec.errors import FormatError, NotLoadable
from pykexec.formats.prepare import prepare
from tests import builders as b

from ..contract import parse_or_error, truncations, unwrap_or_error

OVMF = Path("/usr/share/OVMF/OVMF_CODE.fd")


def _refused(data: bytes) -> NotLoadable:
    with pytest.raises(NotLoadable) as info:
        prepare(data)
    assert "\n" not in str(info.value)
    return info.value


def _tool(name: str):
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} not installed")


# ---------------------------------------------------------------- ARM zImage


@_tool("file")
@pytest.mark.parametrize("endian", ["little", "big"])
@pytest.mark.parametrize("efi", [False, True])
def test_zimage_builder_is_what_file_calls_a_zimage(tmp_path, endian, efi):
    path = tmp_path / "zImage"
    path.write_bytes(b.arm_zimage(endian=endian, efi=efi))
    out = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=True).stdout
    assert f"ARM boot executable zImage ({endian}-endian)" in out


@pytest.mark.parametrize("endian", ["little", "big"])
@pytest.mark.parametrize("efi", [False, True])
def test_zimage_is_named_and_refused(endian, efi):
    data = b.arm_zimage(endian=endian, efi=efi, start=0x8000, size=0x1000)
    [layer] = formats.unwrap(data)
    assert layer.format == "arm-zimage" and layer.arch == "arm"
    assert (layer.endianness, layer.start, layer.end, layer.efi_stub) == (endian, 0x8000, 0x9000, efi)
    err = _refused(data)
    assert str(err) == "arm-zimage magic at offset 0x24: this is a 32-bit ARM zImage, which pykexec does not load"


def test_zimage_with_an_appended_device_tree():
    dtb = b"\xd0\x0d\xfe\xed" + bytes(60)
    layer = formats.identify(b.arm_zimage(size=0x1000, appended=dtb))
    assert (layer.size, layer.appended_bytes, layer.appended_dtb) == (0x1000, 64, True)


def test_zimage_is_not_taken_for_a_pe_image():
    assert formats.NAMES.index("arm-zimage") < formats.NAMES.index("pe")
    assert formats.identify(b.arm_zimage(efi=True)).format == "arm-zimage"


def test_zimage_truncations_are_reports_or_format_errors():
    data = b.arm_zimage(efi=True)
    for n in truncations(data, 0x200, stride=4):
        unwrap_or_error(data[:n])


# ---------------------------------------------------------------- cpio


@_tool("cpio")
@pytest.mark.parametrize("fmt, variant", [("newc", "newc"), ("crc", "crc"), ("odc", "odc"),
                                          ("bin", "binary")])
def test_cpio_archives_made_by_cpio(tmp_path, fmt, variant):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("pykexec\n")
    (root / "init").write_bytes(b"#!/bin/sh\n" * 7)
    archive = subprocess.run(f"find . | cpio -o -H {fmt}", shell=True, cwd=root, capture_output=True,
                             check=True).stdout
    listed = subprocess.run(["cpio", "-t"], input=archive, capture_output=True, check=True).stdout
    names = listed.decode().split()
    [layer] = formats.unwrap(archive)
    assert (layer.format, layer.variant, layer.entries, layer.first_entry) == ("cpio", variant,
                                                                                len(names), names[0])
    err = _refused(archive)
    assert (err.layer, err.field, err.offset) == ("cpio", "magic", 0)
    assert f"this is a cpio archive ({variant})" in str(err)
    assert ("give it with --initrd" in str(err)) == (variant in ("newc", "crc"))


@pytest.mark.parametrize("tool, args, outer", [("gzip", ["-c"], "gzip"), ("xz", ["-c", "--check=crc32"], "xz"),
                                               ("zstd", ["-c", "-q"], "zstd")])
def test_compressed_initramfs_is_unwrapped_then_named(tool, args, outer):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    archive = b.cpio_newc((("init", b"#!/bin/sh\n"), ("bin/sh", b"\x7fELF" + bytes(60))))
    data = subprocess.run([tool, *args], input=archive, capture_output=True, check=True).stdout
    layers = formats.unwrap(data)
    assert [x.format for x in layers] == [outer, "cpio"]
    assert layers[1].entries == 2 and bytes(layers[1].data) == archive
    err = _refused(data)
    assert err.layer == "cpio" and "initramfs" in str(err)


def test_a_multiboot_kernel_inside_a_cpio_is_still_a_cpio():
    """The Multiboot probe searches 8 KiB: the archive must be claimed first."""
    archive = b.cpio_newc((("boot/kernel", b.multiboot_image()),))
    assert b.MB1_MAGIC.to_bytes(4, "little") in archive[:8192]
    assert formats.identify(archive).format == "cpio"
    assert formats.NAMES.index("cpio") < formats.NAMES.index("multiboot")


@pytest.mark.parametrize("mutate, field", [
    (lambda a: a[:200], "c_filesize"),
    (lambda a: a[:54] + b"zzzzzzzz" + a[62:], "c_filesize"),
    (lambda a: a[:94] + b"00000000" + a[102:], "c_namesize"),
])
def test_malformed_cpio_names_the_field(mutate, field):
    archive = b.cpio_newc((("init", b"x" * 300),))
    err = parse_or_error(formats.cpio.parse, mutate(archive))
    assert isinstance(err, FormatError) and err.field == field and err.offset == (54 if "zz" in
                                                                                  str(err) else err.offset)


def test_cpio_truncations_are_reports_or_format_errors():
    archive = b.cpio_newc((("init", b"x" * 300), ("etc/x", b"y" * 5)))
    for n in truncations(archive, len(archive)):
        unwrap_or_error(archive[:n])


# ---------------------------------------------------------------- UEFI firmware volume


def test_firmware_volume_is_named_and_refused():
    data = b.uefi_fv(size=0x3000, volumes=3)
    [layer] = formats.unwrap(data)
    assert (layer.format, layer.fv_length, layer.header_length, layer.revision) == ("uefi-fv", 0x3000, 72, 2)
    assert layer.file_system == "EFI_FIRMWARE_FILE_SYSTEM2_GUID" and layer.checksum_ok
    assert layer.volumes == 3
    err = _refused(data)
    assert (err.layer, err.field, err.offset) == ("uefi-fv", "Signature", 0x28)
    assert "UEFI firmware volume" in str(err)


def test_firmware_volume_bad_checksum_and_header_length():
    data = bytearray(b.uefi_fv())
    data[0x40] ^= 1
    assert formats.identify(bytes(data)).checksum_ok is False
    err = parse_or_error(formats.uefi_fv.parse, b.uefi_fv(HeaderLength=7))
    assert isinstance(err, FormatError) and (err.field, err.offset) == ("HeaderLength", 0x30)


@pytest.mark.skipif(not OVMF.exists(), reason="the ovmf package is not installed")
def test_ovmf_code_through_the_cli(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pykexec", "inspect", str(OVMF)], capture_output=True,
                         text=True, check=True)
    assert "[0] uefi-fv" in run.stdout and "checksum_ok: True" in run.stdout
    run = subprocess.run([sys.executable, "-m", "pykexec", "extract", str(OVMF), "-o", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "this is a UEFI firmware volume" in run.stderr
