"""Real bzImages that bzImage64_probe refuses: memtest86+ (2.12), syslinux's memdisk (2.03), iPXE (2.07).

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


def test_ipxe_lkrn_has_no_32_bit_entry():
    path = material.ipxe_lkrn()
    assert struct.unpack_from("<I", path.read_bytes(), 0x214)[0] == 0   # code32_start, as iPXE's lkrnprefix.S
    for mode in ("user", "auto"):
        proc = run_cli("load", "--dry-run", "--mode", mode, "--machine", MACHINE, path)
        assert_clean_error(proc)
        assert b"code32_start (0x214) is 0" in proc.stderr and b"real-mode" in proc.stderr, describe(proc)
