"""Run the committed arm64 purgatory under unicorn's AArch64 emulator.

* :class:`Emulated`: the whole purgatory run from ``_start`` at EL1 with the MMU and
  caches off, as ``cpu_soft_restart`` enters it, in a flat RAM at :data:`RAM` with a
  console UART mapped as MMIO (a PL011 or an 8250 with any register shift and width)
  that records every access, stopping at the kernel entry or at the wait loop.
* :func:`call_sha256`: the image's ``pg_sha256`` called directly (AAPCS64), so that its
  two block functions hash chosen buffers.

Unicorn's ``UC_CPU_ARM64_MAX`` model has the SHA-2 instructions (ID_AA64ISAR0_EL1.SHA2 = 2);
the portable path is taken with ``PG_NO_SHA2``.  Unicorn starts at EL1 with
CPACR_EL1.FPEN = 0 (FP/SIMD trapped), as a kernel may leave it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pykexec.boot.purgatory import arm64

RAM, RAM_SIZE = 0x40000000, 64 << 20
RET = RAM                     # where pg_sha256 returns to in call_sha256
PL011_BASE = 0x09000000
NS8250_BASE = 0x1C020000
PL011_FR, PL011_TXFF = 0x18, 0x20
SCTLR_EL1 = (1, 0, 3, 0, 0)   # CRn, CRm, op0, op1, op2


def _uc():
    from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc
    from unicorn import arm64_const as a

    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_cpu_model(a.UC_CPU_ARM64_MAX)
    uc.mem_map(RAM, RAM_SIZE)
    return uc


@dataclass
class UartModel:
    """A UART's registers: transmitted characters, and every access as (kind, offset, size, value)."""

    kind: str
    shift: int = 0
    accesses: list[tuple[str, int, int, int]] = field(default_factory=list)
    reads: int = 0

    @property
    def text(self) -> str:
        return "".join(chr(v & 0xFF) for k, off, _, v in self.accesses if k == "w" and off == 0)

    def read(self, uc, offset, size, user) -> int:
        self.reads += 1
        if self.kind == "pl011":
            # FR: the transmit FIFO is full every other time it is asked
            value = PL011_TXFF if offset == PL011_FR and self.reads % 2 else 0
        else:
            value = 0x60 if offset == 5 << self.shift else 0   # LSR: THRE | TEMT
        self.accesses.append(("r", offset, size, value))
        return value

    def write(self, uc, offset, size, value, user) -> None:
        self.accesses.append(("w", offset, size, value))


@dataclass
class Outcome:
    stopped_at: int | None
    refused: bool
    regs: dict[str, int]
    serial: str
    stray_writes: list[tuple[int, int]]


class Emulated:
    """The purgatory at ``base`` in RAM, under unicorn, with a UART of ``uart``'s kind mapped."""

    def __init__(self, image: bytes, *, base: int = 0x43000000, uart: arm64.Uart = arm64.Uart()) -> None:
        from unicorn import UC_HOOK_MEM_WRITE

        self.base = base
        self.header = arm64.parse(image).header
        self.uc = _uc()
        self.uc.mem_write(base, image)
        self.uart = UartModel(uart.type, uart.shift)
        if uart.type != "none":
            self.uc.mmio_map(uart.base, 0x1000, self.uart.read, None, self.uart.write, None)
        self.refuse = base + self.header["refuse_entry"]
        self.own = (base, base + self.header["mem_size"])
        self.stray: list[tuple[int, int]] = []
        self.uc.hook_add(UC_HOOK_MEM_WRITE, self._write, None, RAM, RAM + RAM_SIZE - 1)
        self.stopped_at: int | None = None

    def _write(self, uc, access, addr, size, value, user) -> None:
        if not self.own[0] <= addr < self.own[1]:
            self.stray.append((addr, size))

    def hide_sha2(self) -> int:
        """Make every ``mrs xN, id_aa64isar0_el1`` of the image read SHA2 = 0 (bits [15:12]), as on
        a CPU without the SHA-2 instructions; returns how many such reads the image has."""
        import struct

        from unicorn import UC_HOOK_CODE
        from unicorn import arm64_const as a

        image = bytes(self.uc.mem_read(self.base, self.header["image_size"]))
        words = struct.unpack(f"<{len(image) // 4}I", image)
        sites = [(self.base + 4 * i, w & 0x1F) for i, w in enumerate(words) if w & ~0x1F == 0xD5380600]

        def clear(uc, addr, size, rt):
            reg = getattr(a, f"UC_ARM64_REG_X{rt}")
            uc.reg_write(reg, uc.reg_read(reg) & ~0xF000)

        for addr, rt in sites:          # just after the mrs: its result is in Xrt
            self.uc.hook_add(UC_HOOK_CODE, clear, rt, addr + 4, addr + 4)
        return len(sites)

    def write(self, addr: int, data: bytes) -> None:
        self.uc.mem_write(addr, data)

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))

    def run(self, entry: int, *, limit: int = 100_000_000, unmask: bool = True) -> Outcome:
        from unicorn import UC_HOOK_CODE, UcError
        from unicorn import arm64_const as a

        def stop(uc, addr, size, user):
            self.stopped_at = addr
            uc.emu_stop()

        for addr in (entry, self.refuse):
            self.uc.hook_add(UC_HOOK_CODE, stop, None, addr, addr)
        # the purgatory must mask interrupts itself: start with PSTATE.DAIF clear, EL1h
        if unmask:
            self.uc.reg_write(a.UC_ARM64_REG_PSTATE, 0x5)
        # garbage in the registers the kernel entry must see as zero
        for i in range(1, 4):
            self.uc.reg_write(getattr(a, f"UC_ARM64_REG_X{i}"), 0xDEAD0000 + i)
        try:
            self.uc.emu_start(self.base, 0, count=limit)
        except UcError as e:
            raise AssertionError(f"the purgatory faulted at {self.uc.reg_read(a.UC_ARM64_REG_PC):#x}: {e}") from e
        regs = {f"x{i}": self.uc.reg_read(getattr(a, f"UC_ARM64_REG_X{i}")) for i in range(4)}
        regs["pc"] = self.uc.reg_read(a.UC_ARM64_REG_PC)
        regs["pstate"] = self.uc.reg_read(a.UC_ARM64_REG_PSTATE)
        regs["cpacr"] = self.uc.reg_read(a.UC_ARM64_REG_CPACR_EL1)
        regs["sctlr"] = self.uc.reg_read(a.UC_ARM64_REG_CP_REG, SCTLR_EL1)
        return Outcome(self.stopped_at, self.stopped_at == self.refuse, regs, self.uart.text, self.stray)


