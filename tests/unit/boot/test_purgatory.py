"""The purgatory: its committed bytes, its layout, its SHA-256 and what it does before the jump.

Host-side checks run the committed ``purgatory.bin`` itself: natively through
ctypes for the SHA-256 (SHA-NI and portable paths), and whole under unicorn
for entry, refusal, backup copy and the 32-bit Multiboot hand-off.
"""

from __future__ import annotations

import hashlib
import os
import struct
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pykexec.boot import purgatory
from pykexec.boot.purgatory import HEADER, PARAMS, Params, RealMode, Region

from .purgatory_host import Emulated, NativeSha256

SOURCE = Path(purgatory.__file__).resolve().parent
SIZES = sorted({*range(0, 200), 255, 256, 447, 448, 511, 512, 1000, 4095, 4096, 4097, 65535, 65536, 1 << 20})


# -- layout, pinned -------------------------------------------------------------------------------

def test_header_fields_are_where_entry_s_puts_them(image):
    assert {n: f.offset for n, f in HEADER.fields.items()} == {
        "jump": 0x00, "magic": 0x08, "version": 0x10, "header_size": 0x14, "params_offset": 0x18,
        "params_size": 0x1C, "image_size": 0x20, "mem_size": 0x24, "stack_end": 0x28,
        "sha256_entry": 0x2C, "has_shani_entry": 0x30, "refuse_entry": 0x34, "max_regions": 0x38}
    assert image.data[:1] == b"\xe9"                   # jmp rel32 to purgatory_start
    assert image.header["magic"] == b"PYKXPURG"
    assert image.header["header_size"] == 0x40
    assert image.header["params_size"] == PARAMS.size == 0xA8 + 16 * 0x40 + 16   # regions, then pg_real_mode
    assert image.header["mem_size"] >= len(image.data) + 0x4000   # the 16 KiB stack is in memory only


def test_params_layout_matches_purgatory_h():
    header = (SOURCE / "purgatory.h").read_text()
    defines = {m[0]: int(m[1], 16) for m in re.findall(r"#define\s+(PG_\w+)\s+(0x[0-9a-f]+)", header)}
    assert PARAMS.offset("flags") == defines["PG_FLAGS"]
    assert PARAMS.offset("serial_port") == defines["PG_SERIAL_PORT"]
    assert PARAMS.offset("nr_regions") == defines["PG_NR_REGIONS"]
    assert PARAMS.offset("backup_src") == defines["PG_BACKUP_SRC"]
    assert PARAMS.offset("backup_size") == defines["PG_BACKUP_SIZE"]
    assert PARAMS.offset("regions") == defines["PG_REGIONS"]
    for reg in ("rax", "rbx", "rsi", "rsp", "rip", "r15"):
        assert PARAMS.offset(reg) == defines["PG_REGS"] + defines[f"PG_{reg.upper()}"]
    assert purgatory.REGION.size == defines["PG_REGION_SIZE"]
    for name in purgatory.REAL_MODE_FIELDS:
        assert PARAMS.offset(name) == defines["PG_REAL_MODE"] + defines[f"PG_RM_{name.upper()}"]
    for flag in ("SKIP_CHECKS", "ENTRY32", "ENTRY16", "NO_SHANI", "VERBOSE", "RESET_ON_FAILURE"):
        assert getattr(purgatory, f"PG_{flag}") == defines[f"PG_{flag}"]


def test_patched_parameter_block_reads_back(image):
    region = Region(0x1000000, 0x1, hashlib.sha256(b"x").digest(), 0x1FFF)
    params = Params(regs={"rsi": 0x9000, "rip": 0x1000200}, regions=(region,), verbose=True,
                    backup_src=0x1000, backup_dst=0x2F000000, backup_size=0x9EC00)
    out = image.patched(params)
    block = out[image.params_offset:image.params_offset + PARAMS.size]
    assert PARAMS.get(block, "flags") == purgatory.PG_VERBOSE
    assert PARAMS.get(block, "serial_port") == 0x3F8
    assert PARAMS.get(block, "nr_regions") == 1
    assert PARAMS.get(block, "rsi") == 0x9000 and PARAMS.get(block, "rip") == 0x1000200
    assert PARAMS.get(block, "backup_dst") == 0x2F000000
    assert PARAMS.get(block, "regions")[:64] == (struct.pack("<QQQQ", 0x1000000, 1, 0x1FFF, 0) + region.sha256)
    assert out[:image.params_offset] == image.data[:image.params_offset]


