"""Properties: planned loads pass the validators, mutations are caught, random maps never crash."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, assume, given, settings, strategies as st

from pykexec.errors import PlacementError, UsageError
from pykexec.machine import Machine, Range, TypedRange
from pykexec.plan import plan, validate_linux, validate_xen

from .conftest import GiB, MiB, arm64, debian61_bzimage

TYPES = ["System RAM", "Reserved", "ACPI Tables", "System RAM (kmem)", "Crash kernel"]


@st.composite
def machines(draw, arch="x86_64"):
    n = draw(st.integers(1, 25))
    cursor, memory = 0, []
    for _ in range(n):
        cursor += draw(st.integers(0, 64)) * 0x1000 + draw(st.sampled_from([0, 0x400, 0xC00]))
        size = draw(st.one_of(st.integers(1, 2048).map(lambda n: n * 0x10000),
                              st.integers(256, 4096).map(lambda n: n * MiB))) - draw(st.sampled_from([0, 0x400]))
        kind = draw(st.sampled_from(TYPES[:4]))
        memory.append(TypedRange(cursor, size, kind))
        cursor += size
    ram = [r for r in memory if r.type == "System RAM"]
    crash = None
    if ram and draw(st.booleans()):
        parent = draw(st.sampled_from(ram))
        start = (parent.start + draw(st.integers(0, parent.size // 4)) + 0xFFF) // 0x1000 * 0x1000
        size = max(0x1000, draw(st.integers((parent.end - start) // 2, parent.end - start)) // 0x1000 * 0x1000)
        if start + size <= parent.end:
            crash = Range(start, size)
    release = draw(st.sampled_from(["5.4.0", "6.1.0", "6.8.0", "6.16.0", None]))
    kho = None
    if draw(st.integers(0, 4)) == 0 and ram:
        r = draw(st.sampled_from(ram))
        kho = (Range(r.start, r.size),)
    return Machine(arch=arch, memory=tuple(memory), memory_source="iomem", crashk_res=crash,
                   kernel_release=release, possible_cpus=draw(st.integers(1, 8)), mem_total=1 << 40,
                   xen_crash_area=crash, kho_active=kho is not None, kho_scratch=kho or ())


images = st.builds(lambda init, align, pref, sects: debian61_bzimage(
    init_size=init, kernel_alignment=align, pref_address=pref, setup_sects=sects),
    st.integers(1, 64).map(lambda n: n * MiB), st.sampled_from([0x200000, 0x400000, 0x1000000]),
    st.sampled_from([0x100000, 0x1000000]), st.sampled_from([4, 30, 39]))


def own_validator(p):
    return validate_xen(p) if p.target.startswith("xen") else validate_linux(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(machines(), images, st.sampled_from(["linux-file", "linux-user", "xen", "xen-efi", "xen-efi-v2"]), st.booleans(),
       st.integers(0, 40 * MiB), st.text(max_size=60))
def test_random_maps_place_or_refuse_and_plans_validate(machine, bz, target, crash, initrd, cmdline):
    try:
        p = plan(bz, machine=machine, target=target, crash=crash, initrd=bytes(initrd) if initrd else None,
                 cmdline=cmdline)
    except (PlacementError, UsageError):
        return
    assert own_validator(p) == ()
    if not crash:  # the structural rules both receivers share
        other = validate_linux(p, file_mode=False) if target.startswith("xen") else validate_xen(p)
        assert [v for v in other if v.rule not in ("segment-count",)] == []


@settings(max_examples=60, deadline=None)
@given(machines(arch="arm64"), st.integers(1, 64), st.booleans(), st.integers(0, 40 * MiB))
def test_random_arm64_maps(machine, size_mib, crash, initrd):
    try:
        p = plan(arm64(image_size=size_mib * MiB), machine=machine, crash=crash,
                 initrd=bytes(initrd) if initrd else None)
    except PlacementError:
        return
    assert validate_linux(p) == ()


BASE = Machine(arch="x86_64", memory=(TypedRange(MiB, 4 * GiB - MiB, "System RAM"),), memory_source="iomem",
               crashk_res=Range(0x20000000, 0x10000000), xen_crash_area=Range(0x20000000, 0x10000000),
               kernel_release="6.12", possible_cpus=2, mem_total=4 * GiB)

MUTATIONS = {
    # name: (mutate segments, the rule, the errno)
    "misalign": (lambda s: dataclasses.replace(s, mem=s.mem + 0x800), "page-aligned", "EADDRNOTAVAIL"),
    "bufsz": (lambda s: dataclasses.replace(s, bufsz=s.memsz + 1), "bufsz-le-memsz", "EINVAL"),
    "outside-crash": (lambda s: dataclasses.replace(s, mem=0x40000000), "crash-region", "EADDRNOTAVAIL"),
    "beyond-limit": (lambda s: dataclasses.replace(s, mem=1 << 47), "destination-limit", "EADDRNOTAVAIL"),
}


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["linux-file", "linux-user", "xen", "xen-efi", "xen-efi-v2"]), st.sampled_from(sorted(MUTATIONS)),
       st.data())
def test_mutations_are_caught_with_the_right_errno(target, name, data):
    mutate, rule, errno = MUTATIONS[name]
    p = plan(debian61_bzimage(), machine=BASE, target=target, crash=True, initrd=bytes(MiB), cmdline="x")
    real = [i for i, s in enumerate(p.segments) if not s.null]
    i = data.draw(st.sampled_from(real))
    if target.startswith("xen") and name == "beyond-limit":
        rule, errno = "crash-region", "EADDRNOTAVAIL"  # Xen has no destination limit; the area catches it
    segments = list(p.segments)
    segments[i] = mutate(segments[i])
    found = own_validator(dataclasses.replace(p, segments=tuple(segments)))
    assert any(v.rule == rule and v.errno == errno and v.segment == i for v in found), found


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["linux-file", "linux-user", "xen"]), st.data())
def test_overlap_mutation(target, data):
    p = plan(debian61_bzimage(), machine=BASE, target=target, initrd=bytes(MiB), cmdline="x")
    real = [i for i, s in enumerate(p.segments) if not s.null]
    i, j = data.draw(st.permutations(real))[:2]
    assume(p.segments[i].memsz)
    segments = list(p.segments)
    segments[j] = dataclasses.replace(segments[j], mem=segments[i].mem)
    found = own_validator(dataclasses.replace(p, segments=tuple(segments)))
    assert any(v.rule == "overlap" and v.errno == "EINVAL" for v in found)


def test_too_many_segments_and_lockdown_mutations():
    p = plan(debian61_bzimage(), machine=BASE, target="linux-user", cmdline="x")
    extra = tuple(dataclasses.replace(p.segments[0], mem=0x80000000 + i * 0x10000) for i in range(16))
    assert any(v.rule == "segment-count" and v.errno == "EINVAL"
               for v in validate_linux(dataclasses.replace(p, segments=p.segments + extra)))
    locked = dataclasses.replace(p, machine=BASE.with_changes(lockdown="confidentiality"))
    assert [v.errno for v in validate_linux(locked)] == ["EPERM"]
    x = plan(debian61_bzimage(), machine=BASE, target="xen", crash=True, cmdline="x")
    assert any(v.rule == "crash-entry" for v in validate_xen(dataclasses.replace(x, entry=0x60000000)))
