"""The arm64 purgatory: its committed bytes, its layout, its SHA-256 and what it does before the jump.

Everything runs the committed ``purgatory.bin`` under unicorn's AArch64 emulator
(``UC_CPU_ARM64_MAX``, which has the SHA-2 instructions): ``pg_sha256`` called
directly for both block functions, and the whole purgatory from ``_start`` at EL1
with the MMU off and a PL011 or 8250 mapped as MMIO.  Expected digests come from
hashlib only.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pykexec.boot import purgatory as x86_purgatory
from pykexec.boot.purgatory import arm64
from pykexec.boot.purgatory.arm64 import HEADER, PARAMS, Params, Region, Uart
from pykexec.errors import PurgatoryError

from .purgatory_arm64_host import NS8250_BASE, PL011_BASE, PL011_FR, PL011_TXFF, RAM, Emulated
from .purgatory_arm64_host import call_sha256, ce_blocks_offset, has_sha2, sha256_machine

SOURCE = Path(arm64.__file__).resolve().parent
SIZES = sorted({*range(0, 200), 255, 256, 447, 448, 511, 512, 1000, 4095, 4096, 4097, 65535, 65536})
TOOLS = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ld", "aarch64-linux-gnu-objcopy", "aarch64-linux-gnu-readelf")

KERNEL, INITRD, DTB, ENTRY = 0x40200000, 0x42000000, 0x43E00000, 0x40200000
PL011 = Uart.pl011(PL011_BASE)


@pytest.fixture(scope="module")
def image() -> arm64.Image:
    return arm64.load()


def _defines() -> dict[str, int]:
    text = (SOURCE / "purgatory.h").read_text()
    return {m[0]: int(m[1], 0) for m in re.findall(r"#define\s+(PG_\w+)\s+(0x[0-9a-f]+|\d+)\b", text)}


# -- layout, pinned -------------------------------------------------------------------------------

def test_header_fields_are_where_entry_s_puts_them(image):
    # entry.S: "b purgatory_start", a pad word, then the header as .ascii/.long lines up to .org
    text = (SOURCE / "entry.S").read_text()
    body = text[text.index("pg_header:"):text.index(".org\tPG_HEADER_SIZE")]
    items = re.findall(r"^\t\.(ascii|long)\t([^\t/\n]+)", body, re.M)
    offsets, at = [], 0x08
    for kind, value in items:
        offsets.append((at, value.strip()))
        at += 8 if kind == "ascii" else 4
    by_value = dict((v, o) for o, v in offsets)
    assert by_value['"PYKXPA64"'] == HEADER.offset("magic")
    assert by_value["PG_VERSION"] == HEADER.offset("version")
    assert by_value["PG_HEADER_SIZE"] == HEADER.offset("header_size")
    assert by_value["pg_params - _start"] == HEADER.offset("params_offset")
    assert by_value["PG_PARAMS_SIZE"] == HEADER.offset("params_size")
    assert by_value["_image_end - _start"] == HEADER.offset("image_size")
    assert by_value["_end - _start"] == HEADER.offset("mem_size")
    assert by_value["pg_stack_end - _start"] == HEADER.offset("stack_end")
    assert by_value["pg_sha256 - _start"] == HEADER.offset("sha256_entry")
    assert by_value["pg_cpu_has_sha2 - _start"] == HEADER.offset("has_sha2_entry")
    assert by_value["pg_refuse - _start"] == HEADER.offset("refuse_entry")
    assert by_value["PG_MAX_REGIONS"] == HEADER.offset("max_regions")
    # the first instruction is B (0b000101 imm26) to just after the header
    word = struct.unpack_from("<I", image.data)[0]
    assert word >> 26 == 0b000101 and (word & 0x3FFFFFF) * 4 == _defines()["PG_HEADER_SIZE"] == 0x40
    assert image.header["magic"] == b"PYKXPA64" and image.header["header_size"] == 0x40
    assert image.header["image_size"] == len(image.data)
    assert image.header["mem_size"] >= len(image.data) + _defines()["PG_STACK_SIZE"]
    assert image.header["stack_end"] <= image.header["mem_size"] and image.header["stack_end"] % 16 == 0


def test_params_layout_matches_purgatory_h():
    d = _defines()
    for name in ("flags", "nr_regions", "uart_base", "uart_type", "uart_shift", "uart_width",
                 "entry", "x0", "regions"):
        assert PARAMS.offset(name) == d[f"PG_{name.upper()}"], name
    assert arm64.REGION.size == d["PG_REGION_SIZE"]
    assert PARAMS.size == d["PG_REGIONS"] + d["PG_MAX_REGIONS"] * d["PG_REGION_SIZE"]
    assert arm64.MAX_REGIONS == d["PG_MAX_REGIONS"] and arm64.VERSION == d["PG_VERSION"]
    for flag in ("SKIP_CHECKS", "NO_SHA2", "VERBOSE"):
        assert getattr(arm64, f"PG_{flag}") == d[f"PG_{flag}"]
    for kind in ("NONE", "PL011", "8250"):
        assert getattr(arm64, f"UART_{kind}") == d[f"PG_UART_{kind}"]
    # the struct in the header, field by field (the C side checks it against the defines)
    struct_text = re.search(r"struct pg_params \{(.*?)\};", (SOURCE / "purgatory.h").read_text(), re.S)[1]
    fields = re.findall(r"^\s*(?:struct )?(\w+) (\w+)(?:\[(\w+)\])?;", struct_text, re.M)
    sizes = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "pg_region": d["PG_REGION_SIZE"]}
    at = 0
    for ctype, name, count in fields:
        align = min(sizes[ctype], 8)
        at = -(-at // align) * align
        if name in PARAMS.fields:
            assert PARAMS.offset(name) == at, name
        at += sizes[ctype] * (int(count) if count and count.isdigit() else d.get(count, 1) if count else 1)
    assert at == PARAMS.size


def test_flags_mean_what_they_mean_for_x86_64():
    assert arm64.PG_SKIP_CHECKS == x86_purgatory.PG_SKIP_CHECKS
    assert arm64.PG_NO_SHA2 == x86_purgatory.PG_NO_SHANI
    assert arm64.PG_VERBOSE == x86_purgatory.PG_VERBOSE
    assert arm64.Region is x86_purgatory.Region


def test_patched_parameter_block_reads_back(image):
    region = Region(KERNEL, 0x1, hashlib.sha256(b"x").digest(), 0x1FFF)
    params = Params(entry=ENTRY, x0=DTB, regions=(region,), verbose=True, no_sha2=True,
                    uart=Uart.ns8250(0x1C020000, shift=2, width=4))
    out = image.patched(params)
    block = out[image.params_offset:image.params_offset + PARAMS.size]
    assert PARAMS.get(block, "flags") == 0x08 | 0x04
    assert PARAMS.get(block, "nr_regions") == 1
    assert PARAMS.get(block, "entry") == ENTRY and PARAMS.get(block, "x0") == DTB
    assert (PARAMS.get(block, "uart_type"), PARAMS.get(block, "uart_shift"), PARAMS.get(block, "uart_width"),
            PARAMS.get(block, "uart_base")) == (2, 2, 4, 0x1C020000)
    assert PARAMS.get(block, "regions")[:64] == struct.pack("<QQQQ", KERNEL, 1, 0x1FFF, 0) + region.sha256
    assert out[:image.params_offset] == image.data[:image.params_offset]
    assert out[image.params_offset + PARAMS.size:] == image.data[image.params_offset + PARAMS.size:]
    assert len(out) == len(image.data)


def test_patching_refuses_what_the_purgatory_cannot_hold(image):
    with pytest.raises(PurgatoryError, match="17 regions"):
        image.patched(Params(regions=(Region(0, 1, bytes(32)),) * 17))
    with pytest.raises(PurgatoryError, match="unknown UART type 'sbi'"):
        image.patched(Params(uart=Uart("sbi", 0x1000)))
    with pytest.raises(PurgatoryError, match="width 3"):
        image.patched(Params(uart=Uart.ns8250(0x1000, width=3)))
    with pytest.raises(PurgatoryError, match="base must be non-zero"):
        image.patched(Params(uart=Uart.pl011(0)))
    with pytest.raises(PurgatoryError, match="entry 0x10000000000000000"):
        image.patched(Params(entry=1 << 64))


def test_a_foreign_image_is_refused(image):
    with pytest.raises(PurgatoryError, match="PYKXPA64"):
        arm64.parse(b"\0" * 128)
    with pytest.raises(PurgatoryError, match="PYKXPA64"):
        arm64.parse(x86_purgatory.load().data)
    with pytest.raises(PurgatoryError, match="PYKXPURG"):
        x86_purgatory.parse(image.data)
    stale = bytearray(image.data)
    struct.pack_into("<I", stale, HEADER.offset("version"), 99)
    with pytest.raises(PurgatoryError, match=r"version 99 \(expected 1\)"):
        arm64.parse(bytes(stale))


def test_size_for_the_planner(image):
    size = image.size()
    assert size.entry_offset == 0 and size.bufsz == len(image.data) and size.align == 4096
    assert size.memsz % 4096 == 0 and size.memsz >= image.mem_size
    assert "arm64" in size.measured_from
    assert type(size).__module__ == "pykexec.plan.common"


# -- the build is reproducible -------------------------------------------------------------------

def _toolchain() -> str:
    missing = [t for t in TOOLS if not shutil.which(t)]
    assert not missing, f"{', '.join(missing)} missing: scripts/setup installs gcc-aarch64-linux-gnu"
    first = {t: subprocess.run([t, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
             for t in TOOLS[:3]}
    return "".join(f"{k}: {first[t]}\n" for k, t in zip(("gcc", "ld", "objcopy"), TOOLS))


def test_build_sh_rebuilds_the_committed_bytes(tmp_path):
    found, recorded = _toolchain(), (SOURCE / "TOOLCHAIN").read_text()
    if found != recorded:
        pytest.skip(f"the arm64 purgatory.bin was built with\n{recorded}this host has\n{found}"
                    "bit-for-bit equality is only promised for the same toolchain")
    subprocess.run(["sh", str(SOURCE / "build.sh"), str(tmp_path)], check=True, capture_output=True)
    assert (tmp_path / "purgatory.bin").read_bytes() == (SOURCE / "purgatory.bin").read_bytes()
    assert (tmp_path / "TOOLCHAIN").read_text() == recorded


def test_build_sh_refuses_code_that_depends_on_its_address(tmp_path):
    _toolchain()
    src = tmp_path / "src"
    shutil.copytree(SOURCE, src, ignore=shutil.ignore_patterns("__pycache__", "*.bin", "*.py"))
    with open(src / "purgatory.c", "a") as f:      # an absolute address, resolved at link time
        f.write("\nconst void *const pg_where = &pg_params;\n")
    run = subprocess.run(["sh", str(src / "build.sh"), str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode != 0
    assert "not position independent" in run.stderr or "relocations" in run.stderr
    assert not (tmp_path / "out" / "purgatory.bin").exists()


# -- SHA-256, both block functions ----------------------------------------------------------------

@pytest.fixture(scope="module")
def machine(image):
    return sha256_machine(image)


def test_the_emulated_cpu_has_the_sha2_instructions(image, machine):
    assert has_sha2(image, machine)       # ID_AA64ISAR0_EL1.SHA2 of UC_CPU_ARM64_MAX is 2


@pytest.mark.parametrize("flags", [0, arm64.PG_NO_SHA2], ids=["sha2-instructions", "portable"])
def test_sha256_matches_hashlib_at_every_block_boundary(image, machine, flags):
    rng = random.Random(1)
    for size in SIZES:
        data = rng.randbytes(size)
        for misalign in (0, size % 8 or 3):
            got = call_sha256(image, data, flags=flags, misalign=misalign, uc=machine)
            assert got == hashlib.sha256(data).digest(), (size, misalign)


@pytest.mark.parametrize("flags", [0, arm64.PG_NO_SHA2], ids=["sha2-instructions", "portable"])
def test_sha256_of_a_megabyte(image, machine, flags):
    data = random.Random(2).randbytes((1 << 20) + 13)
    assert call_sha256(image, data, flags=flags, uc=machine) == hashlib.sha256(data).digest()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000), st.booleans(), st.integers(0, 15))
def test_sha256_property(image, machine, data, portable, misalign):
    got = call_sha256(image, data, flags=arm64.PG_NO_SHA2 if portable else 0, misalign=misalign, uc=machine)
    assert got == hashlib.sha256(data).digest()


# -- the whole purgatory, emulated ----------------------------------------------------------------

def _emulate(image, params: Params, memory: dict[int, bytes], **kw):
    emu = Emulated(image.patched(params), uart=params.uart, **kw)
    for addr, data in memory.items():
        emu.write(addr, data)
    return emu, emu.run(params.entry)


def _boot_state_ok(out, x0: int) -> None:
    """Documentation/arch/arm64/booting.rst: x0 = DTB, x1 = x2 = x3 = 0, DAIF masked, MMU and
    D-cache off; and what entry.S changed (CPACR_EL1.FPEN) is back as unicorn started it."""
    assert (out.regs["x0"], out.regs["x1"], out.regs["x2"], out.regs["x3"]) == (x0, 0, 0, 0)
    assert out.regs["pstate"] & 0x3C0 == 0x3C0              # D, A, I, F masked
    assert out.regs["pstate"] & 0xF == 0x5                  # still EL1h
    assert out.regs["sctlr"] & 0b101 == 0                   # SCTLR_EL1.M and .C off
    assert out.regs["sctlr"] == 0xC50838                    # nothing turned on: as unicorn resets it
    assert out.regs["cpacr"] == 0
    assert out.stray_writes == []                           # wrote nothing but its own memory (stack)


@pytest.mark.parametrize("no_sha2", [False, True], ids=["sha2-instructions", "portable"])
def test_good_segments_reach_the_kernel_with_x0_the_dtb(image, no_sha2):
    rng = random.Random(3)
    kernel, initrd, dtb = rng.randbytes(70000), rng.randbytes(12345), rng.randbytes(3000)
    regions = (Region.of(KERNEL, kernel, 0x12000), Region.of(INITRD, initrd, 0x4000), Region.of(DTB, dtb, 0x1000))
    params = Params(entry=ENTRY, x0=DTB, regions=regions, verbose=True, no_sha2=no_sha2, uart=PL011)
    _, out = _emulate(image, params, {KERNEL: kernel, INITRD: initrd, DTB: dtb})
    assert out.stopped_at == ENTRY and not out.refused
    _boot_state_ok(out, DTB)
    assert ("sha256 portable" if no_sha2 else "sha256 with the SHA-2 instructions") in out.serial
    assert "03 segments verified (0x0000000000017000 bytes" in out.serial
    assert f"entering 0x{ENTRY:016x} with x0 0x{DTB:016x}\r\n" in out.serial


@pytest.mark.parametrize("base", [0x40000000 + 0x7F000, 0x43FF0000 - 0x8000, 0x41230000])
def test_it_runs_wherever_it_is_loaded(image, base):
    kernel = random.Random(4).randbytes(5000)
    params = Params(entry=KERNEL + 0x40, x0=DTB, regions=(Region.of(KERNEL, kernel, 0x2000),), uart=PL011)
    _, out = _emulate(image, params, {KERNEL: kernel}, base=base)
    assert out.stopped_at == KERNEL + 0x40 and out.serial == ""
    _boot_state_ok(out, DTB)


@pytest.mark.parametrize("no_sha2", [False, True], ids=["sha2-instructions", "portable"])
def test_a_corrupted_segment_stops_with_a_message_on_the_pl011(image, no_sha2):
    rng = random.Random(5)
    kernel, initrd = rng.randbytes(5000), rng.randbytes(777)
    regions = (Region.of(KERNEL, kernel, 0x2000), Region.of(INITRD + 3, initrd, 0x1000))
    bad = bytearray(initrd)
    bad[700] ^= 0x10
    params = Params(entry=ENTRY, x0=DTB, regions=regions, no_sha2=no_sha2, uart=PL011)
    emu, out = _emulate(image, params, {KERNEL: kernel, INITRD + 3: bytes(bad)})
    assert out.refused and out.stopped_at != ENTRY
    assert (f"pykexec purgatory: segment 01 [0x{INITRD + 3:016x}+0x{0x1000:016x}) SHA-256 mismatch\r\n"
            f"  expected {hashlib.sha256(initrd).hexdigest()}\r\n"
            f"  found    {hashlib.sha256(bad).hexdigest()}\r\n") in out.serial
    assert "segment 00" not in out.serial
    assert out.serial.endswith("verification failed\r\npykexec purgatory: refusing to boot\r\n")
    assert out.regs["pstate"] & 0x3C0 == 0x3C0
    # the PL011 is driven as the kernel's earlycon does: 32-bit accesses, DR only when FR.TXFF is clear
    assert {(kind, off, size) for kind, off, size, _ in emu.uart.accesses} == {("r", PL011_FR, 4), ("w", 0, 4)}
    last_fr = None
    for kind, off, _, value in emu.uart.accesses:
        if kind == "r":
            last_fr = value
        else:
            assert last_fr is not None and not last_fr & PL011_TXFF
            last_fr = None


@pytest.mark.parametrize("shift,width", [(0, 1), (2, 4), (1, 2)])
def test_a_corrupted_segment_stops_with_a_message_on_an_8250(image, shift, width):
    kernel = random.Random(6).randbytes(4096)
    regions = (Region.of(KERNEL, kernel, 0x1000),)
    params = Params(entry=ENTRY, x0=DTB, regions=regions, uart=Uart.ns8250(NS8250_BASE, shift=shift, width=width))
    emu, out = _emulate(image, params, {KERNEL: kernel[:-1] + bytes([kernel[-1] ^ 0x80])})
    assert out.refused and out.stopped_at != ENTRY
    assert f"segment 00 [0x{KERNEL:016x}+0x{0x1000:016x}) SHA-256 mismatch" in out.serial
    assert hashlib.sha256(kernel).hexdigest() in out.serial
    assert {(kind, off, size) for kind, off, size, _ in emu.uart.accesses} == {("r", 5 << shift, width),
                                                                              ("w", 0, width)}


def test_every_bad_segment_is_named(image):
    a, b, c = b"a" * 100, b"b" * 200, b"c" * 300
    regions = tuple(Region.of(KERNEL + i * 0x10000, d, 0x1000) for i, d in enumerate((a, b, c)))
    params = Params(entry=ENTRY, regions=regions, uart=PL011)
    _, out = _emulate(image, params, {KERNEL: a, KERNEL + 0x10000: b"x" + b[1:], KERNEL + 0x20000: c[:-1] + b"x"})
    assert out.refused
    assert "segment 00" not in out.serial and "segment 01 " in out.serial and "segment 02 " in out.serial


def test_padding_up_to_memsz_must_stay_zero(image):
    regions = (Region.of(KERNEL, b"abc", 0x10000),)
    assert regions[0] == Region(KERNEL, 3, hashlib.sha256(b"abc").digest(), 0x10000 - 3)
    params = Params(entry=ENTRY, x0=DTB, regions=regions, uart=PL011)
    for at in (3, 4, 7, 8, 0x1234, 0xFFFF):
        _, out = _emulate(image, params, {KERNEL: b"abc", KERNEL + at: b"\x01"})
        assert out.refused, at
        assert f"non-zero padding at 0x{KERNEL + at:016x}" in out.serial
    _, out = _emulate(image, params, {KERNEL: b"abc", KERNEL + 0x10000: b"\x01"})
    assert out.stopped_at == ENTRY                 # the byte after memsz is not the segment's


def test_skip_checks_jumps_without_hashing(image):
    from unicorn import UC_HOOK_MEM_READ

    regions = (Region(KERNEL, 0x1000, bytes(32), 0x1000),)     # a digest that cannot match
    params = Params(entry=ENTRY, x0=DTB, regions=regions, skip_checks=True, verbose=True, uart=PL011)
    emu = Emulated(image.patched(params), uart=PL011)
    emu.write(KERNEL, b"\xff" * 0x2000)
    reads = []
    emu.uc.hook_add(UC_HOOK_MEM_READ, lambda uc, acc, addr, size, value, user: reads.append(addr),
                    None, KERNEL, KERNEL + 0x2000 - 1)
    out = emu.run(ENTRY)
    assert out.stopped_at == ENTRY and "checks skipped" in out.serial
    assert reads == []                             # not one byte of the segment was read
    _boot_state_ok(out, DTB)
    # the same parameters without skip_checks: the segment is read and refused
    emu = Emulated(image.patched(Params(entry=ENTRY, regions=regions, uart=PL011)), uart=PL011)
    assert emu.run(ENTRY).refused


def test_fp_simd_is_allowed_when_the_sha2_code_runs(image):
    """Unicorn does not trap FP/SIMD when CPACR_EL1.FPEN says so, a CPU does: look at FPEN each
    time the SHA-2 block function is entered."""
    from unicorn import UC_HOOK_CODE
    from unicorn import arm64_const as a

    base = 0x43000000
    data = b"\x5a" * 200
    params = Params(entry=ENTRY, x0=DTB, regions=(Region.of(KERNEL, data, 0x1000),), uart=PL011)
    emu = Emulated(image.patched(params), base=base, uart=PL011)
    emu.write(KERNEL, data)
    seen = []
    at = base + ce_blocks_offset(image)
    emu.uc.hook_add(UC_HOOK_CODE, lambda uc, addr, size, user: seen.append(uc.reg_read(a.UC_ARM64_REG_CPACR_EL1)),
                    None, at, at)
    out = emu.run(ENTRY)
    assert out.stopped_at == ENTRY
    assert len(seen) == 2                          # the whole blocks, then the tail
    assert all((v >> 20) & 3 == 3 for v in seen)   # FPEN = 0b11: no trap at EL1 or EL0
    assert out.regs["cpacr"] == 0                  # and as it was when the kernel is entered


def test_a_cpu_without_sha2_instructions_gets_the_portable_code(image):
    """ID_AA64ISAR0_EL1.SHA2 = 0: the SHA-2 block function must never run (it would be an
    undefined instruction), and the digests still match."""
    from unicorn import UC_HOOK_CODE

    rng = random.Random(8)
    kernel, dtb = rng.randbytes(9000), rng.randbytes(700)
    regions = (Region.of(KERNEL, kernel, 0x3000), Region.of(DTB, dtb, 0x1000))
    params = Params(entry=ENTRY, x0=DTB, regions=regions, verbose=True, uart=PL011)
    emu = Emulated(image.patched(params), uart=PL011)
    emu.write(KERNEL, kernel)
    emu.write(DTB, dtb)
    assert emu.hide_sha2() >= 1
    entered = []
    at = emu.base + ce_blocks_offset(image)
    emu.uc.hook_add(UC_HOOK_CODE, lambda uc, addr, size, user: entered.append(addr), None, at, at)
    out = emu.run(ENTRY)
    assert out.stopped_at == ENTRY and "sha256 portable" in out.serial
    assert entered == []
    _boot_state_ok(out, DTB)
    # and a corrupted segment is still caught on that CPU
    emu = Emulated(image.patched(params), uart=PL011)
    emu.write(KERNEL, kernel)
    emu.write(DTB, dtb[:-1] + b"?")
    emu.hide_sha2()
    out = emu.run(ENTRY)
    assert out.refused and f"found    {hashlib.sha256(dtb[:-1] + b'?').hexdigest()}" in out.serial


def test_silent_unless_verbose_or_refusing(image):
    params = Params(entry=ENTRY, x0=DTB, regions=(Region.of(KERNEL, b"k", 0x1000),), uart=PL011)
    _, out = _emulate(image, params, {KERNEL: b"k"})
    assert out.stopped_at == ENTRY and out.serial == ""


def test_no_uart_means_no_output_but_still_refusal(image):
    params = Params(entry=ENTRY, regions=(Region(KERNEL, 1, bytes(32)),))
    emu, out = _emulate(image, params, {})
    assert out.refused and out.serial == "" and emu.uart.accesses == []


def test_a_corrupt_region_count_is_refused(image):
    data = bytearray(image.patched(Params(entry=ENTRY, uart=PL011)))
    struct.pack_into("<I", data, image.params_offset + PARAMS.offset("nr_regions"), 17)
    emu = Emulated(bytes(data), uart=PL011)
    out = emu.run(ENTRY)
    assert out.refused and "corrupt parameters" in out.serial


@pytest.mark.parametrize("no_sha2", [False, True], ids=["sha2-instructions", "portable"])
def test_no_unaligned_access_to_memory(image, no_sha2):
    """With the MMU off every access is Device memory, where an unaligned one faults.  Unicorn
    does not fault, so every RAM access is checked here, on segments at odd addresses."""
    from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
    from unicorn.arm64_const import UC_ARM64_REG_PC

    rng = random.Random(7)
    kernel, odd = rng.randbytes(3000), rng.randbytes(1001)
    regions = (Region.of(KERNEL, kernel, 0x1000), Region.of(INITRD + 5, odd, 0x1003))
    params = Params(entry=ENTRY, x0=DTB, regions=regions, no_sha2=no_sha2, verbose=True, uart=PL011)
    emu = Emulated(image.patched(params), uart=PL011)
    emu.write(KERNEL, kernel)
    emu.write(INITRD + 5, odd)
    unaligned, simd = [], []

    def check(uc, access, addr, size, value, user):
        if addr % size == 0:
            return
        insn = struct.unpack("<I", uc.mem_read(uc.reg_read(UC_ARM64_REG_PC), 4))[0]
        # LD1 {Vt.16B-...} (multiple structures, post-index): byte elements, which need no
        # alignment even in Device memory; unicorn reports them as 8-byte reads
        if insn & 0xBFE00000 == 0x0CC00000 and (insn >> 10) & 3 == 0:
            simd.append(addr)
        else:
            unaligned.append((hex(addr), size, hex(insn)))

    emu.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, check, None, RAM, RAM + (64 << 20) - 1)
    out = emu.run(ENTRY)
    assert out.stopped_at == ENTRY, out.serial
    assert unaligned == []
    assert bool(simd) == (not no_sha2)      # the SHA-2 path did read the odd segment with LD1

