"""Scenario 1: load the bookworm cloud bzImage with an initrd and a command line, exec it.

Stage 2 must see exactly the command line given, and a token file that exists
only in the initrd handed to the second kernel.
"""

from __future__ import annotations

import pytest

from . import harness as h

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("mode", ["file", "user"])
def test_bzimage_load_exec(vm_material, mode):
    marker, tok = h.token(), h.token()
    cmdline = f"console=ttyS0 stage=2 marker={marker}"
    g = h.Guest(f"bzimage-{mode}")
    h.add_token_archive(g, tok)
    g.stage(1, h.sh_script(f"""
cat /vm/initrd.img /vm/token.cpio > /tmp/stage2.img
run load pykexec load --mode {mode} /vm/vmlinuz --initrd /tmp/stage2.img --command-line "{cmdline}" || exit 1
mark sysfs-loaded "$(cat /sys/kernel/kexec_loaded)"
run exec pykexec exec
mark exec-returned
"""))
    g.stage(2, h.STAGE2_REPORT)
    serial = g.boot()
    h.expect_ok(serial, "load")
    if serial.value("sysfs-loaded") != "1":
        serial.fail("/sys/kernel/kexec_loaded is not 1 after `pykexec load`")
    h.expect_stage2(serial, cmdline=cmdline, token_value=tok)
