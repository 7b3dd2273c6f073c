"""arm64 kexec_file_load, on a kernel built with KEXEC_FILE, in one chain of three kernels.

Debian's arm64 kernels have no KEXEC_FILE, so the first kernel here is our
own (:func:`arm64.file_kernel`: Debian's linux-source-7.2, tinyconfig, the
guest's needs, KEXEC_FILE, CRASH_DUMP), booted with ``crashkernel=``.  One
QEMU boot shows, each observed by the kernel that comes next:

1. **Prediction equals reality, normal load** (scenario 4): stage 1 runs
   ``pykexec machine --json``, then ``pykexec load --mode auto
   --debug-syscall`` of the Image with a small initrd; the kernel logs every
   segment (KEXEC_FILE_DEBUG: ``segment[i]: ... mem= memsz=`` and ``Loaded
   <what> at``).  On the host, ``pykexec plan --target linux-file`` from that
   machine description must give the same segments, in the same order, with
   the same addresses, bufsz and memsz, the DTB the kernel builds included.
   ``--mode auto`` must have used kexec_file_load, not fallen back.
2. **kdump through kexec_file_load** (scenario 2) and its prediction: stage 1
   unloads, then ``load --crash --mode file --debug-syscall`` of the Image
   with the guest's own initramfs; the plan ``--crash`` must equal the log
   again.  A process holds a random 4 MiB pattern, sysrq-c panics the
   kernel, and the capture kernel (stage 2) finds every page in /proc/vmcore;
   its /proc/cmdline is exactly the one given (arm64 passes the core header in
   the device tree) and its System RAM lies inside the crash region.
3. **File mode, Image and zboot** (scenario 3): both loads of the Image went
   to the kernel as the original file (a wrapper around the real
   ``kexec_file_load`` reads ``/proc/self/fd/N`` at the call), and the capture
   kernel that booted is that Image.  The capture kernel then loads a zstd
   EFI zboot of the same Image with ``--mode file`` (pykexec unpacks it; the
   kernel gets a ``memfd:pykexec-kernel``) and execs it: stage 3, a
   busybox-only initramfs, reports its command line's marker and a token only
   that initrd holds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from . import arm64
from . import harness as h
from . import kdump_pattern as kp

pytestmark = pytest.mark.vm

MEMORY = 1024          # MiB
CRASHKERNEL = "384M"   # the capture kernel unpacks the guest's ~80 MB initramfs, then loads a zboot

SEGMENT = re.compile(r"segment\[(\d+)\]: buf=\S+ bufsz=0x([0-9a-f]+) mem=0x([0-9a-f]+) memsz=0x([0-9a-f]+)")
LOADED = re.compile(r"Loaded (kernel|elf core header|initrd|dtb) at 0x([0-9a-f]+) bufsz=0x([0-9a-f]+) "
                    r"memsz=0x([0-9a-f]+)")
#: the kernel's words in "Loaded <what> at" for the plan's roles
LOADED_ROLES = {"kernel": "kernel", "elf core header": "elfcorehdr", "initrd": "initrd", "dtb": "dtb"}

#: runs the pykexec command line with the real kexec_file_load wrapped: at the call, the targets
#: of the kernel and initrd fds go to /tmp/spy-NAME
SPY = r'''#!/usr/bin/python3
import os, sys
from pykexec.backends.linux import syscalls
real = syscalls.LinuxSyscalls.kexec_file_load
name = sys.argv.pop(1)

def kexec_file_load(self, kernel_fd, initrd_fd, cmdline, flags):
    with open(f"/tmp/spy-{name}", "a") as out:
        for what, fd in (("kernel", kernel_fd), ("initrd", initrd_fd)):
            out.write(f"{what} {os.readlink(f'/proc/self/fd/{fd}') if fd >= 0 else '-'}\n")
        out.write(f"flags {flags:#x}\n")
    return real(self, kernel_fd, initrd_fd, cmdline, flags)

syscalls.LinuxSyscalls.kexec_file_load = kexec_file_load
from pykexec.cli import main
sys.exit(main(sys.argv[1:]))
'''

STAGE3 = h.sh_script("""
mark cmdline3 "$(cat /proc/cmdline)"
if [ -f /vm/token ]; then mark token3 "$(cat /vm/token)"; else mark token3 "(no /vm/token)"; fi
""")


def _kernel_log(text: str) -> tuple[list, dict]:
    """(segments in order as (mem, memsz, bufsz), {role: (mem, bufsz, memsz)}) from a KEXEC_FILE_DEBUG log."""
    segments = [(int(m.group(3), 16), int(m.group(4), 16), int(m.group(2), 16)) for m in SEGMENT.finditer(text)]
    loaded = {LOADED_ROLES[m.group(1)]: (int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16))
              for m in LOADED.finditer(text)}
    return segments, loaded


def _plan(machine, image, initrd, cmdline: str, crash: bool) -> dict:
    """``pykexec plan --target linux-file`` on the host, from the guest's machine description."""
    args = [sys.executable, "-m", "pykexec", "plan", "--target", "linux-file", "--machine", str(machine),
            "--json", "--initrd", str(initrd), "--command-line", cmdline, str(image)]
    proc = subprocess.run(args + (["--crash"] if crash else []), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        pytest.fail(f"pykexec plan exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
    return json.loads(proc.stdout)


def _expect_prediction(serial: h.Serial, what: str, log: str, plan: dict) -> None:
    """The plan's segments are the kernel's: order, mem, memsz, bufsz; and each "Loaded" line."""
    real, loaded = _kernel_log(log)
    if not real:
        serial.fail(f"{what}: the kernel logged no segment[] lines (KEXEC_FILE_DEBUG)")
    predicted = [(int(s["mem"], 16), int(s["memsz"], 16), int(s["bufsz"], 16)) for s in plan["segments"]]
    by_role = {s["role"]: (int(s["mem"], 16), int(s["bufsz"], 16), int(s["memsz"], 16)) for s in plan["segments"]}

    def show(segs):
        return "\n".join(f"  mem {m:#x} memsz {ms:#x} bufsz {b:#x}" for m, ms, b in segs)

    if predicted != real or any(by_role.get(role) != got for role, got in loaded.items()):
        serial.fail(f"{what}: plan and kernel disagree\nkernel:\n{show(real)}\n"
                    + "\n".join(f"  Loaded {r} at {m:#x} bufsz {b:#x} memsz {ms:#x}" for r, (m, b, ms) in loaded.items())
                    + f"\npykexec plan:\n{show(predicted)}\n"
                    + "\n".join(f"  {s['role']}: {s['mem']} memsz {s['memsz']} bufsz {s['bufsz']}"
                                for s in plan["segments"]))
    if set(loaded) != set(by_role):
        serial.fail(f"{what}: the kernel loaded {sorted(loaded)}, the plan has {sorted(by_role)}")


def _fds(serial: h.Serial, name: str) -> dict:
    return dict(line.split(" ", 1) for line in serial.values(f"spy-{name}"))


def test_kexec_file_load_predicted_kdump_and_file_mode_chain(tmp_path):
    image = arm64.file_kernel()
    arm64.prepare(first_kernel=image)
    seed, tok = h.token(), h.token()
    capture_cmdline = f"console={arm64.CONSOLE} stage=2 panic=-1 nr_cpus=1 marker={h.token()}"
    next_cmdline = f"console={arm64.CONSOLE} stage=3 panic=-1 marker={h.token()}"
    zboot = h.material.arm64_zboot_debian("zstd", image=image)[0]

    g = arm64.Guest("arm64-file", image=image)
    stage3 = g.stage2_initrd(STAGE3, files={"/vm/token": tok + "\n"}, stage=3)
    g.host_file("/vm/initrd3", stage3)
    g.host_file("/vm/zboot-zstd.efi", zboot)
    g.file("/vm/spy.py", SPY, mode=0o755)
    pattern = kp.add_holder(g, seed, python=arm64.GUEST_PYTHON)
    g.stage(1, h.sh_script(f"""
mark kernel "$(uname -r)"
pykexec machine --json > /tmp/machine.json; mark machine.rc $?
show machine /tmp/machine.json
dmesg -c >/dev/null
run normal /vm/spy.py normal load --mode auto --debug-syscall --json {arm64.GUEST_IMAGE} --initrd /vm/initrd3 --command-line "{next_cmdline}" || exit 1
dmesg -c > /tmp/dmesg; show dmesg-normal /tmp/dmesg; show spy-normal /tmp/spy-normal
run unload pykexec unload || exit 1
run crash /vm/spy.py crash load --crash --mode file --debug-syscall --json {arm64.GUEST_IMAGE} --initrd {h.GUEST_INITRD} --command-line "{capture_cmdline}" || exit 1
dmesg -c > /tmp/dmesg; show dmesg-crash /tmp/dmesg; show spy-crash /tmp/spy-crash
mark crash-loaded "$(cat /sys/kernel/kexec_crash_loaded)"
show iomem1 /proc/iomem
""" + kp.PANIC))
    g.stage(2, arm64.py_script(pattern + """
mark("cmdline2", open("/proc/cmdline").read().strip())
for line in open("/proc/iomem"):
    mark("iomem2", line.rstrip("\\n"))
""" + kp.SCANNER + f"""
p = run("zboot", "/vm/spy.py", "zboot", "load", "--mode", "file", "--json", "/vm/zboot-zstd.efi",
        "--initrd", "/vm/initrd3", "--command-line", "{next_cmdline}")
for line in open("/tmp/spy-zboot") if p.returncode == 0 else ():
    mark("spy-zboot", line.rstrip("\\n"))
if p.returncode == 0:
    run("exec", "pykexec", "exec")
    mark("exec-returned")
"""))
    serial = g.boot(f"crashkernel={CRASHKERNEL}", memory=MEMORY, embed_initrd=True, timeout=600)

    # scenario 4 and --mode auto: the normal load
    if serial.value("machine.rc") != "0":
        serial.fail("pykexec machine --json failed")
    machine = tmp_path / "machine.json"
    machine.write_text(serial.lines("machine") + "\n")
    if json.loads(machine.read_text()).get("fdt") is None:
        serial.fail("the machine description has no fdt (/sys/firmware/fdt): the DTB cannot be predicted")
    h.expect_ok(serial, "normal")
    normal = json.loads(serial.lines("normal.out"))
    if normal["attempts"] != ["kexec_file_load: ok"]:
        serial.fail(f"load --mode auto made the attempts {normal['attempts']}, not kexec_file_load alone")
    _expect_prediction(serial, "normal load", serial.lines("dmesg-normal"),
                       _plan(machine, image, stage3, next_cmdline, crash=False))

    # scenario 2 (and 4 for --crash): the crash load
    h.expect_ok(serial, "crash")
    if serial.values("crash-loaded") != ["1"]:
        serial.fail("/sys/kernel/kexec_crash_loaded is not 1 after the crash load")
    _expect_prediction(serial, "crash load", serial.lines("dmesg-crash"),
                       _plan(machine, image, g.initrd(), capture_cmdline, crash=True))

    # scenario 3: the Image went as its own file both times
    for name in ("normal", "crash"):
        fds = _fds(serial, name)
        if fds.get("kernel") != arm64.GUEST_IMAGE:
            serial.fail(f"{name} load: kexec_file_load got the kernel fd {fds.get('kernel')!r}, "
                        f"not the Image {arm64.GUEST_IMAGE}")

    # the capture kernel: booted from that Image, found the pattern, confined to the crash region
    serial.expect_in_order("stage-begin 1", "holder-ready", "crashing", "stage-begin 2", "pattern")
    kp.expect_capture(serial, capture_cmdline, "cmdline2")

    # scenario 3: the zboot, unpacked into a memfd, loaded and exec'd from the capture kernel
    h.expect_ok(serial, "zboot")
    fds = _fds(serial, "zboot")
    if not fds.get("kernel", "").startswith("/memfd:pykexec-kernel"):
        serial.fail(f"the zboot load gave kexec_file_load the kernel fd {fds.get('kernel')!r}, not a memfd")
    if serial.has("exec-returned"):
        serial.fail("`pykexec exec` returned in the capture kernel")
    serial.expect_in_order("stage-begin 2", "stage-begin 3", "stage-end 3 rc=0")
    if serial.value("cmdline3") != next_cmdline:
        serial.fail(f"stage 3's cmdline is {serial.value('cmdline3')!r}, not {next_cmdline!r}")
    if serial.value("token3") != tok:
        serial.fail(f"stage 3's /vm/token is {serial.value('token3')!r}, not the initrd's {tok!r}")
