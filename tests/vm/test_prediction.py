"""Scenario 7: prediction equals reality.

Inside a guest running sid's 7.x cloud kernel (KEXEC_FILE_DEBUG exists since
6.8), ``pykexec load --debug-syscall`` makes the kernel log where it placed
each segment (``segment[i]: buf=... bufsz=... mem=... memsz=...``, and
``Loaded <what> at 0x...``).  On the host, ``pykexec plan --target linux-file
--machine <the guest's /proc/iomem> --json`` must predict the same segments:
the same (mem, memsz) for every one.

This test fails (never skips) when ``pykexec plan`` or ``load --debug-syscall``
is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from . import harness as h

pytestmark = pytest.mark.vm

SEGMENT = re.compile(r"segment\[(\d+)\]: buf=\S+ bufsz=0x([0-9a-f]+) mem=0x([0-9a-f]+) memsz=0x([0-9a-f]+)")
LOADED = re.compile(r"Loaded (.+?) at 0x([0-9a-f]+)")


def _sid_kernel():
    try:
        return h.material.sid_cloud_bzimage()
    except Exception as e:
        raise h.VmError(f"cannot get sid's cloud kernel: {e}") from e


def test_plan_predicts_kexec_file_load_placement(vm_material, tmp_path):
    if not h.pykexec_has("plan"):
        pytest.fail("`pykexec plan` does not exist yet: cannot compare prediction with reality")
    if "--debug-syscall" not in h.pykexec_help("load"):
        pytest.fail("`pykexec load --debug-syscall` does not exist: cannot see the kernel's placement")
    kernel = _sid_kernel()
    cmdline = "console=ttyS0 stage=2"
    g = h.Guest("prediction")
    g.stage(1, h.sh_script(f"""
mark uname "$(uname -r)"
show iomem /proc/iomem
dmesg -c >/dev/null
run load pykexec load --debug-syscall /vm/vmlinuz --initrd /vm/initrd.img --command-line "{cmdline}"
dmesg > /tmp/dmesg.txt
show dmesg /tmp/dmesg.txt
run unload pykexec unload
"""))
    serial = g.boot(kernel=kernel)
    h.expect_ok(serial, "load")

    iomem = tmp_path / "iomem"
    iomem.write_text(serial.lines("iomem") + "\n")
    dmesg = serial.lines("dmesg")
    real = sorted((int(m.group(3), 16), int(m.group(4), 16)) for m in SEGMENT.finditer(dmesg))
    if not real:
        serial.fail(f"the kernel ({serial.value('uname')}) logged no segment[] lines with KEXEC_FILE_DEBUG")

    proc = subprocess.run([sys.executable, "-m", "pykexec", "plan", "--target", "linux-file",
                           "--machine", str(iomem), "--json", "--initrd", str(g.initrd()),
                           "--command-line", cmdline, str(kernel)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        pytest.fail(f"pykexec plan exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
    plan = json.loads(proc.stdout)
    predicted = sorted((int(s["mem"], 16), int(s["memsz"], 16)) for s in plan["segments"])

    def show(segs):
        return "\n".join(f"  mem {mem:#x} memsz {size:#x}" for mem, size in segs)

    loaded = "\n".join(f"  {m.group(1)} at 0x{m.group(2)}" for m in LOADED.finditer(dmesg))
    assert predicted == real, (
        f"plan and kernel disagree\nkernel ({serial.value('uname')}):\n{show(real)}\n{loaded}\n"
        f"pykexec plan:\n{show(predicted)}\nplan JSON segments: {json.dumps(plan['segments'], indent=1)}")
