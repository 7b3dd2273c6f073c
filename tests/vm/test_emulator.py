"""Scenario: `pykexec load --via-emulator` of a UKI boots its kernel (issue 6).

The UKI is bookworm's systemd-stub 252 around the guest's own kernel, with a
``.cmdline`` holding a fresh marker and an ``.initrd`` that is a small stage-2
userspace followed by the token archive.  Stage 1 runs ``pykexec load
--via-emulator`` on it: the guest's copy of the host's Python runs
systemd-stub under unicorn (added to this boot only) until the stub starts
``.linux``, and loads what it captured there (``efi.emulate_for_load``).
Stage 1 must report the emulator (the load's layers start with ``emulator``,
and its log says where the emulation stopped); stage 2 must run with the
UKI's command line and see the token, which only the UKI's initrd carries.

Why the small initrd: systemd-stub 252 copies its initrd byte by byte in its
LoadFile2 (about 5 instructions a byte under emulation, 4 s natively for the
harness's 43 MB initramfs, many times that under TCG).  Stage 2 needs only
busybox, /init and its script.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

from . import harness as h

pytestmark = pytest.mark.vm

#: the emulator's optional dependency, copied into this scenario's guest only
EMULATOR_DIST = "unicorn"


def _emulator_files() -> list[Path]:
    """unicorn's installed files (its shared library included), at their host paths."""
    try:
        dist = metadata.distribution(EMULATOR_DIST)
    except metadata.PackageNotFoundError as e:
        raise h.VmError(f"{EMULATOR_DIST} (pykexec's emulator extra) is not installed in "
                        f"{sys.prefix}") from e
    out = []
    for f in dist.files or []:
        p = Path(os.path.normpath(dist.locate_file(f)))
        if ".." in f.parts or not p.is_file() or p.suffix == ".a":
            continue            # console scripts, the static library
        if p.parent.name == "__pycache__" and sys.implementation.cache_tag not in p.name:
            continue
        out.append(p)
    if not any(p.name.startswith("libunicorn.so") for p in out):
        raise h.VmError(f"{EMULATOR_DIST} has no libunicorn.so among its files")
    return out


def test_uki_via_emulator_boots(vm_material):
    material = h.material
    marker, tok = h.token(), h.token()
    cmdline = f"console=ttyS0 stage=2 marker={marker}"
    try:
        stub = material.systemd_stub("bookworm", "x64", "linux")
    except Exception as e:  # material raises RuntimeError with the reason
        raise h.VmError(f"cannot get bookworm's linuxx64.efi.stub: {e}") from e

    g = h.Guest("uki-via-emulator")
    g.stage(1, h.sh_script("""
run load pykexec load --debug --via-emulator /vm/test.efi --json || exit 1
mark sysfs-loaded "$(cat /sys/kernel/kexec_loaded)"
run exec pykexec exec
mark exec-returned
"""))
    token = g.build_archive("token.cpio", {"/vm/token": tok + "\n"})
    initrd = h.concat_file(g.dir / "uki-initrd.img",
                           [h.busybox_initramfs(g, 2, h.STAGE2_REPORT), token])
    try:
        uki = material.build_uki(g.dir / "test.efi", linux=g.kernel, stub=stub, cmdline=cmdline,
                                 initrd=initrd)
    except Exception as e:
        raise h.VmError(f"cannot build the UKI with ukify: {e}") from e
    g.embed("/vm/test.efi", uki)
    for f in _emulator_files():
        g.embed(os.fspath(f), f)
    serial = g.boot(memory=1536, embed_initrd=False, timeout=300)

    h.expect_ok(serial, "load")
    out = serial.values("load.out")
    if len(out) != 1:
        serial.fail(f"`pykexec load --json` printed {len(out)} lines, not one: {out}")
    result = json.loads(out[0])
    # the emulator ran, and it is its capture that was loaded
    if result["layers"] != ["emulator", "bzimage"]:
        serial.fail(f"the load's layers are {result['layers']}, not the emulator's capture "
                    "of a bzImage")
    stopped = [line for line in serial.values("load.err") if "EFI emulator: stopped at" in line]
    if len(stopped) != 1 or "stopped at kernel-stub: entry of the kernel's EFI stub: StartImage" \
            not in stopped[0]:
        serial.fail(f"the load's log does not say the emulator stopped where systemd-stub 252 "
                    f"starts .linux: {stopped}")
    if result["cmdline"] != cmdline or result["syscall"] != "kexec_file_load" \
            or result["initrd_size"] < initrd.stat().st_size:
        serial.fail(f"the load is not the UKI's: {result}")
    print(f"[vm] uki-via-emulator: load took {serial.value('load.secs')} s in the guest; "
          f"{stopped[0]}", file=sys.stderr)
    if serial.value("sysfs-loaded") != "1":
        serial.fail("/sys/kernel/kexec_loaded is not 1 after `pykexec load --via-emulator`")
    h.expect_stage2(serial, cmdline=cmdline, token_value=tok)
