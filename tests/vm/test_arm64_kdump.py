"""arm64 kdump through kexec_load, in the arm64 guest (Debian's 7.x kernel, no KEXEC_FILE).

The first kernel boots with ``crashkernel=``; pykexec loads the same kernel as
the capture kernel (``load --crash --mode user``: the kernel, the guest's own
initramfs, an ELF core header and a device tree with ``linux,elfcorehdr`` and
``linux,usable-memory-range``, all in the crash region).  A process holds a
random 4 MiB pattern, the kernel panics (sysrq-c), and the capture kernel
finds every page of the pattern in /proc/vmcore.  Its /proc/cmdline is
exactly the one given (arm64 passes the core header in the device tree, not
``elfcorehdr=``), and its /proc/iomem has System RAM only inside the crash
region the first kernel reserved.
"""

from __future__ import annotations

import pytest

from . import arm64
from . import harness as h
from . import kdump_pattern as kp

pytestmark = pytest.mark.vm

MEMORY = 1536          # MiB
CRASHKERNEL = "384M"   # the capture kernel unpacks the guest's ~80 MB initramfs


def test_kdump_through_kexec_load_finds_the_pattern():
    arm64.prepare()
    seed = h.token()
    capture_cmdline = f"console={arm64.CONSOLE} stage=2 panic=-1 nr_cpus=1 marker={h.token()}"
    g = arm64.Guest("arm64-kdump-user")
    pattern = kp.add_holder(g, seed, python=arm64.GUEST_PYTHON)
    g.stage(1, h.sh_script(f"""
mark crash-size "$(cat /sys/kernel/kexec_crash_size)"
show iomem1 /proc/iomem
run load pykexec load --mode user --crash {arm64.GUEST_IMAGE} --initrd {h.GUEST_INITRD} --command-line "{capture_cmdline}" --json || exit 1
mark crash-loaded "$(cat /sys/kernel/kexec_crash_loaded)"
""" + kp.PANIC))
    g.stage(2, arm64.py_script(pattern + """
mark("cmdline", open("/proc/cmdline").read().strip())
for line in open("/proc/iomem"):
    mark("iomem2", line.rstrip("\\n"))
""" + kp.SCANNER))
    serial = g.boot(f"crashkernel={CRASHKERNEL}", memory=MEMORY, embed_initrd=True, timeout=420)

    h.expect_ok(serial, "load")
    if serial.values("crash-loaded") != ["1"]:
        serial.fail("/sys/kernel/kexec_crash_loaded is not 1 after the crash load")
    serial.expect_in_order("stage-begin 1", "holder-ready", "crashing", "stage-begin 2", "pattern",
                           "stage-end 2 rc=0")
    kp.expect_capture(serial, capture_cmdline, "cmdline")
