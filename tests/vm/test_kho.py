"""Kexec HandOver (KHO) and the Live Update Orchestrator (LUO), on Linux 7.2 built with both.

One boot of ``material.kho_kernel()`` (tinyconfig + KEXEC_HANDOVER, its
debugfs, LIVEUPDATE, LIVEUPDATE_MEMFD, ramoops with the console) with
``kho=on liveupdate=on`` and three scratch areas of sizes we choose, then a
KHO kexec into the same kernel.  Stage 1, in the first kernel:

4. refusals: ``load --mode user`` (only kexec_file_load hands over, says
   kho.rst); an initrd larger than any scratch area, refused by ``load``
   (and by ``plan`` on the host) in one line naming the areas, before any
   system call (KEXEC_FILE_DEBUG logs nothing), and refused by the kernel too
   (EADDRNOTAVAIL) when the test hook sends it past the planner;
5. a crash load: every segment in the crash region, as ``plan`` predicts;
1. the real load with KEXEC_FILE_DEBUG: the kernel's placement of every
   segment equals ``plan``'s prediction from the guest's ``machine --json``,
   and every segment lies in a scratch area read straight from debugfs;
   ``status`` says the next exec is a KHO handover;
3. ``exec --carry state=<4 MiB of random bytes>``, after printing a marker to
   the console (kept by ramoops in a ``reserve_mem`` region).

Stage 2, in the second kernel:

2. it logs ``KHO: exec from: <first release> (count 1)``, has
   ``/sys/kernel/debug/kho/in/fdt``, its ramoops ``reserve_mem`` region has
   the first kernel's address, and its pstore shows the first kernel's marker;
3. ``pykexec carried`` lists ``state``; ``carried state -o out`` gives the
   same SHA-256 as stage 1's file; a second listing still works.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from . import harness as h

pytestmark = pytest.mark.vm

MiB = 1 << 20
SCRATCH = (16 * MiB, 96 * MiB, 16 * MiB)      # kho_scratch=lowmem,global,per-node
BIG_INITRD = 112 * MiB                          # more than the largest scratch area
CRASH_INITRD = 1 * MiB
MEMORY = 1536
PERSIST = ("kho=on liveupdate=on kho_scratch=16M,96M,16M reserve_mem=1M:4K:oops ramoops.mem_name=oops "
           "ramoops.console_size=262144 ramoops.record_size=4096 ramoops.ftrace_size=0 ramoops.pmsg_size=0")
#: the kernel's last line when it cannot power off: GUEST_CONFIG's tinyconfig guest loads no ACPI
#: tables under QEMU ("ACPI: Unable to load the System Description Tables"), so it halts
HALTED = "reboot: Power off not available: System halted instead"
SEGMENT = re.compile(r"segment\[(\d+)\]: buf=\S+ bufsz=0x([0-9a-f]+) mem=0x([0-9a-f]+) memsz=0x([0-9a-f]+)")


def _kho_kernel():
    try:
        return h.material.kho_kernel()[0]
    except Exception as e:
        raise h.VmError(f"cannot build the KHO kernel: {e}") from e


def _segments(text: str) -> list[tuple[int, int]]:
    return sorted((int(m.group(3), 16), int(m.group(4), 16)) for m in SEGMENT.finditer(text))


def _plan(kernel, machine, initrd, cmdline, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pykexec", "plan", "--target", "linux-file", "--machine",
                           str(machine), "--json", "--initrd", str(initrd), "--command-line", cmdline,
                           *extra, str(kernel)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _predicted(proc: subprocess.CompletedProcess) -> list[tuple[int, int]]:
    if proc.returncode != 0:
        pytest.fail(f"pykexec plan exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
    return sorted((int(s["mem"], 16), int(s["memsz"], 16)) for s in json.loads(proc.stdout)["segments"])


def _one_error_line(serial: h.Serial, name: str, *needles: str) -> str:
    h.expect_usage_error(serial, name)
    line = serial.value(name + ".err")
    missing = [n for n in needles if n not in line]
    if missing:
        serial.fail(f"[{name}] the error line lacks {missing}: {line!r}")
    return line


def test_kho_handover_and_carry(vm_material, tmp_path):
    kernel = _kho_kernel()
    marker = "pstore-marker-" + h.token()
    cmdline2 = f"console=ttyS0 stage=2 {PERSIST}"
    crash_cmdline = "console=ttyS0 stage=crash"
    g = h.Guest("kho", image=kernel)
    g.stage(1, h.sh_script(f"""
