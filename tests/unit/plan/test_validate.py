"""Each validator rule, on hand-made and mutated plans; the errno is the receiver's."""

from __future__ import annotations

import dataclasses

import pytest

from pykexec.machine import Range
from pykexec.plan import LoadPlan, plan, validate_linux, validate_xen
from pykexec.plan.kexec_buf import Segment
from pykexec.plan.validate import LINUX_RULES, XEN_RULES, bufsz_within_memsz, no_overlap

from .conftest import GiB, MiB, debian61_bzimage, simple_machine

MACHINE = simple_machine(Range(MiB, 4 * GiB), crashk_res=Range(0x20000000, 0x10000000),
                         xen_crash_area=Range(0x20000000, 0x10000000), mem_total=4 * GiB)


def make(segments, *, target="linux-file", crash=False, entry=0x100000, machine=MACHINE, kexec_type=None,
         arch="x86_64"):
    return LoadPlan(target=target, crash=crash, entry=entry, cmdline="", segments=tuple(segments), arch=arch,
                    machine=machine, kexec_type=kexec_type)


def seg(mem, memsz, bufsz=0, role="s", **kw):
    return Segment(role, mem, memsz, bufsz, **kw)


def rules(violations):
    return [(v.rule, v.errno, v.segment) for v in violations]


@pytest.mark.parametrize("segments, want", [
    ([seg(0x100800, 0x1000)], [("page-aligned", "EADDRNOTAVAIL", 0)]),
    ([seg(0x100000, 0x800)], [("page-aligned", "EADDRNOTAVAIL", 0)]),
    ([seg((1 << 64) - 0x1000, 0x2000)], [("no-wrap", "EADDRNOTAVAIL", 0)]),
    ([seg(1 << 46, 0x1000)], [("destination-limit", "EADDRNOTAVAIL", 0)]),
    ([seg(0x100000, 0x2000), seg(0x101000, 0x1000)], [("overlap", "EINVAL", 1)]),
    ([seg(0x100000, 0x1000, bufsz=0x1001)], [("bufsz-le-memsz", "EINVAL", 0)]),
    ([seg(0x100000, 3 * GiB)], [("half-of-ram", "EINVAL", 0)]),
    ([seg(0x100000, GiB + 0x1000), seg(2 * GiB, GiB)], [("half-of-ram", "EINVAL", None)]),
    ([seg(i * 0x1000 + MiB, 0x1000) for i in range(17)], [("segment-count", "EINVAL", None)]),
])
def test_linux_rules(segments, want):
    assert rules(validate_linux(make(segments))) == want


def test_linux_crash_region():
    p = make([seg(0x20000000, 0x1000), seg(0x30000000, 0x1000)], crash=True)
    assert rules(validate_linux(p)) == [("crash-region", "EADDRNOTAVAIL", 1)]
    none = make([seg(0x20000000, 0x1000)], crash=True, machine=MACHINE.with_changes(crashk_res=None))
    assert rules(validate_linux(none)) == [("crash-region", "EADDRNOTAVAIL", 0)]


def test_5level_raises_the_destination_limit():
    p = make([seg(1 << 46, 0x1000)], machine=MACHINE.with_changes(x86_5level=True))
    assert validate_linux(p) == ()


def test_kexec_load_under_lockdown_is_eperm():
    p = make([seg(MiB, 0x1000)], target="linux-user", machine=MACHINE.with_changes(lockdown="integrity"))
    assert rules(validate_linux(p)) == [("lockdown", "EPERM", None)]
    assert validate_linux(make([seg(MiB, 0x1000)], machine=MACHINE.with_changes(lockdown="integrity"))) == ()


@pytest.mark.parametrize("segments, crash, entry, want", [
    ([seg(i * 0x1000 + MiB, 0x1000) for i in range(16)], False, 0, [("segment-count", "EINVAL", None)]),
    ([seg(0x100800, 0x1000)], False, 0, [("page-aligned", "EADDRNOTAVAIL", 0)]),
    ([seg(MiB, 0x2000), seg(MiB + 0x1000, 0x1000)], False, 0, [("overlap", "EINVAL", 1)]),
    ([seg(MiB, 0x1000, bufsz=0x2000)], False, 0, [("bufsz-le-memsz", "EINVAL", 0)]),
    ([seg(0x20000000, 0x1000)], True, 0x40000000, [("crash-entry", "EADDRNOTAVAIL", None)]),
    ([seg(0, MiB, null=True), seg(0x20000000, 0x1000)], True, 0x20000000, []),
    ([seg(0x30000000, 0x1000)], True, 0x20000000, [("crash-region", "EADDRNOTAVAIL", 0)]),
])
def test_xen_rules(segments, crash, entry, want):
    p = make(segments, target="xen", crash=crash, entry=entry)
    assert rules(validate_xen(p)) == want


