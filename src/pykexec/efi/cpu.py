"""The two guest CPUs under unicorn, and their EFI calling conventions.

* x86_64, UEFI 2.10 2.3.4.2: Microsoft x64 (RCX, RDX, R8, R9, then the stack
  above 32 bytes of shadow space; result in RAX).  unicorn starts the CPU in
  long mode with paging off, so linear addresses are physical.
* AArch64, UEFI 2.10 2.3.6: AAPCS64 (X0-X7, then the stack; result in X0;
  return to X30).  EL1, MMU off; the "max" CPU model so the stub's checks of
  ID_AA64MMFR0 for 16K/64K granules pass.

A service trap is one ``ret`` instruction per slot; the Python hook on the
trap page does the work and returns on the guest's behalf.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import struct

MASK64 = 0xFFFFFFFFFFFFFFFF


def _unicorn():
    from ..errors import EmulatorUnavailable
    try:
        import unicorn
    except ImportError as e:
        raise EmulatorUnavailable("the EFI emulator needs unicorn: pip install 'unicorn>=2.1'") from e
    return unicorn


class Cpu:
    """Registers and calls, common to both architectures."""

    name = ""
    machine = 0
    trap = b""
    slot = 16

    def __init__(self, uc) -> None:
        self.uc = uc

    def read64(self, addr: int) -> int:
        return struct.unpack("<Q", self.uc.mem_read(addr, 8))[0]

    def write64(self, addr: int, value: int) -> None:
        self.uc.mem_write(addr, struct.pack("<Q", value & MASK64))

    def make_deterministic(self) -> None:
        """Hide the CPU's sources of entropy, so the same image always runs the same way."""

    def context(self):
        return self.uc.context_save()

    def restore(self, ctx) -> None:
        self.uc.context_restore(ctx)

    def pc(self) -> int:
        return self.uc.reg_read(self.PC)

    def set_pc(self, v: int) -> None:
        self.uc.reg_write(self.PC, v)

    def sp(self) -> int:
        return self.uc.reg_read(self.SP)

    def args(self, n: int) -> list[int]:
        """The first ``n`` arguments of the call being made (``arg`` is per architecture)."""
        return [self.arg(i) for i in range(n)]