def test_patching_refuses_what_the_purgatory_cannot_hold(image):
    with pytest.raises(purgatory.PurgatoryError, match="17 regions"):
        image.patched(Params(regions=(Region(0, 1, bytes(32)),) * 17))
    with pytest.raises(purgatory.PurgatoryError, match="unknown registers"):
        image.patched(Params(regs={"eip": 1}))
    with pytest.raises(purgatory.PurgatoryError, match="32-bit"):
        image.patched(Params(regs={"rip": 1 << 32}, entry32=True))


def test_a_foreign_image_is_refused():
    with pytest.raises(purgatory.PurgatoryError, match="PYKXPURG"):
        purgatory.parse(b"\0" * 128)


def test_size_for_the_planner(image):
    size = image.size()
    assert size.entry_offset == 0 and size.bufsz == len(image.data)
    assert size.memsz % 4096 == 0 and size.memsz >= image.mem_size


# -- the build is reproducible -------------------------------------------------------------------

def _toolchain() -> str | None:
    if not all(shutil.which(t) for t in ("gcc", "ld", "objcopy", "readelf")):
        return None
    lines = [f"gcc: {subprocess.run(['gcc', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}",
             f"ld: {subprocess.run(['ld', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}",
             f"objcopy: {subprocess.run(['objcopy', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}"]
    return "\n".join(lines) + "\n"


def test_build_sh_rebuilds_the_committed_bytes(tmp_path):
    found = _toolchain()
    recorded = (SOURCE / "TOOLCHAIN").read_text()
    if found is None:
        pytest.skip("gcc/binutils not installed (apt-get install gcc binutils)")
    if found != recorded:
        pytest.skip(f"purgatory.bin was built with\n{recorded}this host has\n{found}"
                    "bit-for-bit equality is only promised for the same toolchain")
    subprocess.run(["sh", str(SOURCE / "build.sh"), str(tmp_path)], check=True, capture_output=True)
    assert (tmp_path / "purgatory.bin").read_bytes() == (SOURCE / "purgatory.bin").read_bytes()
    assert (tmp_path / "TOOLCHAIN").read_text() == recorded


# -- SHA-256, natively ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def native():
    return NativeSha256(purgatory.load())


@pytest.mark.parametrize("portable", [False, True], ids=["dispatch", "portable"])
def test_sha256_matches_hashlib_at_every_block_boundary(native, portable):
    rng = __import__("random").Random(1)
    for size in SIZES:
        data = rng.randbytes(size)
        assert native.digest(data, portable=portable) == hashlib.sha256(data).digest(), size


def test_sha_ni_path_when_the_host_has_it(native):
    if not native.has_shani():
        pytest.skip("this CPU has no SHA extensions (CPUID.7.0:EBX[29]); the portable path is tested")
    data = os.urandom(3 << 20)
    assert native.digest(data) == hashlib.sha256(data).digest()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.booleans())
def test_sha256_property(native, data, portable):
    assert native.digest(data, portable=portable) == hashlib.sha256(data).digest()


# -- the whole purgatory, emulated ----------------------------------------------------------------

KERNEL, PARAMS_AT, ENTRY = 0x1000000, 0x90000, 0x1000200


def _emulate(image, params: Params, *, memory: dict[int, bytes]):
    emu = Emulated(image.patched(params))
    for addr, data in memory.items():
        emu.write(addr, data)
    return emu, emu.run(params.regs.get("rip", ENTRY))


def test_good_segments_reach_the_64_bit_entry_with_rsi(image):
    kernel, initrd = os.urandom(70000), os.urandom(12345)
    regions = (Region.of(KERNEL, kernel, 0x12000), Region.of(0x3000000, initrd, 0x4000))
    params = Params(regs={"rsi": PARAMS_AT, "rip": ENTRY}, regions=regions, verbose=True)
    _, out = _emulate(image, params, memory={KERNEL: kernel, 0x3000000: initrd})
    assert out.stopped_at == ENTRY and not out.refused
    assert out.regs["rsi"] == PARAMS_AT
    assert out.regs["cs"] == 0x10 and out.regs["ds"] == 0x18 and out.regs["ss"] == 0x18  # __BOOT_CS/__BOOT_DS
    assert "02 segments verified" in out.serial and "sha256 portable" in out.serial


