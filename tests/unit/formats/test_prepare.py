"""prepare(): what a loader hands the kernel, for every kind of image."""

from __future__ import annotations

import pytest

from pykexec.errors import NotLoadable, UsageError
from pykexec.formats.prepare import Prepared, join_initrds, prepare
from tests import builders as b

from ..contract import outcome

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection

IMAGE = b.arm64_image()
VMLINUX = b.elf64(load=b"\xcc" * 77)
BZ = b.bzimage(vmlinux=VMLINUX)


@pytest.mark.parametrize("data, kernel_format, kernel, is_input, vmlinux", [
    (BZ, "bzimage", BZ, True, VMLINUX),
    (b.bzimage(vmlinux=VMLINUX, compression="lzo"), "bzimage", None, True, VMLINUX),
    (IMAGE, "arm64-image", IMAGE, True, None),
    (b.compress("gzip", IMAGE), "arm64-image", IMAGE, False, None),
    (b.zboot(IMAGE), "arm64-image", IMAGE, False, None),
    (b.zboot(IMAGE, compression="lzma"), "arm64-image", IMAGE, False, None),
    (b.uki(IMAGE, machine=0xAA64), "arm64-image", IMAGE, False, None),
    (b.uki(b.zboot(IMAGE), machine=0xAA64), "arm64-image", IMAGE, False, None),
    (b.uki(BZ), "bzimage", BZ, False, VMLINUX),
    (VMLINUX, "elf", VMLINUX, True, None),
    (b.compress("xz", VMLINUX), "elf", VMLINUX, False, None),
    (b.riscv_image(), "riscv-image", None, True, None),
    (b.loongarch_image(), "loongarch-image", None, True, None),
    (b.multiboot2_image(), "multiboot2", None, True, None),
    (b.multiboot_image(), "multiboot", None, True, None),
    (b.xen_like_elf(), "elf", None, True, None),
], ids=["bzimage", "bzimage-lzo", "Image", "Image.gz", "zboot", "zboot-lzma", "uki-Image",
        "uki-zboot", "uki-bzimage", "vmlinux", "vmlinux.xz", "riscv", "loongarch", "mb2", "mb1", "xen"])
def test_kernel_for_each_kind(data, kernel_format, kernel, is_input, vmlinux):
    p = prepare(data, vmlinux=True)
    assert isinstance(p, Prepared)
    assert p.kernel_layer.format == kernel_format
    if kernel is not None:
        assert bytes(p.kernel) == kernel
    assert p.kernel_is_input is is_input
    assert (None if p.vmlinux is None else bytes(p.vmlinux)) == vmlinux


@pytest.mark.parametrize("data", [b.pe([(".text", b"\xc3")]), b.addon()], ids=["pe", "addon"])
def test_nothing_loadable(data):
    err = outcome(prepare, data)
    assert isinstance(err, NotLoadable) and "holds no kernel" in str(err)


@pytest.mark.parametrize("parts, joined", [
    ((), None),
    ((b"a",), b"a\0\0\0"),
    ((b"abcd",), b"abcd"),
    ((b"ab", b"cde", b"f"), b"ab\0\0cde\0f\0\0\0"),
    ((b"", b"x"), b"x\0\0\0"),
])
def test_initrds_are_joined_with_4_byte_padding(parts, joined):
    assert join_initrds(parts) == joined


def test_options_for_ukis_only():
    assert isinstance(outcome(prepare, IMAGE, profile=0), UsageError)
    assert isinstance(outcome(prepare, IMAGE, addons=(b.addon(),)), UsageError)


def test_non_uki_has_no_initrd_or_cmdline():
    p = prepare(BZ)
    assert (p.initrds, p.initrd, p.cmdline, p.dtb) == ((), None, None, None)
