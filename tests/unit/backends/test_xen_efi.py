"""Xen's EFI load types through the hypercall backend: what XenServer's Xen is handed, how the type
is chosen under lockdown, and how a Xen without them refuses.

The fake applies XenServer's checks (19b98a02d5) or upstream 4.17's (xen_fake.py); expected
values come from the boot protocol (boot.rst) and the header the test wrote, not from the planner.
"""

from __future__ import annotations

import errno
import logging
import struct

import pytest

from pykexec import api
from pykexec.backends.xen import hypercalls as hc
from pykexec.errors import KernelRefused
from tests import builders
from tests.usermode_helpers import read_zero_page

from .test_xen import CMDLINE, INITRD, dom0, load
from .xen_fake import FakeXen

SETUP_SECTS = 30                      # the setup code is 31 sectors: 0x3e00 bytes, not a page multiple
ALIGN = 0x200000


def image() -> bytes:
    return builders.bzimage(setup_sects=SETUP_SECTS, kernel_alignment=ALIGN, init_size=0x800000)


def the_load(fake):
    (_, kexec_type, parameters, segments, _), = [c for c in fake.calls if c[0] == "load"]
    return kexec_type, parameters, segments


@pytest.mark.parametrize("crash, want_type", [(True, hc.KEXEC_TYPE_CRASH_EFI), (False, hc.KEXEC_TYPE_DEFAULT_EFI)])
def test_efi_load_hands_xen_the_whole_bzimage(tmp_path, crash, want_type):
    fake = FakeXen(efi_types=True)
    data = image()
    _, report, plan = load(tmp_path, fake, crash=crash, image=data, target="xen-efi")
    kexec_type, parameters, segments = the_load(fake)
    assert kexec_type == want_type and report.flags == want_type
    kernel = segments[0]
    assert bytes(kernel.buf) == data                                    # the file as it is: what Secure Boot verified
    assert (kernel.dest_maddr + (SETUP_SECTS + 1) * 512) % ALIGN == 0 and kernel.dest_maddr % 4096
    # parameters (the union with entry_maddr) is the boot_params address: the zero page is there
    params = next(s for s in segments if s.dest_maddr == parameters)
    raw = bytes(params.buf)
    zp = read_zero_page(raw)
    cmdline = raw[zp["cmd_line_ptr"] - parameters:].split(b"\0")[0].decode()
    assert cmdline.startswith(CMDLINE) and ("elfcorehdr=" in cmdline) is crash
    assert zp["hardware_subarch"] == 0 and zp["ramdisk_size"] == len(INITRD)
    assert bytes(next(s for s in segments if s.dest_maddr == zp["ramdisk_image"]).buf) == INITRD
    # no purgatory of ours: every segment with bytes is the kernel, boot_params, initrd or elfcorehdr
    assert len([s for s in segments if s.buf is not None]) == 3 + crash
    start, size = fake.crash_area
    if crash:
        assert all(start <= s.dest_maddr < start + size for s in segments if s.buf is not None)
    assert api.status(hypercalls=fake).crash_loaded is crash
    assert plan.kexec_type == hc.KEXEC_TYPES[want_type]


def test_lockdown_picks_the_efi_types_and_says_so(tmp_path, caplog):
    fake = FakeXen(efi_types=True, lockdown=True)
    opts = api.LoadOptions(image=tmp_path / "vmlinuz", crash=True)
    with caplog.at_level(logging.WARNING):
        assert api._xen_receivers(("xen",), opts, dom0(fake), fake, probe=True) == ("xen-efi",)
    assert "lockdown" in caplog.text and "KEXEC_TYPE_CRASH_EFI" in caplog.text
    # the probe asked for nothing Xen could keep
    assert fake.loaded == {} and api._xen_receivers(("xen",), opts, dom0(FakeXen()), FakeXen(), probe=True) == ("xen",)


def test_lockdown_refuses_the_classic_types_in_one_line(tmp_path):
    fake = FakeXen(efi_types=True, lockdown=True)
    with pytest.raises(KernelRefused) as e:
        load(tmp_path, fake, crash=True, target="xen")
    assert e.value.errno_value == errno.EPERM and "lockdown" in str(e.value) and "xen-efi" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_xen_without_the_efi_types_refuses_and_keeps_what_was_loaded(tmp_path):
    fake = FakeXen()                                   # upstream 4.17: types 0 and 1 only
    load(tmp_path, fake, crash=True, target="xen")
    first = fake.loaded[hc.KEXEC_TYPE_CRASH]
    with pytest.raises(KernelRefused) as e:
        load(tmp_path, fake, crash=True, image=image(), target="xen-efi")
    message = str(e.value)
    assert e.value.errno_value == errno.EINVAL and "does not implement the EFI load types" in message
    assert "\n" not in message and fake.loaded[hc.KEXEC_TYPE_CRASH] is first
    assert api.status(hypercalls=fake).crash_loaded is True


def test_segment_zero_is_described_by_its_byte_address(tmp_path):
    """The xen_kexec_segment_t of segment 0: dest_maddr mid-page, dest_size to a page end."""
    fake = FakeXen(efi_types=True)
    load(tmp_path, fake, crash=True, image=image(), target="xen-efi")
    calls = [c for c in fake.calls if c[0] == "load"]
    kernel = calls[0][3][0]
    assert (kernel.dest_maddr + kernel.dest_size) % 4096 == 0 and kernel.dest_maddr % 4096 == 0x200
    assert struct.unpack_from("<I", kernel.buf, 0x202)[0] == 0x53726448   # "HdrS" at the start
