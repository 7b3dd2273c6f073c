"""A 16K-page kernel (Debian's ``linux-image-arm64-16k``) loaded from a 4K kernel through kexec_load.

The first kernel is sid's 4K arm64 kernel; pykexec loads sid's 16k flavour
with ``--mode user`` (the Image header says 16K pages; the running kernel's
pages are 4K, and pykexec notes that the CPU must have the 16K granule,
which Linux does not let user space read).  QEMU's ``-cpu max`` implements
the 16K granule under TCG, so the second kernel boots: it reports 16384-byte
pages (``getconf PAGESIZE`` is not in busybox; the auxiliary vector's
AT_PAGESZ is read from /proc/self/auxv), the command line and the token only
its initrd carries.
"""

from __future__ import annotations

import json

import pytest

from . import arm64
from . import harness as h

pytestmark = pytest.mark.vm

MEMORY = 1024

#: the second kernel's page size: AT_PAGESZ (6) in /proc/self/auxv, as 64-bit little-endian pairs
STAGE2 = h.sh_script("""
mark cmdline "$(cat /proc/cmdline)"
if [ -f /vm/token ]; then mark token "$(cat /vm/token)"; else mark token "(no /vm/token)"; fi
mark kernel "$(uname -r)"
mark pagesize "$(od -A n -t u8 -v /proc/self/auxv | tr -s ' ' '\\n' | awk 'NF {v[n++] = $1} END {for (i = 0; i < n; i += 2) if (v[i] == 6) print v[i + 1]}')"
""")


def test_a_16k_kernel_loads_from_a_4k_kernel_and_boots():
    try:
        image16k = h.material.sid_arm64_16k_image()
    except Exception as e:
        raise h.VmError(f"sid's arm64-16k kernel: {e}") from e
    marker, tok = h.token(), h.token()
    cmdline = f"console={arm64.CONSOLE} stage=2 marker={marker}"
    g = arm64.Guest("arm64-user-16k")
    g.host_file("/vm/initrd", g.stage2_initrd(STAGE2, files={"/vm/token": tok + "\n"}))
    g.embed("/vm/Image-16k", image16k)
    g.stage(1, h.sh_script(f"""
mark kernel "$(uname -r)"
run load pykexec load --mode user /vm/Image-16k --initrd /vm/initrd --command-line "{cmdline}" --json || exit 1
run exec pykexec exec
mark exec-returned
"""))
    serial = g.boot(memory=MEMORY, cpu="max,pauth-impdef=on", timeout=300)
    h.expect_ok(serial, "load")
    notes = json.loads(serial.lines("load.out"))["plan"]["notes"]
    if not any("16K pages" in n and "4K" in n for n in notes):
        serial.fail(f"the plan does not say that the Image needs 16K pages on a 4K kernel: {notes}")
    h.expect_stage2(serial, cmdline=cmdline, token_value=tok)
    kernels = serial.values("kernel")
    if len(kernels) != 2 or not kernels[1].endswith("-16k") or kernels[0].endswith("-16k"):
        serial.fail(f"expected a 4K kernel then the 16k flavour, got {kernels}")
    if serial.value("pagesize") != "16384":
        serial.fail(f"the second kernel runs with {serial.value('pagesize')!r}-byte pages, not 16384")