mark uname "$(uname -r)"
show scratch-phys /sys/kernel/debug/kho/out/scratch_phys
show scratch-len /sys/kernel/debug/kho/out/scratch_len
mark crash-region "$(grep 'Crash kernel' /proc/iomem)"
mark ramoops "$(dmesg | grep -o 'ramoops: using 0x.*')"
run machine pykexec machine --json
dmesg -c >/dev/null
run user pykexec load --mode user /vm/vmlinuz --initrd /vm/initrd.img --command-line "{cmdline2}"
truncate -s {BIG_INITRD} /tmp/big.img
dmesg -c >/dev/null
run big pykexec load --debug-syscall /vm/vmlinuz --initrd /tmp/big.img --command-line "{cmdline2}"
mark big-kernel-lines "$(dmesg -c | grep -c kexec_file)"
run forced env PYKEXEC_TEST_PAST_PLANNER=1 pykexec load --debug-syscall /vm/vmlinuz --initrd /tmp/big.img --command-line "{cmdline2}"
mark forced-kernel-lines "$(dmesg -c | grep -c kexec_file)"
rm /tmp/big.img
head -c {CRASH_INITRD} /dev/urandom > /tmp/crash.img
dmesg -c >/dev/null
run crash pykexec load --crash --debug-syscall /vm/vmlinuz --initrd /tmp/crash.img --command-line "{crash_cmdline}"
dmesg -c > /tmp/crash-dmesg.txt
show crash-dmesg /tmp/crash-dmesg.txt
run load pykexec load --debug-syscall /vm/vmlinuz --initrd /vm/initrd.img --command-line "{cmdline2}" || exit 1
dmesg -c > /tmp/dmesg.txt
show dmesg /tmp/dmesg.txt
run status pykexec status --json
head -c 4194304 /dev/urandom > /tmp/state
mark state-sha "$(sha256sum /tmp/state | cut -d' ' -f1)"
echo "<2>{marker}" > /dev/kmsg
run exec pykexec exec --carry state=/tmp/state
mark exec-returned
"""))
    g.stage(2, h.sh_script(f"""
