"""Scenario 4: a failed load leaves the loaded kernel alone.

Load kernel A; then try a truncated bzImage, a file that is no kernel at all,
and an initrd larger than half the guest's RAM.  Each must fail with exit
code 2 and exactly one ``pykexec: error:`` line; ``pykexec status`` must still
report A loaded, and ``pykexec exec`` must boot A (its marker and token).
"""

from __future__ import annotations

import json

import pytest

from . import harness as h

pytestmark = pytest.mark.vm

MEMORY = 1024
BIG_INITRD_MB = 600  # > MEMORY / 2


def test_failed_loads_keep_loaded_kernel(vm_material):
    marker, bad, tok = h.token(), h.token(), h.token()
    good = f"console=ttyS0 stage=2 marker={marker}"
    g = h.Guest("atomic")
    h.add_token_archive(g, tok)
    g.stage(1, h.sh_script(f"""
cat /vm/initrd.img /vm/token.cpio > /tmp/stage2.img
run load pykexec load /vm/vmlinuz --initrd /tmp/stage2.img --command-line "{good}" || exit 1
head -c 1048576 /vm/vmlinuz > /tmp/truncated.img
run truncated pykexec load /tmp/truncated.img --initrd /tmp/stage2.img --command-line "console=ttyS0 stage=2 marker={bad}"
dd if=/dev/urandom of=/tmp/garbage.img bs=1024 count=256 2>/dev/null
run garbage pykexec load /tmp/garbage.img --command-line "console=ttyS0 stage=2 marker={bad}"
dd if=/dev/zero of=/tmp/big.img bs=1048576 count=0 seek={BIG_INITRD_MB} 2>/dev/null
mark big-size "$(stat -c %s /tmp/big.img)"
run bigrd pykexec load /vm/vmlinuz --initrd /tmp/big.img --command-line "console=ttyS0 stage=2 marker={bad}"
run status pykexec status --json
mark sysfs-loaded "$(cat /sys/kernel/kexec_loaded)"
run exec pykexec exec
mark exec-returned
"""))
    g.stage(2, h.STAGE2_REPORT)
    serial = g.boot(memory=MEMORY, timeout=300)

    h.expect_ok(serial, "load")
    if int(serial.value("big-size")) <= MEMORY * 2**20 // 2:
        serial.fail("the big initrd is not bigger than half the RAM")
    problems = []
    for name in ("truncated", "garbage", "bigrd"):
        try:
            h.expect_usage_error(serial, name)
        except h.VmError:
            problems.append(serial.command(name))
    status = h.status_json(serial, "status")
    if status.get("loaded") is not True:
        problems.append(f"`pykexec status --json` after the failed loads: {json.dumps(status)}")
    if serial.value("sysfs-loaded") != "1":
        problems.append("/sys/kernel/kexec_loaded is not 1 after the failed loads")
    if problems:
        serial.fail("failed loads did not behave:\n" + "\n".join(problems))
    h.expect_stage2(serial, cmdline=good, token_value=tok)
