"""Unified Kernel Images (UAPI.5): sections, text, nesting, profiles, what a loader takes."""

from __future__ import annotations

import pytest

from pykexec import formats
from pykexec.errors import FormatError, UsageError
from pykexec.formats import uki
from pykexec.formats.uki import Uki
from pykexec.formats.prepare import prepare
from tests import builders as b

from ..contract import outcome, parse_or_error, truncations, unwrap_or_error

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection

KERNEL_A = b.arm64_image(data=b"kernel-A" * 10)
KERNEL_B = b.arm64_image(data=b"kernel-B" * 10)


def which(kernel) -> str:
    k = bytes(kernel)
    return "A" if b"kernel-A" in k else "B" if b"kernel-B" in k else "?"


def test_sections_and_text_reported():
    u = b.uki(KERNEL_A, cmdline="root=/dev/vda  \n\0junk", osrel='ID=test\nVERSION_ID="2"\n',
              uname="6.9.0", machine=b.IMAGE_FILE_MACHINE_ARM64, initrd=b"INITRD", dtb=b"\xd0\x0d\xfe\xed")
    layer = formats.identify(u)
    assert isinstance(layer, Uki) and layer.format == "uki"
    assert layer.sections == (".text", ".sbat", ".osrel", ".cmdline", ".dtb", ".uname", ".initrd", ".linux")
    assert layer.cmdline == "root=/dev/vda"
    assert layer.osrel.startswith("ID=test") and layer.uname == "6.9.0"
    assert (layer.machine, layer.arch, layer.subsystem, layer.signature) == (0xAA64, "arm64", 10, False)
    assert layer.profiles == ()
    report = layer.to_json()
    assert report["cmdline"] == "root=/dev/vda" and report["sections"][-1] == ".linux"


def test_signed_uki():
    assert uki.parse(b.uki(signed=True)).signature is True


@pytest.mark.parametrize("linux, chain", [
    (lambda: b.bzimage(), ["uki", "bzimage", "gzip", "elf"]),
    (lambda: b.bzimage(compression="zstd"), ["uki", "bzimage", "zstd", "elf"]),
    (lambda: b.zboot(), ["uki", "zboot", "gzip", "arm64-image"]),
    (lambda: b.zboot(compression="xzkern"), ["uki", "zboot", "xz", "arm64-image"]),
    (lambda: b.arm64_image(), ["uki", "arm64-image"]),
    (lambda: b.compress("gzip", b.arm64_image()), ["uki", "gzip", "arm64-image"]),
    (lambda: b.riscv_image(), ["uki", "riscv-image"]),
])
def test_nested_chains_are_followed(linux, chain):
    assert [l.format for l in formats.unwrap(b.uki(linux()))] == chain


def test_prepare_takes_the_parts():
    u = b.uki(KERNEL_A, cmdline="quiet", initrd=b"I" * 5, ucode=b"U" * 3, dtb=b"DTB",
              machine=b.IMAGE_FILE_MACHINE_ARM64)
    p = prepare(u)
    assert bytes(p.kernel) == KERNEL_A
    assert p.cmdline == "quiet"
    assert [bytes(x) for x in p.initrds] == [b"U" * 3, b"I" * 5]
    assert p.initrd == b"U" * 3 + b"\0" + b"I" * 5 + b"\0" * 3, "ucode first, each padded to 4"
    assert bytes(p.dtb) == b"DTB"


def test_prepare_uki_with_bzimage_keeps_the_bzimage_and_the_vmlinux():
    vmlinux = b.elf64(load=b"\xcc" * 99)
    bz = b.bzimage(vmlinux=vmlinux)
    p = prepare(b.uki(bz), vmlinux=True)
    assert bytes(p.kernel) == bz
    assert p.kernel_layer.format == "bzimage"
    assert bytes(p.vmlinux) == vmlinux


def test_signed_inner_image_is_trimmed_of_section_padding():
    inner = b.arm64_image(signed=True)
    u = b.uki(inner + bytes(0x300), machine=b.IMAGE_FILE_MACHINE_ARM64)
    assert bytes(prepare(u).kernel) == inner
    assert bytes(uki.parse(u).parts(None).linux) == inner


# ---------------------------------------------------------------- profiles

PROFILED = dict(cmdline="base", initrd=b"base-initrd", machine=b.IMAGE_FILE_MACHINE_ARM64, profiles=[
    {"profile": "ID=default\nTITLE=Default\n"},
    {"profile": "ID=rescue\nTITLE='Rescue mode'\n", "cmdline": "rescue", "initrd": b"rescue-initrd"},
    {"profile": "ID=dbg", "cmdline": "debug", "linux": KERNEL_B},
])