def test_a_corrupted_segment_halts_with_a_message_naming_it(image):
    kernel = os.urandom(5000)
    regions = (Region.of(KERNEL, kernel, 0x2000), Region.of(0x3000000, b"ok", 0x1000))
    bad = bytearray(kernel)
    bad[4321] ^= 1
    _, out = _emulate(image, Params(regs={"rsi": PARAMS_AT, "rip": ENTRY}, regions=regions),
                      memory={KERNEL: bytes(bad), 0x3000000: b"ok"})
    assert out.refused and out.stopped_at != ENTRY
    assert "segment 00 [0x0000000001000000+0x0000000000002000) SHA-256 mismatch" in out.serial
    assert regions[0].sha256.hex() in out.serial
    assert "refusing to boot" in out.serial
    assert "segment 01" not in out.serial


def test_padding_up_to_memsz_must_stay_zero(image):
    regions = (Region.of(KERNEL, b"abc", 0x10000),)
    assert regions[0] == Region(KERNEL, 3, hashlib.sha256(b"abc").digest(), 0x10000 - 3)
    for at in (3, 4, 7, 8, 0x1234, 0xFFFF):
        _, out = _emulate(image, Params(regs={"rip": ENTRY}, regions=regions),
                          memory={KERNEL: b"abc", KERNEL + at: b"\x01"})
        assert out.refused, at
        assert f"non-zero padding at 0x{KERNEL + at:016x}" in out.serial
    _, out = _emulate(image, Params(regs={"rip": ENTRY}, regions=regions), memory={KERNEL: b"abc",
                                                                                 KERNEL + 0x10000: b"\x01"})
    assert out.stopped_at == ENTRY                 # the byte after memsz is not the segment's


def test_skip_checks_jumps_without_hashing(image):
    regions = (Region(KERNEL, 0x1000, bytes(32)),)      # a digest that cannot match
    _, out = _emulate(image, Params(regs={"rip": ENTRY}, regions=regions, skip_checks=True, verbose=True),
                      memory={})
    assert out.stopped_at == ENTRY and "checks skipped" in out.serial


def test_silent_unless_verbose_or_refusing(image):
    _, out = _emulate(image, Params(regs={"rip": ENTRY}, regions=(Region.of(KERNEL, b"k", 0x1000),)),
                      memory={KERNEL: b"k"})
    assert out.stopped_at == ENTRY and out.serial == ""


def test_no_serial_port_means_no_output(image):
    params = Params(regs={"rip": ENTRY}, regions=(Region(KERNEL, 1, bytes(32)),), serial_port=0)
    _, out = _emulate(image, params, memory={})
    assert out.refused and out.serial == ""


def test_crash_backup_is_copied_after_the_check(image):
    low = os.urandom(0x9EC0)
    params = Params(regs={"rip": ENTRY}, regions=(Region.of(0x2000000, b"", 0xA000),),
                    backup_src=0x1000, backup_dst=0x2000000, backup_size=len(low))
    emu, out = _emulate(image, params, memory={0x1000: low})
    assert out.stopped_at == ENTRY
    assert emu.read(0x2000000, len(low)) == low


def test_multiboot_entry_is_32_bit_protected_mode_without_paging(image):
    params = Params(regs={"rax": 0x36D76289, "rbx": 0x123000, "rip": 0x1000000}, entry32=True,
                    regions=(Region.of(0x1000000, b"\x90" * 16, 0x1000),))
    _, out = _emulate(image, params, memory={0x1000000: b"\x90" * 16})
    assert out.stopped_at == 0x1000000
    assert out.regs["rax"] & 0xFFFFFFFF == 0x36D76289 and out.regs["rbx"] == 0x123000
    assert out.mode32 and out.regs["ds"] == 0x18
    assert out.regs["cs"] == 0x10                               # the one 32-bit code selector the GDT leaves
    assert out.regs["cr0"] & 0x80000001 == 0x00000001          # PE on, PG off
    assert not out.efer & 0x100                                 # EFER.LME off (LMA is the CPU's to clear)


