"""User-mode plans for real images (Debian's, fetched and cached by tests/material.py), validated."""

from __future__ import annotations

import pytest

from pykexec.boot import elfcore, purgatory, usermode
from pykexec.boot.firmware import Firmware
from pykexec.boot.multiboot_info import Module, parse_multiboot2_info
from pykexec.formats.bzimage import SETUP_HEADER
from pykexec.plan.validate import validate_linux
from pykexec.formats.prepare import prepare
from tests import material
from tests.usermode_helpers import read_zero_page

from .conftest import fixed_random, qemu_crash, qemu_pc

pytestmark = pytest.mark.real

INITRD = bytes(range(256)) * 40000


@pytest.fixture(scope="module")
def bookworm() -> bytes:
    return material.bookworm_cloud_bzimage().read_bytes()


def build(image: bytes, **kw):
    kw.setdefault("firmware", Firmware.none())
    kw.setdefault("getrandom", fixed_random)
    kw.setdefault("dev_mem", None)
    return usermode.build_user_load(prepare(image), **kw)


def test_bookworm_bzimage(bookworm):
    load = build(bookworm, initrd=INITRD, cmdline="console=ttyS0 quiet", crash=False, machine=qemu_pc())
    assert validate_linux(load.plan) == ()
    kernel, params = load.segment("kernel"), load.segment("boot-params")
    setup = (bookworm[0x1F1] + 1) * 512
    assert kernel.buf == bookworm[setup:]
    assert kernel.memsz >= SETUP_HEADER.get(bookworm, "init_size")
    assert kernel.mem % SETUP_HEADER.get(bookworm, "kernel_alignment") == 0
    end = 0x202 + bookworm[0x201]
    page = params.buf
    written = {0x210, 0x211, *range(0x218, 0x220), *range(0x228, 0x22C), *range(0x23C, 0x240),
               *range(0x250, 0x258)}                      # loader type/flags, ramdisk, cmdline, subarch, setup_data
    assert [i for i in range(0x1F1, end) if page[i] != bookworm[i] and i not in written] == []
    assert read_zero_page(page)["type_of_loader"] == 0xD0
    image = purgatory.load()
    block = load.segment("purgatory").buf[image.params_offset:]
    assert purgatory.PARAMS.get(block, "rip") == kernel.mem + 0x200
    assert purgatory.PARAMS.get(block, "rsi") == params.mem


def test_bookworm_bzimage_crash(bookworm):
    machine = qemu_crash()
    load = build(bookworm, initrd=INITRD, cmdline="console=ttyS0", crash=True, machine=machine,
                 crash_sources=elfcore.synthetic_sources(1))
    assert validate_linux(load.plan) == ()
    assert all(s.mem in machine.crashk_res for s in load.segments)


def test_bookworm_vmlinux(bookworm):
    vmlinux = bytes(prepare(bookworm, vmlinux=True).vmlinux)
    load = build(vmlinux, initrd=INITRD, cmdline="console=ttyS0", crash=False, machine=qemu_pc())
    assert validate_linux(load.plan) == ()
    assert load.segment("kernel").mem == 0x1000000


def test_xen_4_17_by_multiboot2():
    xen = material.xen_hypervisor_gz().read_bytes()
    mods = (Module(b"K" * 100000, "vmlinuz console=hvc0", "vmlinuz"), Module(INITRD, "initrd.img", "initrd.img"))
    load = build(xen, initrd=None, cmdline="console=com1", crash=False, machine=qemu_pc(), modules=mods,
                 image_name="xen.gz")
    assert load.protocol == "multiboot2" and validate_linux(load.plan) == ()
    kernel = load.segment("kernel")
    assert kernel.mem % 0x200000 == 0 and kernel.mem + kernel.memsz <= 1 << 32
    tags = [k for k, _ in parse_multiboot2_info(load.segment("mbi").buf)]
    assert tags == [1, 2, 3, 3, 4, 6, 21, 0]
    assert all(s.mem >= 1 << 20 for s in load.segments)
