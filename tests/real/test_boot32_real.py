"""Real bzImages that bzImage64_probe refuses: memtest86+ (2.12), syslinux's memdisk (2.03), iPXE (2.07),
the last with no 32-bit entry, so through real mode.

The expected values are read from the images' own setup headers with struct at
boot.rst's offsets (code32_start 0x214, init_size 0x260), not through pykexec.
Both verbs run on one machine description, so ``plan --target linux-user`` and
``load --dry-run --mode user`` must place the same segments.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from .helpers import assert_clean_error, describe, material, run_cli

pytestmark = pytest.mark.real

MACHINE = Path(__file__).parents[1] / "data" / "machines" / "qemu-pc-1g-debian6.1.iomem"
CMDLINE = "console=ttyS0,115200"


def _placed(doc: dict) -> list:
    return [(s["role"], s["mem"], s["memsz"]) for s in doc["segments"]]


def _json(*args) -> dict:
    proc = run_cli(*args, "--machine", MACHINE, "--json", timeout=120)
    assert proc.returncode == 0, describe(proc)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("image", [material.memtest86_bin, material.syslinux_memdisk], ids=["memtest86+", "memdisk"])
def test_plan_and_dry_run_agree_on_the_32_bit_entry(image):
    path = image()
    data = path.read_bytes()
    plan = _json("plan", "--target", "linux-user", "--command-line", CMDLINE, path)
    dry = _json("load", "--dry-run", "--mode", "user", "--command-line", CMDLINE, path)["plan"]
    auto = _json("load", "--dry-run", "--mode", "auto", "--command-line", CMDLINE, path)["plan"]
    assert _placed(plan) == _placed(dry) == _placed(auto)
    assert (plan["entry"], plan["entry_arg"]) == (dry["entry"], dry["entry_arg"])
    assert auto["target"] == "linux-user"
    kernel = next(s for s in plan["segments"] if s["role"] == "kernel")
    assert int(kernel["mem"], 16) == struct.unpack_from("<I", data, 0x214)[0] == 0x100000  # not relocatable
    if data[0x206] >= 0x0A:  # init_size is 2.10+
        init_size = struct.unpack_from("<I", data, 0x260)[0]
        assert int(kernel["memsz"], 16) == -(-init_size // 4096) * 4096
    assert all(int(s["mem"], 16) + int(s["memsz"], 16) <= 1 << 32 for s in plan["segments"])
    assert any("32-bit boot protocol" in n for n in plan["notes"])


def test_memtest86_file_mode_refuses_with_the_kernels_reason():
    proc = run_cli("load", "--dry-run", "--mode", "file", "--machine", MACHINE, material.memtest86_bin())
    assert_clean_error(proc)
    assert b"kexec_file_load would refuse this bzImage: it cannot be loaded above 4G" in proc.stderr, describe(proc)


def test_memdisk_old_command_line_limit():
    proc = run_cli("plan", "--target", "linux-user", "--machine", MACHINE, "--command-line", "x" * 255,
                   material.syslinux_memdisk())
    assert_clean_error(proc)
    assert b"256 bytes with its NUL" in proc.stderr and b"255 before 2.06" in proc.stderr, describe(proc)


def test_ipxe_lkrn_through_the_real_mode_entry():
    path = material.ipxe_lkrn()
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, 0x214)[0] == 0          # code32_start, as iPXE's lkrnprefix.S
    plan = _json("plan", "--target", "linux-user", "--command-line", CMDLINE, path)
    for mode in ("user", "auto"):
        dry = _json("load", "--dry-run", "--mode", mode, "--command-line", CMDLINE, path)["plan"]
        assert _placed(dry) == _placed(plan) and dry["target"] == "linux-user"
    segs = {s["role"]: (int(s["mem"], 16), int(s["memsz"], 16)) for s in plan["segments"]}
    setup_size = (data[0x1F1] + 1) * 512
    # boot.rst "Loading the Rest of the Kernel": real-mode code and heap in 64 KiB, then the command line,
    # below 0xA0000; the purgatory above it (kexec-tools --real-mode); the rest at 0x100000
    assert segs["kernel"][0] == 0x100000 and segs["kernel"][1] >= len(data) - setup_size
    setup, pur = segs["boot-params"], segs["purgatory"]
    assert setup[1] >= 0x10000 + len(CMDLINE) + 1 and setup[0] + setup[1] <= pur[0] and sum(pur) <= 0xA0000
    assert int(plan["entry"], 16) == pur[0] and int(plan["entry_arg"], 16) == setup[0]
    assert any("real-mode entry" in n for n in plan["notes"])


def test_ipxe_lkrn_crash_load_is_refused():
    proc = run_cli("plan", "--target", "linux-user", "--crash", "--machine",
                   MACHINE.with_name("qemu-q35-1g-crashkernel256m-debian6.1.iomem"), material.ipxe_lkrn())
    assert_clean_error(proc)
    assert b"through the real-mode entry" in proc.stderr and b"not supported" in proc.stderr, describe(proc)
