"""Scenario 5: ``pykexec status --json`` and ``pykexec unload [--crash]`` for the
default and the crash image, checked against /sys/kernel/kexec_* at each step; and
the shim's ``kexec --print-ckr-size`` against the ``crashkernel=`` the guest booted with.
"""

from __future__ import annotations

import pytest

from . import harness as h

pytestmark = pytest.mark.vm

CRASH_MB = 192

STEPS = [  # (step, command run before it, expected loaded, expected crash_loaded)
    ("s0", None, False, False),
    ("s1", "pykexec load /vm/vmlinuz --initrd /vm/small.cpio --command-line 'console=ttyS0 stage=2'", True, False),
    ("s2", "pykexec load --crash /vm/vmlinuz --initrd /vm/small.cpio --command-line 'console=ttyS0 stage=2'",
     True, True),
    ("s3", "pykexec unload", False, True),
    ("s4", "pykexec unload --crash", False, False),
]


def test_status_and_unload(vm_material):
    g = h.Guest("status-unload")
    g.archive("/vm/small.cpio", {"/vm/small": "small initrd\n"})
    lines = []
    for step, cmd, _, _ in STEPS:
        if cmd:
            lines.append(f"run {step}-cmd {cmd}")
        lines.append(f"run {step} pykexec status --json")
        lines.append(f'mark {step}-sysfs "$(cat /sys/kernel/kexec_loaded) $(cat /sys/kernel/kexec_crash_loaded) '
                     f'$(cat /sys/kernel/kexec_crash_size)"')
    lines.append("run ckr kexec --print-ckr-size")
    g.stage(1, h.sh_script("\n".join(lines) + "\n"))
    serial = g.boot(f"crashkernel={CRASH_MB}M", memory=1024, timeout=300)

    problems = []
    for step, cmd, loaded, crash_loaded in STEPS:
        if cmd and serial.values(f"{step}-cmd.rc") != ["0"]:
            problems.append(f"{cmd!r} failed:\n{serial.command(step + '-cmd')}")
            continue
        sys_loaded, sys_crash, sys_size = serial.value(f"{step}-sysfs").split()
        try:
            st = h.status_json(serial, step)
        except h.VmError as e:
            problems.append(str(e).split("\n---")[0])
            continue
        want = {"loaded": loaded, "crash_loaded": crash_loaded, "crash_size": CRASH_MB << 20}
        got = {k: st.get(k) for k in want}
        sysfs = {"loaded": sys_loaded == "1", "crash_loaded": sys_crash == "1", "crash_size": int(sys_size)}
        if got != want or sysfs != want:
            problems.append(f"after {cmd or 'boot'}: status {got}, sysfs {sysfs}, expected {want}")
    if serial.values("ckr.out") != [str(CRASH_MB << 20)]:
        problems.append(f"kexec --print-ckr-size with crashkernel={CRASH_MB}M:\n{serial.command('ckr')}")
    if problems:
        serial.fail("\n".join(problems))