class X86_64(Cpu):
    name = "x86_64"
    machine = 0x8664
    trap = b"\xc3"          # ret

    def __init__(self, uc) -> None:
        super().__init__(uc)
        from unicorn import x86_const as x
        self.x = x
        self.arg_regs = (x.UC_X86_REG_RCX, x.UC_X86_REG_RDX, x.UC_X86_REG_R8, x.UC_X86_REG_R9)
        self.PC, self.SP, self.RET = x.UC_X86_REG_RIP, x.UC_X86_REG_RSP, x.UC_X86_REG_RAX

    @classmethod
    def create(cls):
        u = _unicorn()
        return cls(u.Uc(u.UC_ARCH_X86, u.UC_MODE_64))

    # CPUID bits hidden from the guest: RDRAND (1.ECX[30]) and RDSEED (7.0.EBX[18]),
    # whose values come from the host's randomness.  (The TSC stays: stubs such as
    # 6.1's x86 KASLR code call port I/O through an uninitialised table without it;
    # RDTSC itself is made deterministic by Firmware.watch_rdtsc.)
    HIDDEN = {(1, "ecx"): 1 << 30, (7, "ebx"): 1 << 18}
    RDTSC = (b"\x0f\x31", b"\x0f\x01\xf9")      # rdtsc, rdtscp

    def timestamp(self, value: int, size: int) -> None:
        """Complete an RDTSC(P) at the PC with ``value``: EDX:EAX (ECX 0 for RDTSCP)."""
        x = self.x
        self.uc.reg_write(x.UC_X86_REG_RAX, value & 0xFFFFFFFF)
        self.uc.reg_write(x.UC_X86_REG_RDX, (value >> 32) & 0xFFFFFFFF)
        if size == 3:
            self.uc.reg_write(x.UC_X86_REG_RCX, 0)
        self.set_pc(self.pc() + size)

    def make_deterministic(self) -> None:
        u = _unicorn()
        x = self.x
        regs = (x.UC_X86_REG_EAX, x.UC_X86_REG_EBX, x.UC_X86_REG_ECX, x.UC_X86_REG_EDX)
        table = self._cpuid_table(u, regs)

        def cpuid(uc, data) -> bool:
            leaf, sub = uc.reg_read(x.UC_X86_REG_EAX), uc.reg_read(x.UC_X86_REG_ECX)
            values = table.get((leaf, sub)) or table.get((leaf, 0)) or [0, 0, 0, 0]
            for r, v in zip(regs, values):
                uc.reg_write(r, v)
            return True

        self.uc.hook_add(u.UC_HOOK_INSN, cpuid, None, 1, 0, x.UC_X86_INS_CPUID)
        self.uc.hook_add(u.UC_HOOK_INSN, lambda uc, port, size, data: 0, None, 1, 0,
                         x.UC_X86_INS_IN)
        self.uc.hook_add(u.UC_HOOK_INSN, lambda uc, port, size, value, data: None, None, 1, 0,
                         x.UC_X86_INS_OUT)
        self._keep = cpuid

    def _cpuid_table(self, u, regs) -> dict[tuple[int, int], list[int]]:
        """The model's CPUID leaves, read once from a scratch CPU, with HIDDEN bits cleared.

        (A scratch CPU cannot be run from inside a hook of this one: unicorn's
        translator state is per thread.)
        """
        x = self.x
        scratch = u.Uc(u.UC_ARCH_X86, u.UC_MODE_64)
        scratch.mem_map(0x1000, 0x1000)
        scratch.mem_write(0x1000, b"\x0f\xa2")           # cpuid

        def query(leaf: int, sub: int) -> list[int]:
            scratch.reg_write(x.UC_X86_REG_EAX, leaf)
            scratch.reg_write(x.UC_X86_REG_ECX, sub)
            scratch.emu_start(0x1000, 0x1002)
            return [scratch.reg_read(r) for r in regs]

        table = {}
        for base in (0, 0x80000000):
            top = min(query(base, 0)[0], base + 0x40)
            for leaf in range(base, top + 1):
                for sub in range(8):
                    values = query(leaf, sub)
                    for i, name in enumerate(("eax", "ebx", "ecx", "edx")):
                        hide = self.HIDDEN.get((leaf, name), 0)
                        if hide and (leaf != 7 or sub == 0):
                            values[i] &= ~hide
                    table[(leaf, sub)] = values
        return table

    def arg(self, i: int) -> int:
        """Argument ``i`` of the call being made (RSP points at the return address)."""
        if i < 4:
            return self.uc.reg_read(self.arg_regs[i])
        return self.read64(self.sp() + 8 + 32 + 8 * (i - 4))


    def caller(self) -> tuple[int, int]:
        """(return address, stack pointer after returning) of the call being made."""
        sp = self.sp()
        return self.read64(sp), sp + 8

    def finish(self, value: int, caller: tuple[int, int]) -> None:
        self.uc.reg_write(self.RET, value & MASK64)
        self.uc.reg_write(self.SP, caller[1])
        self.set_pc(caller[0])

    def call(self, fn: int, args: list[int], ret: int, sp: int | None = None) -> None:
        """Enter ``fn(args...)`` so that it returns to ``ret``; below the current stack."""
        top = (self.sp() if sp is None else sp) - 256
        extra = args[4:]
        top -= 8 * len(extra)
        top &= ~0xF
        frame = top - 32 - 8                 # shadow space, then the return address
        for i, a in enumerate(extra):
            self.write64(top + 8 * i, a)
        self.write64(frame, ret)
        for reg, a in zip(self.arg_regs, args):
            self.uc.reg_write(reg, a & MASK64)
        self.uc.reg_write(self.SP, frame)
        self.set_pc(fn)

    def result(self) -> int:
        return self.uc.reg_read(self.RET)

    def handover_registers(self) -> dict[str, int]:
        x = self.x
        names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")
        regs = (x.UC_X86_REG_RAX, x.UC_X86_REG_RBX, x.UC_X86_REG_RCX, x.UC_X86_REG_RDX,
                x.UC_X86_REG_RSI, x.UC_X86_REG_RDI, x.UC_X86_REG_RBP, x.UC_X86_REG_RSP)
        return {n: self.uc.reg_read(r) for n, r in zip(names, regs)}


class Arm64(Cpu):
    name = "arm64"
    machine = 0xAA64
    trap = struct.pack("<I", 0xD65F03C0)    # ret

    def __init__(self, uc) -> None:
        super().__init__(uc)
        from unicorn import arm64_const as a
        self.a = a
        self.xregs = [getattr(a, f"UC_ARM64_REG_X{i}") for i in range(31)]
        self.PC, self.SP = a.UC_ARM64_REG_PC, a.UC_ARM64_REG_SP

    @classmethod
    def create(cls):
        u = _unicorn()
        from unicorn import arm64_const as a
        uc = u.Uc(u.UC_ARCH_ARM64, u.UC_MODE_ARM)
        try:
            uc.ctl_set_cpu_model(a.UC_CPU_ARM64_MAX)
        except Exception:   # older unicorn: keep the default model
            pass
        return cls(uc)

    def arg(self, i: int) -> int:
        if i < 8:
            return self.uc.reg_read(self.xregs[i])
        return self.read64(self.sp() + 8 * (i - 8))


    def caller(self) -> tuple[int, int]:
        return self.uc.reg_read(self.xregs[30]), self.sp()

    def finish(self, value: int, caller: tuple[int, int]) -> None:
        self.uc.reg_write(self.xregs[0], value & MASK64)
        self.uc.reg_write(self.SP, caller[1])
        self.set_pc(caller[0])

    def call(self, fn: int, args: list[int], ret: int, sp: int | None = None) -> None:
        top = (self.sp() if sp is None else sp) - 256
        extra = args[8:]
        top = (top - 8 * len(extra)) & ~0xF
        for i, a in enumerate(extra):
            self.write64(top + 8 * i, a)
        for reg, a in zip(self.xregs, args[:8]):
            self.uc.reg_write(reg, a & MASK64)
        self.uc.reg_write(self.xregs[30], ret)
        self.uc.reg_write(self.SP, top)
        self.set_pc(fn)

    def result(self) -> int:
        return self.uc.reg_read(self.xregs[0])

    def handover_registers(self) -> dict[str, int]:
        out = {f"x{i}": self.uc.reg_read(self.xregs[i]) for i in range(4)}
        out["sp"] = self.sp()
        return out