mark uname2 "$(uname -r)"
mark kho-exec "$(dmesg | grep 'KHO: exec from')"
mark ramoops2 "$(dmesg | grep -o 'ramoops: using 0x.*')"
[ -e /sys/kernel/debug/kho/in/fdt ] && mark kho-in-fdt yes
mount -t pstore pstore /sys/fs/pstore
mark pstore-files "$(ls /sys/fs/pstore)"
mark pstore-marker "$(cat /sys/fs/pstore/console-ramoops* 2>/dev/null | grep -c {marker})"
run carried pykexec carried
run get pykexec carried state -o /tmp/out
mark out-sha "$(sha256sum /tmp/out | cut -d' ' -f1)"
run again pykexec carried --json
"""))
    serial = g.boot(f"stage=1 crashkernel=64M {PERSIST}", memory=MEMORY, timeout=400, until=HALTED)
    release = serial.value("uname")

    # -- the machine: KHO on, the three areas we asked for, as debugfs has them
    phys = [int(x, 16) for x in serial.values("scratch-phys")]
    lens = [int(x, 16) for x in serial.values("scratch-len")]
    if lens != list(SCRATCH):
        serial.fail(f"debugfs scratch_len is {[hex(x) for x in lens]}, expected kho_scratch= sizes {SCRATCH}")
    areas = [(p, p + n) for p, n in zip(phys, lens)]
    h.expect_ok(serial, "machine")
    machine = json.loads(serial.lines("machine.out"))
    described = [(int(a["start"], 16), int(a["start"], 16) + int(a["size"], 16)) for a in machine["kho"]["scratch"]]
    assert machine["kho"]["active"] is True and described == areas, machine["kho"]
    machine_file = tmp_path / "machine.json"
    machine_file.write_text(json.dumps(machine))

    # -- 4. refusals
    _one_error_line(serial, "user", "kho.rst")
    names = [f"{s:#x}-{e - 1:#x}" for s, e in areas]
    _one_error_line(serial, "big", "KHO scratch", *names)
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(BIG_INITRD)
    proc = _plan(kernel, machine_file, big, cmdline2)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and all(n in err[0] for n in names), proc.stderr
    if serial.values("forced.rc") == ["0"] or "EADDRNOTAVAIL" not in serial.lines("forced.err"):
        serial.fail(f"the kernel did not refuse the load forced past the planner:\n{serial.command('forced')}")
    # before any system call: KEXEC_FILE_DEBUG logs nothing for the refused load, and does for the forced one
    assert (serial.value("big-kernel-lines"), serial.value("forced-kernel-lines") != "0") == ("0", True), \
        (serial.value("big-kernel-lines"), serial.value("forced-kernel-lines"))

    # -- 5. a crash load goes to the crash region, as predicted
    h.expect_ok(serial, "crash")
    m = re.search(r"([0-9a-f]+)-([0-9a-f]+) : Crash kernel", serial.value("crash-region"))
    crash = (int(m.group(1), 16), int(m.group(2), 16) + 1)
    real_crash = _segments(serial.lines("crash-dmesg"))
    assert real_crash and all(crash[0] <= mem and mem + size <= crash[1] for mem, size in real_crash), \
        (real_crash, crash)
    crash_initrd = tmp_path / "crash.img"
    crash_initrd.write_bytes(bytes(CRASH_INITRD))
    assert _predicted(_plan(kernel, machine_file, crash_initrd, crash_cmdline, "--crash")) == real_crash

    # -- 1. prediction equals reality, inside scratch
    h.expect_ok(serial, "load")
    real = _segments(serial.lines("dmesg"))
    assert real, serial.lines("dmesg")
    predicted = _predicted(_plan(kernel, machine_file, g.initrd(), cmdline2))
    assert predicted == real, f"kernel {[(hex(a), hex(b)) for a, b in real]}\nplan {[(hex(a), hex(b)) for a, b in predicted]}"
    outside = [(hex(mem), hex(size)) for mem, size in real
               if not any(s <= mem and mem + size <= e for s, e in areas)]
    assert not outside, f"segments outside the scratch areas {names}: {outside}"
    status = h.status_json(serial, "status")
    assert (status["loaded"], status["kho_active"], status["kho_handover"]) == (True, True, True), status

    # -- 2. the handover arrived
    h.expect_stage2(serial)
    if serial.has("exec-returned"):
        serial.fail(f"`pykexec exec --carry` returned:\n{serial.command('exec')}")
    assert serial.value("uname2") == release
    assert serial.value("kho-exec").endswith(f"KHO: exec from: {release} (count 1)"), serial.value("kho-exec")
    assert serial.value("kho-in-fdt") == "yes"
    ramoops = serial.value("ramoops")  # "ramoops: using 0x100000@0x...": the reserve_mem region
    assert ramoops.startswith("ramoops: using 0x100000@") and serial.value("ramoops2") == ramoops, \
        (ramoops, serial.value("ramoops2"))
    if serial.value("pstore-marker") == "0":
        serial.fail(f"pstore ({serial.value('pstore-files')}) lacks the first kernel's marker {marker}")

    # -- 3. the carried file
    h.expect_ok(serial, "carried")
    sha = serial.value("state-sha")
    assert serial.values("carried.out") == [f"state\t{4 * MiB}\t{sha}"], serial.command("carried")
    h.expect_ok(serial, "get")
    assert serial.value("out-sha") == sha
    h.expect_ok(serial, "again")
    again = json.loads(serial.lines("again.out"))
    assert [(f["name"], f["size"], f["sha256"]) for f in again] == [("state", 4 * MiB, sha)]
