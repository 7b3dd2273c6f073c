"""The Xen kexec backend: the hypercall ABI, the machine Xen describes, loads, status, unload, exec.

Expected layouts come from Xen's public headers (xen/include/public/kexec.h,
memory.h, xen.h) and Linux's include/uapi/xen/privcmd.h; refusals from the
fake's copy of Xen's checks (xen_fake.py), never from pykexec's validator.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from pathlib import Path

import pytest

from pykexec import api
from pykexec.backends.xen import hypercalls as hc
from pykexec.backends.xen import probe
from pykexec.backends.xen.backend import TEST_MOVE
from pykexec.boot import elfcore
from pykexec.errors import KernelRefused, LoadRefused, SyscallError, UsageError
from pykexec.machine import snapshot
from pykexec.machine.model import Machine
from pykexec.machine.ranges import Range
from tests import builders

from .xen_fake import FakeXen

CMDLINE = "console=ttyS0 marker=xen"
INITRD = bytes(range(256)) * 64


# -- the ABI --------------------------------------------------------------------------------------

def test_layouts_match_the_public_headers():
    # kexec.h: xen_kexec_load_t is u8 type, u8 pad, u16 arch, u32 nr_segments, u64 handle, u64 entry
    assert hc.KEXEC_LOAD.size == 24
    # xen_kexec_segment_t: 64-bit handle, buf_size, dest_maddr, dest_size
    assert hc.KEXEC_SEGMENT.size == 32
    # xen_kexec_range_t on LP64: int32 range, int32 nr, unsigned long size, unsigned long start
    assert hc.KEXEC_RANGE.size == 24 and hc.KEXEC_RANGE.pack(2, 1, 3, 4)[8:16] == (3).to_bytes(8, "little")
    # memory.h: struct xen_memory_map {unsigned int nr_entries; handle buffer;} with the handle at 8
    assert hc.MEMORY_MAP.size == 16 and hc.MEMORY_MAP.pack(5, 0x1234)[8:] == (0x1234).to_bytes(8, "little")
    assert hc.E820_ENTRY.size == 20
    # privcmd.h: struct privcmd_hypercall {__u64 op; __u64 arg[5];}, _IOC(_IOC_NONE, 'P', 0, 48)
    assert hc.PRIVCMD_HYPERCALL.size == 48 and hc.IOCTL_PRIVCMD_HYPERCALL == 0x305000
    # xen.h and kexec.h numbers
    assert (hc.HYPERVISOR_KEXEC_OP, hc.HYPERVISOR_MEMORY_OP, hc.XENMEM_machine_memory_map) == (37, 12, 10)
    assert (hc.KEXEC_CMD_kexec, hc.KEXEC_CMD_kexec_get_range, hc.KEXEC_CMD_kexec_load,
            hc.KEXEC_CMD_kexec_unload, hc.KEXEC_CMD_kexec_status) == (0, 3, 4, 5, 6)
    assert (hc.KEXEC_RANGE_MA_CRASH, hc.KEXEC_RANGE_MA_XEN, hc.KEXEC_RANGE_MA_CPU,
            hc.KEXEC_RANGE_MA_VMCOREINFO) == (0, 1, 2, 6)


class Captured(hc.PrivcmdHypercalls):
    """The privcmd layer with the ioctl replaced: records what Xen would read at each address."""

    def __init__(self, ret: int = 0, fill=None):
        self.device, self.fd, self.seen, self.ret, self.fill = None, -1, [], ret, fill

    def hypercall(self, name, op, *args):
        self.seen.append((name, op, args))
        if self.fill is not None:
            self.fill(args)
        return self.ret


def test_kexec_load_marshals_what_xen_reads():
    calls = Captured()
    seen = {}

    def grab(args):
        cmd, addr = args
        load = hc.KEXEC_LOAD.unpack(ctypes.string_at(addr, hc.KEXEC_LOAD.size))
        table = ctypes.string_at(load[4], hc.KEXEC_SEGMENT.size * load[3])
        segs = [hc.KEXEC_SEGMENT.unpack_from(table, i * 32) for i in range(load[3])]
        seen.update(cmd=cmd, load=load, segs=segs,
                    data=[ctypes.string_at(h, n) if h else None for h, n, _, _ in segs])
    calls.fill = grab
    calls.kexec_load(hc.KEXEC_TYPE_CRASH, 0x41000000,
                     [hc.XenSegment(None, 0, 0x1000), hc.XenSegment(b"abc" * 1000, 0x41000000, 0x1000)])
    assert calls.seen[0][:2] == ("KEXEC_CMD_kexec_load", 37)
    assert seen["cmd"] == hc.KEXEC_CMD_kexec_load
    type_, pad, arch, nr, _, entry = seen["load"]
    assert (type_, pad, arch, nr, entry) == (1, 0, 62, 2, 0x41000000)
    assert seen["segs"][0] == (0, 0, 0, 0x1000)                 # a null handle: Xen maps, copies nothing
    assert seen["segs"][1][1:] == (3000, 0x41000000, 0x1000)
    assert seen["data"] == [None, b"abc" * 1000]


def test_status_and_range_read_back_what_xen_wrote():
    def write_range(args):
        _, addr = args
        ctypes.memmove(addr + 8, struct.pack("<QQ", 0x10000000, 0x40000000), 16)
    calls = Captured(fill=write_range)
    assert calls.kexec_get_range(hc.KEXEC_RANGE_MA_CRASH) == (0x40000000, 0x10000000)
    assert Captured(ret=1).kexec_status(hc.KEXEC_TYPE_DEFAULT) is True
    assert Captured(ret=0).kexec_status(hc.KEXEC_TYPE_CRASH) is False


def test_machine_memory_map_unpacks_e820_entries():
    def fill(args):
        cmd, addr = args
        assert cmd == hc.XENMEM_machine_memory_map
        count, buf = hc.MEMORY_MAP.unpack(ctypes.string_at(addr, 16))
        assert count == hc.MAX_MEMORY_MAP_ENTRIES
        ctypes.memmove(buf, hc.E820_ENTRY.pack(0, 0x9fc00, 1) + hc.E820_ENTRY.pack(0x100000, 0x1000000, 1), 40)
        ctypes.memmove(addr, struct.pack("<I", 2), 4)
    assert Captured(fill=fill).machine_memory_map() == [(0, 0x9fc00, 1), (0x100000, 0x1000000, 1)]


def test_no_privcmd_is_one_sentence(tmp_path):
    with pytest.raises(SyscallError) as e:
        hc.PrivcmdHypercalls(privcmd=tmp_path / "privcmd")
    assert "not a Xen dom0, or the xen-privcmd module is not loaded" in e.value.advice


# -- the machine Xen describes --------------------------------------------------------------------

def xen_sys(tmp_path: Path, uuid: str = probe.NULL_UUID) -> Path:
    root = tmp_path / "sys"
    (root / "hypervisor").mkdir(parents=True)
    (root / "hypervisor" / "type").write_text("xen\n")
    (root / "hypervisor" / "uuid").write_text(uuid + "\n")
    (root / "kernel" / "security").mkdir(parents=True)
    (root / "kernel" / "security" / "lockdown").write_text("[none] integrity confidentiality\n")
    return root


def test_snapshot_in_dom0_takes_memory_and_ranges_from_xen(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "iomem").write_text("00000000-0fffffff : System RAM\n")   # dom0's pseudo-physical view
    fake = FakeXen()
    m = snapshot(proc=proc, sys=xen_sys(tmp_path), boot=tmp_path / "boot", arch="x86_64", xen=fake)
    assert m.under_xen and m.xen_dom0 is True and m.memory_source == "xen"
    assert [(r.start, r.size, r.type) for r in m.memory] == [
        (0, 0x9fc00, "System RAM"), (0x9fc00, 0x400, "Reserved"), (0xf0000, 0x10000, "Reserved"),
        (0x100000, 0x7fee0000, "System RAM"), (0x7ffe0000, 0x20000, "Reserved")]
    assert m.xen_crash_area == Range(0x40000000, 0x10000000)
    assert m.xen_cpu_notes == (Range(0x7ff10000, 0x2d0), Range(0x7ff11000, 0x2d0))
    assert m.xen_vmcoreinfo == Range(0x7ff00000, 0x1000) and m.xen_image == Range(0x200000, 0x400000)
    assert m.crashk_res is None


def test_snapshot_in_a_guest_that_is_not_dom0(tmp_path):
    fake = FakeXen()
    m = snapshot(proc=tmp_path / "p", sys=xen_sys(tmp_path, "4fa1c2d6-0000-0000-0000-000000000001"),
                 boot=tmp_path / "b", arch="x86_64", xen=fake)
    assert m.hypervisor == "xen" and m.xen_dom0 is False and not m.under_xen
    assert fake.calls == []


def test_machine_description_keeps_the_xen_ranges(tmp_path):
    from pykexec.machine import description
    m = snapshot(proc=tmp_path / "p", sys=xen_sys(tmp_path), boot=tmp_path / "b", arch="x86_64", xen=FakeXen())
    again = description.from_json(description.to_json(m))
    assert (again.xen_dom0, again.xen_crash_area, again.xen_cpu_notes, again.xen_vmcoreinfo, again.xen_image) == (
        m.xen_dom0, m.xen_crash_area, m.xen_cpu_notes, m.xen_vmcoreinfo, m.xen_image)


# -- loads ----------------------------------------------------------------------------------------

def dom0(fake: FakeXen) -> Machine:
    view = probe.read_view(fake)
    return Machine(arch="x86_64", memory=view.memory, memory_source="xen", hypervisor="xen", xen_dom0=True,
                   xen_crash_area=view.crash_area, xen_cpu_notes=view.cpu_notes, xen_vmcoreinfo=view.vmcoreinfo,
                   mem_total=768 << 20, possible_cpus=1, lockdown="none")


def load(tmp_path, fake, *, crash=False, image=None, **opts):
    path = tmp_path / "vmlinuz"
    path.write_bytes(image or builders.bzimage())
    initrd = tmp_path / "initrd"
    initrd.write_bytes(INITRD)
    sysfs = xen_sys(tmp_path) if not (tmp_path / "sys").exists() else tmp_path / "sys"
    opts.setdefault("initrds", (initrd,))
    return api.load(api.LoadOptions(image=path, command_line=CMDLINE, crash=crash, **opts), syscalls=fake,
                    sysfs=sysfs, machine=dom0(fake), efivars=sysfs / "no-efivars")


def test_default_load_goes_to_xen_with_the_low_megabyte_mapped(tmp_path):
    fake = FakeXen()
    summary, report, plan = load(tmp_path, fake)
    assert report.syscall == "KEXEC_CMD_kexec_load" and plan.target == "xen"
    (call, kexec_type, entry, segments, arch), = [c for c in fake.calls if c[0] == "load"]
    assert (kexec_type, arch) == (hc.KEXEC_TYPE_DEFAULT, 62)
    by_dest = {s.dest_maddr: s for s in segments}
    purgatory = next(p for p in plan.segments if p.role == "purgatory")
    assert entry == purgatory.mem and by_dest[entry].buf == purgatory.buffer
    # every byte below 1 MiB is covered, by null segments where nothing is loaded (kexec-tools' filler)
    low = sorted((s.dest_maddr, s.dest_maddr + s.dest_size) for s in segments if s.dest_maddr < 1 << 20)
    assert low[0][0] == 0 and all(a[1] == b[0] for a, b in zip(low, low[1:])) and low[-1][1] >= 1 << 20
    assert any(s.buf is None for s in segments)
    initrd = next(p for p in plan.segments if p.role == "initrd")
    assert by_dest[initrd.mem].buf == INITRD
    # boot_params carry the machine map, not dom0's
    from tests.usermode_helpers import read_zero_page
    params = next(p for p in plan.segments if p.role == "boot-params")
    e820 = read_zero_page(params.buffer)["e820"]
    assert any(e.addr == 0x100000 and e.size == 0x7fee0000 and e.type == 1 for e in e820)


def test_crash_load_lives_in_xen_crash_area_with_xen_notes(tmp_path):
    fake = FakeXen()
    _, _, plan = load(tmp_path, fake, crash=True)
    (_, kexec_type, entry, segments, _), = [c for c in fake.calls if c[0] == "load"]
    start, size = fake.crash_area
    assert kexec_type == hc.KEXEC_TYPE_CRASH and start <= entry < start + size
    assert all(start <= s.dest_maddr and s.dest_maddr + s.dest_size <= start + size
               for s in segments if s.buf is not None)
    elf = next(p for p in plan.segments if p.role == "elfcorehdr")
    _, phdrs = elfcore.parse(elf.buffer)
    notes = [(p["p_offset"], p["p_filesz"]) for p in phdrs if p["p_type"] == elfcore.PT_NOTE]
    assert notes == [(0x7ff10000, 0x2d0), (0x7ff11000, 0x2d0), (0x7ff00000, 0x1000)]
    loads = [p for p in phdrs if p["p_type"] == elfcore.PT_LOAD]
    assert not any(p["p_paddr"] < start + size and p["p_paddr"] + p["p_memsz"] > start for p in loads)
    backup = next(p for p in plan.segments if p.role == "backup")
    assert next(s for s in segments if s.dest_maddr == backup.mem).buf == bytes(backup.bufsz)
    assert f"elfcorehdr={elf.mem >> 10}K" in plan.cmdline


def test_crash_load_without_a_crash_area_is_refused(tmp_path):
    fake = FakeXen(crash_area=(0, 0))
    with pytest.raises(LoadRefused, match="crash"):
        load(tmp_path, fake, crash=True)
    assert not [c for c in fake.calls if c[0] == "load"]


def test_refused_load_keeps_the_earlier_image(tmp_path, monkeypatch):
    fake = FakeXen()
    load(tmp_path, fake, crash=True)
    first = fake.loaded[hc.KEXEC_TYPE_CRASH]
    monkeypatch.setenv(TEST_MOVE, "kernel:0x1000000")    # past the planner: outside the crash area
    with pytest.raises(KernelRefused) as e:
        load(tmp_path, fake, crash=True)
    assert e.value.errno_value == errno.EADDRNOTAVAIL and "crash area" in str(e.value)
    assert "\n" not in str(e.value)
    assert fake.loaded[hc.KEXEC_TYPE_CRASH] is first
    assert api.status(hypercalls=fake).crash_loaded is True


def test_status_unload_and_exec_are_xen_own_state(tmp_path):
    fake = FakeXen()
    sysfs = xen_sys(tmp_path)
    st = api.status(hypercalls=fake)
    assert (st.loaded, st.crash_loaded, st.crash_size) == (False, False, 0x10000000)
    with pytest.raises(LoadRefused, match="no kernel loaded"):
        api.execute(syscalls=fake, sysfs=sysfs, sync=False)
    load(tmp_path, fake)
    load(tmp_path, fake, crash=True)
    st = api.status(hypercalls=fake)
    assert (st.loaded, st.crash_loaded) == (True, True)
    assert api.unload(crash=True, syscalls=fake, sysfs=sysfs) == "KEXEC_CMD_kexec_unload"
    assert (api.status(hypercalls=fake).loaded, api.status(hypercalls=fake).crash_loaded) == (True, False)
    api.execute(syscalls=fake, sysfs=sysfs, sync=False)
    assert fake.calls[-1] == ("exec", hc.KEXEC_TYPE_DEFAULT)


def test_files_are_not_carried_across_xen_kexec(tmp_path):
    """LUO lives in Linux; Xen's exec would drop what was preserved, so nothing is preserved or exec'd."""
    fake = FakeXen()
    load(tmp_path, fake)
    carried = tmp_path / "carried"
    carried.write_bytes(b"state")
    with pytest.raises(LoadRefused, match="Xen holds the next kernel"):
        api.execute(syscalls=fake, sysfs=tmp_path / "sys", sync=False, carry={"state": carried})
    assert ("exec", hc.KEXEC_TYPE_DEFAULT) not in fake.calls


@pytest.mark.parametrize("err, words", [
    (errno.EPERM, "only dom0"), (errno.EBUSY, "busy"), (errno.ENOMEM, "crash area is too small"),
    (errno.EINVAL, "16 or more segments"), (errno.EADDRNOTAVAIL, "inside Xen's crash area")])
def test_each_xen_errno_is_one_sentence(tmp_path, err, words):
    fake = FakeXen(fail={"load": err})
    with pytest.raises(SyscallError) as e:
        load(tmp_path, fake)
    message = str(e.value)
    assert words in message and "\n" not in message and e.value.errno_value == err


def test_xen_to_xen_multiboot2_through_the_hypercall(tmp_path):
    fake = FakeXen()
    mod = tmp_path / "dom0"
    mod.write_bytes(b"\x90" * 5000)
    _, report, plan = load(tmp_path, fake, image=builders.multiboot2_image(), initrds=(),
                           modules=(f"{mod},console=hvc0",))
    assert report.syscall == "KEXEC_CMD_kexec_load" and plan.target == "xen"
    (_, kexec_type, entry, segments, _), = [c for c in fake.calls if c[0] == "load"]
    assert kexec_type == hc.KEXEC_TYPE_DEFAULT
    module = next(p for p in plan.segments if p.role == "module-0")
    assert next(s for s in segments if s.dest_maddr == module.mem).buf == b"\x90" * 5000


def test_dom0_own_memory_view_is_refused_for_a_real_load(tmp_path):
    fake = FakeXen()
    path = tmp_path / "vmlinuz"
    path.write_bytes(builders.bzimage())
    sysfs = xen_sys(tmp_path)
    machine = dom0(fake).with_changes(memory_source="iomem")
    with pytest.raises(LoadRefused, match="machine memory map is unknown"):
        api.load(api.LoadOptions(image=path), syscalls=fake, sysfs=sysfs, machine=machine,
                 efivars=sysfs / "no-efivars")


@pytest.mark.parametrize("crash", [False, True])
def test_plan_target_xen_predicts_what_is_handed_to_xen(tmp_path, crash):
    from pykexec import plan as planning
    from pykexec.formats.prepare import prepare
    fake = FakeXen()
    _, _, built = load(tmp_path, fake, crash=crash)
    predicted = planning.plan(prepare(builders.bzimage()), machine=dom0(fake), target="xen", crash=crash,
                              initrd=INITRD, cmdline=CMDLINE)
    (_, _, entry, segments, _), = [c for c in fake.calls if c[0] == "load"]
    assert predicted.entry == entry
    assert [(s.mem, s.memsz) for s in predicted.segments] == [(s.dest_maddr, s.dest_size) for s in segments]
    assert [s.null for s in predicted.segments] == [s.buf is None for s in segments]


def test_no_filler_hook_drops_only_the_null_segments(tmp_path, monkeypatch):
    from pykexec.backends.xen.backend import TEST_NO_FILLER
    fake = FakeXen()
    monkeypatch.setenv(TEST_NO_FILLER, "1")
    _, _, plan = load(tmp_path, fake)
    (_, _, _, segments, _), = [c for c in fake.calls if c[0] == "load"]
    assert [(s.dest_maddr, s.dest_size) for s in segments] == [(p.mem, p.memsz) for p in plan.segments if not p.null]


def test_mode_user_under_xen_goes_to_the_hypercall(tmp_path):
    fake = FakeXen()
    _, report, plan = load(tmp_path, fake, mode="user")
    assert report.syscall == "KEXEC_CMD_kexec_load" and plan.target == "xen"
    assert [c[0] for c in fake.calls if c[0] == "load"] == ["load"]


def test_mode_file_under_xen_is_refused_before_any_call(tmp_path):
    fake = FakeXen()
    with pytest.raises(UsageError, match="under Xen kexec belongs to the hypervisor"):
        load(tmp_path, fake, mode="file")
    assert not [c for c in fake.calls if c[0] == "load"]
