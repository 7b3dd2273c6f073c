"""Real bzImages that bzImage64_probe refuses: memtest86+ (2.12) through the 32-bit entry; iPXE (2.07,
no 32-bit entry) and syslinux's memdisk (2.03, whose code32_start is its own, not Linux's entry)
through real mode.

The expected values are read from the images' own setup headers with struct at
boot.rst's offsets (code32_start 0x214, kernel_version 0x20e, init_size 0x260,
relocatable_kernel 0x234), not through pykexec.
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


@pytest.mark.parametrize("image, entry", [(material.memtest86_bin, "32-bit boot protocol"),
                                          (material.syslinux_memdisk, "real-mode entry"),
                                          (material.ipxe_lkrn, "real-mode entry")],
                         ids=["memtest86+", "memdisk", "ipxe"])
def test_plan_and_dry_run_agree(image, entry):
    path = image()
    data = path.read_bytes()
    plan = _json("plan", "--target", "linux-user", "--command-line", CMDLINE, path)
    dry = _json("load", "--dry-run", "--mode", "user", "--command-line", CMDLINE, path)["plan"]
    auto = _json("load", "--dry-run", "--mode", "auto", "--command-line", CMDLINE, path)["plan"]
    assert _placed(plan) == _placed(dry) == _placed(auto)
    assert (plan["entry"], plan["entry_arg"]) == (dry["entry"], dry["entry_arg"])
    assert auto["target"] == "linux-user"
    kernel = next(s for s in plan["segments"] if s["role"] == "kernel")
    relocatable = data[0x206] >= 0x05 and data[0x234]          # relocatable_kernel is 2.05+
    assert not relocatable and int(kernel["mem"], 16) == 0x100000  # where boot.rst loads the rest
    if data[0x206] >= 0x0A:  # init_size is 2.10+
        init_size = struct.unpack_from("<I", data, 0x260)[0]
        assert int(kernel["memsz"], 16) == -(-init_size // 4096) * 4096
    assert all(int(s["mem"], 16) + int(s["memsz"], 16) <= 1 << 32 for s in plan["segments"])
    assert any(entry in n for n in plan["notes"]), plan["notes"]


def test_memtest86_file_mode_refuses_with_the_kernels_reason():
    proc = run_cli("load", "--dry-run", "--mode", "file", "--machine", MACHINE, material.memtest86_bin())
    assert_clean_error(proc)
    assert b"kexec_file_load would refuse this bzImage: it cannot be loaded above 4G" in proc.stderr, describe(proc)


def test_memdisk_old_command_line_limit():
    proc = run_cli("plan", "--target", "linux-user", "--machine", MACHINE, "--command-line", "x" * 255,
                   material.syslinux_memdisk())
    assert_clean_error(proc)
    assert b"256 bytes with its NUL" in proc.stderr and b"255 before 2.06" in proc.stderr, describe(proc)


@pytest.mark.parametrize("image", [material.ipxe_lkrn, material.syslinux_memdisk], ids=["ipxe", "memdisk"])
def test_real_mode_layout(image):
    path = image()
    data = path.read_bytes()
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


def test_ipxe_has_no_32_bit_entry():
    data = material.ipxe_lkrn().read_bytes()
    assert struct.unpack_from("<I", data, 0x214)[0] == 0          # code32_start, as iPXE's lkrnprefix.S
    plan = _json("plan", "--target", "linux-user", "--command-line", CMDLINE, material.ipxe_lkrn())
    assert any("code32_start (0x214) is 0" in n for n in plan["notes"]), plan["notes"]


def _version_string(data: bytes) -> str:
    """boot.rst "kernel_version": the NUL-terminated string at the pointer plus 0x200."""
    start = struct.unpack_from("<H", data, 0x20E)[0] + 0x200
    return data[start:data.index(b"\0", start)].decode()


def test_memdisk_is_named_and_why_it_starts_in_real_mode():
    path = material.syslinux_memdisk()
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, 0x214)[0] == 0x100000   # a code32_start, but memdisk's own
    said = _version_string(data)
    assert said.startswith("MEMDISK ")
    layer = run_cli("inspect", "--json", path)
    assert layer.returncode == 0, describe(layer)
    bz = json.loads(layer.stdout)["layers"][0]
    assert (bz["version_string"], bz["program"]) == (said, "syslinux's memdisk")
    notes = _json("plan", "--target", "linux-user", "--command-line", CMDLINE, path)["notes"]
    assert any("syslinux's memdisk" in n and repr(said) in n and "real-mode setup code" in n for n in notes), notes


def test_linux_and_memtest86_are_named_from_their_version_strings():
    for path, program in ((material.bookworm_cloud_bzimage(), "Linux"), (material.memtest86_bin(), "memtest86+")):
        proc = run_cli("inspect", "--json", path)
        assert proc.returncode == 0, describe(proc)
        bz = json.loads(proc.stdout)["layers"][0]
        assert (bz["version_string"], bz["program"]) == (_version_string(path.read_bytes()), program)


def test_ipxe_lkrn_crash_load_is_refused():
    proc = run_cli("plan", "--target", "linux-user", "--crash", "--machine",
                   MACHINE.with_name("qemu-q35-1g-crashkernel256m-debian6.1.iomem"), material.ipxe_lkrn())
    assert_clean_error(proc)
    assert b"through the real-mode entry" in proc.stderr and b"not supported" in proc.stderr, describe(proc)


@pytest.mark.parametrize("bits, note", [(32, "32-bit boot protocol"), (16, "real-mode entry")])
def test_debian_bzimage64_where_it_is_asked_to_enter(bits, note):
    """kexec-tools' --entry-32bit and --real-mode: Debian's bzImage64 through its other entries.  A relocatable
    kernel goes lowest from 1 MiB at its kernel_alignment (kexec-bzImage.c); plan and load agree."""
    path = material.bookworm_cloud_bzimage()
    data = path.read_bytes()
    align = struct.unpack_from("<I", data, 0x230)[0]                 # kernel_alignment
    plan = _json("plan", "--entry", str(bits), "--command-line", CMDLINE, path)
    dry = _json("load", "--dry-run", "--entry", str(bits), "--command-line", CMDLINE, path)["plan"]
    assert plan["target"] == dry["target"] == "linux-user" and _placed(plan) == _placed(dry)
    assert any(note in n for n in plan["notes"]), plan["notes"]
    kernel = next(s for s in plan["segments"] if s["role"] == "kernel")
    assert int(kernel["mem"], 16) == -(-0x100000 // align) * align
    file_mode = run_cli("load", "--dry-run", "--mode", "file", "--entry", str(bits), "--machine", MACHINE, path)
    assert_clean_error(file_mode)
    assert f"--entry {bits}: the receivers this load may use (linux-file)".encode() in file_mode.stderr, \
        describe(file_mode)
