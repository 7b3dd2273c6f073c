"""Scenario 6: the ``kexec`` shim (``pykexec kexec``) with kexec-tools' flags.

``kexec -s -l IMAGE --initrd F --reuse-cmdline`` then ``kexec -e``: the
second kernel's command line must be the first one's without ``BOOT_IMAGE=``
and ``initrd=``.  Stage 2 is told by a /vm/stage file in its initrd (the
command line is reused as is).  ``kexec -S`` reports the state before and
after the load.
"""

from __future__ import annotations

import pytest

from . import harness as h

pytestmark = pytest.mark.vm


def test_kexec_shim_reuse_cmdline(vm_material):
    marker, tok = h.token(), h.token()
    g = h.Guest("kexec-shim")
    h.add_token_archive(g, tok, extra={"/vm/stage": "2\n"})
    g.stage(1, h.sh_script("""
cat /vm/initrd.img /vm/token.cpio > /tmp/stage2.img
mark which "$(command -v kexec)"
run S0 kexec -S
run load kexec -s -l /vm/vmlinuz --initrd /tmp/stage2.img --reuse-cmdline
run S3 kexec -S
mark cmdline1 "$(cat /proc/cmdline)"
run exec kexec -e
mark exec-returned
"""))
    g.stage(2, h.STAGE2_REPORT)
    extra = f"BOOT_IMAGE=/boot/vmlinuz-pykexec initrd=/boot/initrd.img-pykexec marker={marker}"
    serial = g.boot(extra, timeout=240)

    if serial.value("which") != "/usr/local/sbin/kexec":
        serial.fail(f"`kexec` on the guest PATH is {serial.value('which')!r}, not the shim")
    for name, want in (("S0", 1), ("load", 0), ("S3", 0)):
        if serial.values(name + ".rc") != [str(want)]:
            serial.fail(f"expected exit {want}:\n{serial.command(name)}")
    first = serial.value("cmdline1").split()
    if not {f"marker={marker}", "BOOT_IMAGE=/boot/vmlinuz-pykexec"} <= set(first):
        serial.fail(f"stage 1 cmdline lacks what the test put there: {first}")
    expected = " ".join(w for w in first if not w.startswith(("BOOT_IMAGE=", "initrd=")))
    h.expect_stage2(serial, cmdline=expected, token_value=tok)