def call_sha256(image: arm64.Image, data: bytes, *, flags: int = 0, misalign: int = 0,
                uc=None) -> bytes:
    """``pg_sha256(data, len, out, flags)`` of the committed image, at ``misalign`` bytes past
    a 4 KiB boundary; pass ``uc`` from :func:`sha256_machine` to reuse one emulator."""
    from unicorn import UcError
    from unicorn import arm64_const as a

    uc = uc or sha256_machine(image)
    base = RAM + 0x100000
    buf, out = RAM + 0x200000 + misalign, RAM + 0x1000
    uc.mem_write(buf, bytes(data))
    regs = {a.UC_ARM64_REG_X0: buf, a.UC_ARM64_REG_X1: len(data), a.UC_ARM64_REG_X2: out,
            a.UC_ARM64_REG_X3: flags, a.UC_ARM64_REG_X30: RET,
            a.UC_ARM64_REG_SP: base + image.header["stack_end"]}
    for reg, value in regs.items():
        uc.reg_write(reg, value)
    try:
        uc.emu_start(base + image.header["sha256_entry"], RET, count=200_000_000)
    except UcError as e:
        raise AssertionError(f"pg_sha256 faulted at {uc.reg_read(a.UC_ARM64_REG_PC):#x}: {e}") from e
    assert uc.reg_read(a.UC_ARM64_REG_PC) == RET, "pg_sha256 did not return"
    return bytes(uc.mem_read(out, 32))


def sha256_machine(image: arm64.Image):
    """An emulator with the image at RAM + 1 MiB and FP/SIMD allowed (CPACR_EL1.FPEN), as
    entry.S leaves it before pg_main."""
    from unicorn import arm64_const as a

    uc = _uc()
    uc.mem_write(RAM + 0x100000, image.data)
    uc.reg_write(a.UC_ARM64_REG_CPACR_EL1, 3 << 20)
    return uc


def has_sha2(image: arm64.Image, uc=None) -> bool:
    """``pg_cpu_has_sha2()`` of the image, on the emulated CPU."""
    from unicorn import arm64_const as a

    uc = uc or sha256_machine(image)
    uc.reg_write(a.UC_ARM64_REG_X30, RET)
    uc.reg_write(a.UC_ARM64_REG_SP, RAM + 0x100000 + image.header["stack_end"])
    uc.emu_start(RAM + 0x100000 + image.header["has_sha2_entry"], RET, count=1000)
    return bool(uc.reg_read(a.UC_ARM64_REG_X0))


def ce_blocks_offset(image: arm64.Image) -> int:
    """Offset of ``pg_sha256_blocks_ce`` (sha256_ce.S): the one ``cbz x2`` followed by
    ``stp d8, d9, [sp, #-16]!`` in the image."""
    import struct

    words = struct.unpack_from(f"<{len(image.data) // 4}I", image.data)
    hits = [4 * i for i in range(len(words) - 1)
            if words[i] & 0xFF00001F == 0xB4000002 and words[i + 1] == 0x6DBF27E8]
    assert len(hits) == 1, hits
    return hits[0]