def test_linux_32_bit_entry_follows_the_32_bit_boot_protocol(image):
    # boot.rst "32-bit Boot Protocol": CS = __BOOT_CS (0x10) and DS = ES = SS = __BOOT_DS (0x18), both
    # flat 4 GiB; %esi = boot_params; %ebp, %edi and %ebx zero; interrupts and paging off.
    params = Params(regs={"rsi": 0x14000, "rip": 0x100000}, entry32=True,
                    regions=(Region.of(0x100000, b"\x90" * 16, 0x1000),))
    _, out = _emulate(image, params, memory={0x100000: b"\x90" * 16})
    assert out.stopped_at == 0x100000
    assert out.mode32 and (out.regs["cs"], out.regs["ds"], out.regs["es"], out.regs["ss"]) == (0x10, 0x18, 0x18, 0x18)
    assert out.regs["rsi"] & 0xFFFFFFFF == 0x14000
    assert out.regs["rbx"] & 0xFFFFFFFF == 0 and out.regs["edi"] == 0 and out.regs["ebp"] == 0
    assert out.regs["cr0"] & 0x80000001 == 0x00000001 and not out.efer & 0x100


def test_multiboot_entry_code_runs_as_32_bit(image):
    # mov %eax, 0x5000 ; mov %ebx, 0x5004 ; hlt -- in 32-bit mode "a3" takes a 4-byte address.
    code = bytes.fromhex("a300500000") + bytes.fromhex("891d04500000") + b"\xf4"
    params = Params(regs={"rax": 0x2BADB002, "rbx": 0x9000, "rip": 0x1000000}, entry32=True)
    emu = Emulated(image.patched(params))
    emu.write(0x1000000, code)
    out = emu.run(0x1000000 + len(code) - 1)
    assert out.stopped_at == 0x1000000 + len(code) - 1
    assert emu.read(0x5000, 8) == bytes.fromhex("02b0ad2b") + (0x9000).to_bytes(4, "little")


# boot.rst "Running the Kernel": the real-mode code at 0x10000 is entered at 0x1020:0000 with every other
# segment 0x1000 and sp at the heap's end; 8259A/8254 values from their data sheets and the BIOS's defaults.
PIC_AND_PIT_AS_POST_LEAVES_THEM = [
    (0x20, 0x11), (0xA0, 0x11), (0x21, 0x08), (0xA1, 0x70), (0x21, 0x04), (0xA1, 0x02), (0x21, 0x01),
    (0xA1, 0x01), (0x21, 0xFA), (0xA1, 0xFF), (0x43, 0x36), (0x40, 0x00), (0x40, 0x00)]


def test_real_mode_entry_jumps_to_cs_ip_with_the_bios_state(image):
    setup = os.urandom(0x400)
    real = RealMode(cs=0x1020, ip=0, ds=0x1000, es=0x1001, fs=0x1002, gs=0x1003, ss=0x1004, sp=0xFE00)
    params = Params(regs={"rbx": 0x1234, "rsi": 0x5678}, real_mode=real,
                    regions=(Region.of(0x10000, setup, 0x1000),))
    emu = Emulated(image.patched(params), base=0x80000)
    emu.write(0x10000, setup)
    out = emu.run(0x10200)
    assert out.stopped_at == 0x10200 and not out.refused
    assert out.regs["cr0"] & 0x80000001 == 0                    # PE and PG off: real mode
    assert (out.regs["cs"], out.regs["ds"], out.regs["es"], out.regs["fs"], out.regs["gs"], out.regs["ss"]) \
        == (0x1020, 0x1000, 0x1001, 0x1002, 0x1003, 0x1004)
    assert out.regs["rsp"] & 0xFFFFFFFF == 0xFE00
    assert out.regs["rbx"] & 0xFFFFFFFF == 0x1234 and out.regs["rsi"] & 0xFFFFFFFF == 0x5678
    assert out.idtr == (0, 0x3FF)                               # the BIOS's interrupt vectors
    assert out.ports == PIC_AND_PIT_AS_POST_LEAVES_THEM


def test_linux_real_mode_registers_follow_boot_rst():
    assert RealMode.linux(0x8F000, 0xFE00) == RealMode(cs=0x8F20, ip=0, ds=0x8F00, es=0x8F00, fs=0x8F00,
                                                         gs=0x8F00, ss=0x8F00, sp=0xFE00)


def test_real_mode_entry_above_1_mib_is_refused(image):
    params = Params(regs={}, real_mode=RealMode.linux(0x10000, 0xFE00))
    _, out = _emulate(image, params, memory={})                # the purgatory at 0x200000
    assert out.refused and out.ports == []


def test_real_mode_values_must_fit_16_bits(image):
    with pytest.raises(purgatory.PurgatoryError, match="16-bit"):
        image.patched(Params(real_mode=RealMode.linux(0x10000, 0x10000)))