def test_profiles_reported():
    layer = uki.parse(b.uki(KERNEL_A, **PROFILED))
    assert [(p.index, p.id, p.title, p.cmdline) for p in layer.profiles] == [
        (0, "default", "Default", "base"), (1, "rescue", "Rescue mode", "rescue"),
        (2, "dbg", None, "debug")]
    assert layer.profiles[1].sections == (".profile", ".cmdline", ".initrd")
    assert layer.cmdline == "base"


@pytest.mark.parametrize("profile, cmdline, initrd, kernel", [
    (None, "base", b"base-initrd", "A"),
    (0, "base", b"base-initrd", "A"),
    (1, "rescue", b"rescue-initrd", "A"),
    (2, "debug", b"base-initrd", "B"),
])
def test_profile_overrides_base(profile, cmdline, initrd, kernel):
    p = prepare(b.uki(KERNEL_A, **PROFILED), profile=profile)
    assert p.cmdline == cmdline
    assert bytes(p.initrds[-1]) == initrd
    assert which(p.kernel) == kernel


@pytest.mark.parametrize("profile", [3, 99, -1])
def test_bad_profile_index(profile):
    err = outcome(prepare, b.uki(KERNEL_A, **PROFILED), profile=profile)
    assert isinstance(err, UsageError) and f"@{profile}" in str(err)


def test_profile_on_a_uki_without_profiles():
    assert isinstance(outcome(prepare, b.uki(KERNEL_A), profile=1), UsageError)


def test_profile_on_a_plain_kernel():
    assert isinstance(outcome(prepare, b.arm64_image(), profile=0), UsageError)


def test_base_kernel_used_by_a_profile_that_does_not_override_it():
    """@0 replaces .linux, @1 does not: @1 boots the base profile's kernel."""
    u = b.uki(KERNEL_A, machine=b.IMAGE_FILE_MACHINE_ARM64,
              profiles=[{"linux": KERNEL_B}, {"cmdline": "one"}])
    assert which(prepare(u, profile=0).kernel) == "B"
    assert which(prepare(u).kernel) == "B"
    assert which(prepare(u, profile=1).kernel) == "A"


# ---------------------------------------------------------------- malformed


def test_linux_only_in_a_profile():
    sections = b.stub_sections() + [(".cmdline", b"x"), (".profile", b"ID=a"), (".linux", KERNEL_A)]
    image = b.pe(sections)
    assert uki.probe(image)
    err = parse_or_error(uki.parse, image)
    assert isinstance(err, FormatError) and err.field == "section table"


def test_text_section_with_virtual_size_shorter_than_raw():
    image = b.pe(b.stub_sections() + [(".cmdline", b"quiet splash", 5), (".linux", KERNEL_A)])
    assert uki.parse(image).cmdline == "quiet"


def test_section_zero_fill_bomb_is_refused():
    image = b.pe(b.stub_sections() + [(".cmdline", b"x", 0xF0000000), (".linux", KERNEL_A)])
    err = unwrap_or_error(image)
    assert isinstance(err, FormatError) and err.field == "VirtualSize"


@pytest.mark.parametrize("text", [b"\xff\xfe\xfd", b"\0\0\0", b"caf\xc3\xa9 \xe2\x82", b"a" * 5000])
def test_any_bytes_in_text_sections(text):
    u = b.uki(KERNEL_A, cmdline=text, osrel=text, uname=text,
              profiles=[{"profile": text, "cmdline": text}])
    layer = unwrap_or_error(u)
    assert not isinstance(layer, Exception)
    assert isinstance(prepare(u).cmdline, (str, type(None)))


def test_uki_that_contains_itself_stops_at_the_depth_limit():
    image = b.arm64_image()
    for _ in range(10):
        image = b.uki(image, machine=b.IMAGE_FILE_MACHINE_ARM64)
    from pykexec.errors import LimitExceeded
    assert isinstance(unwrap_or_error(image), LimitExceeded)


def test_truncation():
    image = b.uki(b.zboot(), machine=b.IMAGE_FILE_MACHINE_ARM64, profiles=[{"cmdline": "p"}])
    for n in truncations(image, 0x400, stride=8):
        assert isinstance(parse_or_error(uki.parse, image[:n]), (Uki, FormatError))
        unwrap_or_error(image[:n])