ARCHES = {"x86_64": X86_64, "arm64": Arm64}


# -- counting executed code without a per-instruction hook --------------------------------
#
# A Python UC_HOOK_CODE costs ~170x and unicorn's own ``count`` ~9x; a native
# UC_HOOK_BLOCK callback costs nothing measurable.  On an x86-64 host the callback
# below (hand-assembled, 112 bytes) counts blocks and code bytes, keeps a
# per-block-address execution count in an open-addressing table (so x86 instruction
# counts can be computed exactly from each block's instruction count), and stops
# emulation when the block count reaches a checkpoint.
#
# void cb(uc_engine *uc /*rdi*/, u64 addr /*rsi*/, u32 size /*edx*/, Counters *c /*rcx*/)

class Counters(ctypes.Structure):
    _fields_ = [("blocks", ctypes.c_uint64), ("bytes", ctypes.c_uint64),
                ("stop_at", ctypes.c_uint64), ("emu_stop", ctypes.c_void_p),
                ("table", ctypes.c_void_p), ("mask", ctypes.c_uint64),
                ("overflow_blocks", ctypes.c_uint64), ("overflow_bytes", ctypes.c_uint64)]


def _assemble() -> bytes:
    parts: list = [
        "89d2", "480151 08", "48ff01",                  # size=u32; bytes+=size; blocks++
        "4c8b4120", "4d85c0", ("jz", "check"),          # r8 = table; none -> check
        "4c8d4e01", "4c89c8",                            # r9 = addr+1 (key); rax = key
        "49ba" + struct.pack("<Q", 0x9E3779B97F4A7C15).hex(), "490fafc2", "48c1e828",
        "41bb20000000",                                  # r11d = 32 probes
        ("label", "probe"),
        "48234128", "4989c2", "49c1e204", "4d01c2",      # r10 = table + 16*(rax & mask)
        "4d390a", ("je", "hit"), "49833a00", ("je", "claim"),
        "48ffc0", "41ffcb", ("jnz", "probe"),
        "48015138", "48ff4130", ("jmp", "check"),        # overflow: bytes, blocks
        ("label", "claim"), "4d890a",
        ("label", "hit"), "49ff4208",
        ("label", "check"), "488b01", "483b4110", ("jae", "stop"), "c3",
        ("label", "stop"), "ff6118",                     # tail-call uc_emu_stop(uc)
    ]
    ops = {"jz": 0x74, "je": 0x74, "jnz": 0x75, "jae": 0x73, "jmp": 0xEB}
    labels, out, fixups = {}, bytearray(), []
    for p in parts:
        if isinstance(p, tuple) and p[0] == "label":
            labels[p[1]] = len(out)
        elif isinstance(p, tuple):
            out += bytes([ops[p[0]], 0])
            fixups.append((len(out) - 1, p[1]))
        else:
            out += bytes.fromhex(p.replace(" ", ""))
    for at, label in fixups:
        rel = labels[label] - (at + 1)
        assert -128 <= rel < 128
        out[at] = rel & 0xFF
    return bytes(out)


class BlockCounter:
    """The native block counter, or None where it cannot run (not an x86-64 host)."""

    TABLE_BITS = 18

    def __init__(self, uc, with_table: bool) -> None:
        u = _unicorn()
        from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib
        code = _assemble()
        self._page = mmap.mmap(-1, mmap.PAGESIZE,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._page.write(code)
        self._fn = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self.counters = Counters()
        self.counters.stop_at = MASK64
        self.counters.emu_stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        self.table = None
        if with_table:
            self.table = (ctypes.c_uint64 * (2 << self.TABLE_BITS))()
            self.counters.table = ctypes.addressof(self.table)
            self.counters.mask = (1 << self.TABLE_BITS) - 1
        self._hook = uc_hook_h()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(self._hook), u.UC_HOOK_BLOCK,
                                ctypes.c_void_p(self._fn),
                                ctypes.c_void_p(ctypes.addressof(self.counters)),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise OSError(f"uc_hook_add: unicorn error {err}")

    @classmethod
    def create(cls, uc, with_table: bool) -> "BlockCounter | None":
        if platform.machine() not in ("x86_64", "AMD64"):
            return None
        try:
            return cls(uc, with_table)
        except (OSError, ValueError, AttributeError, ImportError):
            return None

    def block_counts(self) -> dict[int, int]:
        """{block address: executions} from the table."""
        out = {}
        t = self.table
        if t is None:
            return out
        raw = memoryview(t).cast("B").cast("Q")
        for i in range(0, len(raw), 2):
            key = raw[i]
            if key:
                out[key - 1] = raw[i + 1]
        return out