def _efi_plan(target="xen-efi", **fields):
    bz = debian61_bzimage(**fields)
    m = MACHINE.with_changes(possible_cpus=1)
    return plan(bz, machine=m, target=target, crash=True)


def _with_kernel(p, **changes):
    return dataclasses.replace(p, segments=(dataclasses.replace(p.segments[0], **changes),) + p.segments[1:])


@pytest.mark.parametrize("target", ["xen-efi", "xen-efi-v2"])
def test_xen_efi_kernel_checks(target):
    """The v2 series' checks hold on both variants, XenServer's Xen making only part of them."""
    good = _efi_plan(target)
    assert validate_xen(good) == ()
    k = good.segments[0]
    # moved by 0x200: XenServer's ROUNDUP(dest) + 0x200 is unchanged, but the kernel is no longer there
    assert rules(validate_xen(_with_kernel(good, offset=k.offset + 0x200))) == [
        ("efi-kernel-alignment", "EINVAL", 0)]
    bad = bytearray(k.buffer)
    bad[0x230:0x234] = (0x300000).to_bytes(4, "little")
    assert rules(validate_xen(_with_kernel(good, buffer=bytes(bad)))) == (
        [("efi-kernel-alignment", "EINVAL", 0)] + ([("efi-entry", "EINVAL", 0)] if target == "xen-efi" else []))
    bad[0x202:0x206] = b"NOPE"
    assert rules(validate_xen(_with_kernel(good, buffer=bytes(bad))))[0] == ("efi-kernel-header", "EINVAL", 0)
    old = bytearray(k.buffer)
    old[0x206:0x208] = (0x201).to_bytes(2, "little")
    assert rules(validate_xen(_with_kernel(good, buffer=bytes(old))))[0] == ("efi-kernel-header", "EINVAL", 0)


@pytest.mark.parametrize("target, used, want", [
    ("xen-efi", 0x10000000, True),             # the whole crash area taken: no room for Xen's purgatory
    ("xen-efi", 0x10000000 - 0x4000, False),   # its last 16 KiB free: room
    ("xen-efi-v2", 0x10000000, False),         # the v2 series has no purgatory
])
def test_xenserver_purgatory_needs_room(target, used, want):
    p = make([seg(0x20000000, used)], target=target, crash=True, entry=0x20000200,
             kexec_type="KEXEC_TYPE_CRASH_EFI")
    assert (("efi-purgatory", "ENOMEM", None) in rules(validate_xen(p))) is want


def test_violation_sentences():
    v = validate_linux(make([seg(0x100000, 0x1000, bufsz=0x1001, role="initrd")]))[0]
    assert str(v) == ("EINVAL: segment 0 (initrd): buffer of 0x1001 bytes is larger than its 0x1000-byte memory "
                      "[bufsz-le-memsz]")
    assert v.to_json()["errno"] == "EINVAL"


def test_linux_and_xen_share_the_checks_both_make():
    """Overlap and bufsz <= memsz are one rule each, in both receivers' lists, with one wording."""
    assert {no_overlap, bufsz_within_memsz} <= set(LINUX_RULES) & set(XEN_RULES)
    segments = [seg(MiB, 0x2000, bufsz=0x3000), seg(MiB + 0x1000, 0x1000)]
    shared = ("overlap", "bufsz-le-memsz")
    linux = [str(v) for v in validate_linux(make(segments)) if v.rule in shared]
    xen = [str(v) for v in validate_xen(make(segments, target="xen")) if v.rule in shared]
    assert linux == xen and len(linux) == 2
    misaligned = [seg(0x100800, 0x1000)]
    assert str(validate_linux(make(misaligned))[0]) == str(validate_xen(make(misaligned, target="xen"))[0]) == (
        "EADDRNOTAVAIL: segment 0 (s): [0x100800, 0x101800) is not aligned to the 4096-byte page [page-aligned]")
