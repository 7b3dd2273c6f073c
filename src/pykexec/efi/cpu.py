"""The two guest CPUs under unicorn, and their EFI calling conventions.

* x86_64, UEFI 2.10 2.3.4.2: Microsoft x64 (RCX, RDX, R8, R9, then the stack
  above 32 bytes of shadow space; result in RAX).  unicorn starts the CPU in
  long mode with paging off; the engine turns paging on with identity-mapped
  tables (:mod:`.paging`), as UEFI firmware runs, so linear addresses are
  still physical.
* AArch64, UEFI 2.10 2.3.6: AAPCS64 (X0-X7, then the stack; result in X0;
  return to X30).  EL1, MMU off; the "max" CPU model so the stub's checks of
  ID_AA64MMFR0 for 16K/64K granules pass.

A service trap is one ``ret`` instruction per slot; the Python hook on the
trap page does the work and returns on the guest's behalf.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import platform
import struct

MASK64 = 0xFFFFFFFFFFFFFFFF
UNKNOWN = object()                       # not worked out yet
NO_EXCEPTION = struct.pack("<i", -1)     # QEMU's "no exception in flight"


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

    def flush_tlb(self) -> None:
        """Empty QEMU's software TLB (it is resized only then: see machine.TLB_GROWTH_BLOCKS)."""
        u = _unicorn()
        self.uc.ctl(u.UC_CTL_TLB_FLUSH, u.UC_CTL_IO_WRITE)

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
        self.phys_bits = 36
        self._slot: object = UNKNOWN

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
        self.phys_bits = (table.get((0x80000008, 0)) or [0])[0] & 0xFF or self.phys_bits

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

    # -- paging (Intel SDM vol. 3A 2.5 and 4.1) ---------------------------------------------
    # What UEFI firmware runs with (OVMF: CR0 0x80010033): PE, MP, ET, NE, WP and PG;
    # CR4 gains PAE and OSXMMEXCPT beside what unicorn's reset sets (OSFXSR, FSGSBASE,
    # OSXSAVE); IA32_EFER gains NXE beside LME/LMA.  LA57 stays off: 4-level paging.
    CR0_PAGING = 0x80010033
    CR4_PAGING = 0x420
    IA32_EFER, EFER_NXE = 0xC0000080, 1 << 11
    PAGE_FAULT = 14
    VECTORS = {0: "#DE", 1: "#DB", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
               10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC",
               18: "#MC", 19: "#XM"}

    def enable_paging(self, root: int) -> None:
        """Turn paging on with the PML4 at ``root`` (below 4 GiB: unicorn keeps 32 bits of CR3)."""
        if root >> 32 or root & 0xFFF:
            raise ValueError(f"the PML4 must be page aligned below 4 GiB, not at {root:#x}")
        x, uc = self.x, self.uc
        uc.reg_write(x.UC_X86_REG_CR3, root)
        uc.reg_write(x.UC_X86_REG_CR4, uc.reg_read(x.UC_X86_REG_CR4) | self.CR4_PAGING)
        uc.msr_write(self.IA32_EFER, uc.msr_read(self.IA32_EFER) | self.EFER_NXE)
        uc.reg_write(x.UC_X86_REG_CR0, uc.reg_read(x.UC_X86_REG_CR0) | self.CR0_PAGING)

    def fault_address(self) -> int:
        """CR2: the linear address of the last page fault."""
        return self.uc.reg_read(self.x.UC_X86_REG_CR2)

    def page_table_root(self) -> int:
        return self.uc.reg_read(self.x.UC_X86_REG_CR3) & ~0xFFF

    def load_page_tables(self, root: int) -> None:
        """Write CR3, which also flushes the TLB (and with it QEMU's per-address TB cache)."""
        self.uc.reg_write(self.x.UC_X86_REG_CR3, root)

    # unicorn never delivers an exception a UC_HOOK_INTR hook handles, so QEMU's
    # record of the exception in flight (CPUX86State.old_exception, cleared only on
    # delivery) stays set: the next page fault becomes a double fault and the one
    # after that a triple fault, which silently stops the CPU (unicorn issue #1883,
    # open).  forget_exception() clears it: it saves the CPU context, sets that
    # field to -1 and restores the context (unicorn 2.1 restores it as a plain copy
    # of the CPU state).  The field's offset in the context is not part of unicorn's
    # API, so it is found by experiment on a scratch CPU, and checked there: once
    # cleared, the next fault must again arrive as a page fault.
    def exception_slot(self) -> int | None:
        """The offset of the exception in flight in a saved context; None if not found."""
        if self._slot is UNKNOWN:
            self._slot = _find_exception_slot(_unicorn(), self.x)
        return self._slot  # type: ignore[return-value]

    def disable_paging(self) -> bool:
        """False: long mode cannot run without paging."""
        return False

    def resumes_after_faults(self) -> bool:
        """Whether emulation goes on correctly after a hook resolved a page fault."""
        return self.exception_slot() is not None

    def forget_exception(self) -> None:
        """Mark the exception a hook handled as delivered (see exception_slot)."""
        slot = self.exception_slot()
        if slot is not None:
            _clear_slot(self.uc, slot)

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


def _clear_slot(uc, slot: int) -> None:
    ctx = uc.context_save()
    raw, size, arch, mode = ctx.__getstate__()       # the pickling state: the context's bytes
    ctx.__setstate__((raw[:slot] + NO_EXCEPTION + raw[slot + 4:], size, arch, mode))
    uc.context_restore(ctx)


def _find_exception_slot(u, x) -> int | None:
    """Where unicorn's CPU context keeps the exception in flight; None if not found.

    A scratch CPU pages with every 2 MiB page non-executable and runs a chain of
    jumps from page to page; its interrupt hook makes each faulting page
    executable.  Inside the first hook the slot is the one 32-bit field that went
    from -1 (none) to 14 (#PF); cleared there, the next fault must again be a #PF.
    """
    uc = u.Uc(u.UC_ARCH_X86, u.UC_MODE_64)
    pml4, pdpt, pd = 0x1000, 0x2000, 0x3000
    uc.mem_map(0, 8 << 20)
    uc.mem_write(pml4, struct.pack("<Q", pdpt | 0x23))
    uc.mem_write(pdpt, struct.pack("<Q", pd | 0x23))
    uc.mem_write(pd, b"".join(struct.pack("<Q", i << 21 | 0xE3 | 1 << 63) for i in range(4)))
    for i in (1, 2):                                    # jmp to the next 2 MiB page
        uc.mem_write(i << 21, b"\xe9" + struct.pack("<i", (1 << 21) - 5))
    uc.mem_write(3 << 21, b"\xf4")                      # hlt
    cpu = X86_64(uc)
    cpu.enable_paging(pml4)
    before = bytes(uc.context_save().__getstate__()[0])
    seen: list[int] = []
    found: list[int] = []

    def hook(uc, intno, data) -> None:
        seen.append(intno)
        page = uc.reg_read(x.UC_X86_REG_CR2) >> 21
        if intno != X86_64.PAGE_FAULT or page not in (1, 2, 3) or len(seen) > 3:
            uc.emu_stop()
            return
        uc.mem_write(pd + 8 * page, struct.pack("<Q", page << 21 | 0xE3))
        if not found:
            now = bytes(uc.context_save().__getstate__()[0])
            fault = struct.pack("<i", X86_64.PAGE_FAULT)
            found.extend(o for o in range(0, min(len(before), len(now)) - 3, 4)
                         if before[o:o + 4] == NO_EXCEPTION and now[o:o + 4] == fault)
            if len(found) != 1:
                uc.emu_stop()
                return
        _clear_slot(uc, found[0])

    uc.hook_add(u.UC_HOOK_INTR, hook)
    try:
        uc.emu_start(1 << 21, (3 << 21) + 1)
    except u.UcError:
        return None
    if seen != [X86_64.PAGE_FAULT] * 3 or len(found) != 1 or cpu.pc() != (3 << 21) + 1:
        return None
    return found[0]


class Arm64(Cpu):
    name = "arm64"
    machine = 0xAA64
    trap = struct.pack("<I", 0xD65F03C0)    # ret

    # QEMU's exception numbers (target/arm/cpu.h EXCP_*), as unicorn's interrupt hook
    # sees them.  A fetch the page tables forbid is a prefetch abort at the fetch.
    PAGE_FAULT = 3
    VECTORS = {1: "undefined instruction", 2: "SVC", 3: "prefetch abort", 4: "data abort",
               5: "IRQ", 6: "FIQ", 7: "breakpoint", 11: "HVC", 13: "SMC", 22: "unaligned"}
    # What the MMU runs with: MAIR_EL1 attribute 0 normal write-back memory; TCR_EL1
    # T0SZ 25 (512 GiB, the walk starts at level 1), inner/outer write-back walks, inner
    # shareable, 4 KiB granule (TG0 0), TTBR1 walks off (EPD1) but TG1 a valid 4 KiB
    # (unicorn faults every fetch with the reserved 0), 36-bit IPS; SCTLR_EL1 M, C, I.
    MAIR = 0xFF
    TCR = 25 | 1 << 8 | 1 << 10 | 3 << 12 | 1 << 23 | 2 << 30 | 1 << 32
    SCTLR_MMU = 1 | 1 << 2 | 1 << 12
    SCTLR = (1, 0, 3, 0, 0)                 # (CRn, CRm, op0, op1, op2) for UC_ARM64_REG_CP_REG
    TCR_EL1 = (2, 0, 3, 0, 2)

    def __init__(self, uc) -> None:
        super().__init__(uc)
        from unicorn import arm64_const as a
        self.a = a
        self.xregs = [getattr(a, f"UC_ARM64_REG_X{i}") for i in range(31)]
        self.PC, self.SP = a.UC_ARM64_REG_PC, a.UC_ARM64_REG_SP
        self.phys_bits = 36

    def enable_paging(self, root: int) -> None:
        """Turn the MMU on with the level 1 table at ``root`` (TTBR0_EL1)."""
        a, uc = self.a, self.uc
        uc.reg_write(a.UC_ARM64_REG_MAIR_EL1, self.MAIR)
        uc.reg_write(a.UC_ARM64_REG_TTBR0_EL1, root)
        uc.reg_write(a.UC_ARM64_REG_CP_REG, (*self.TCR_EL1, self.TCR))
        sctlr = uc.reg_read(a.UC_ARM64_REG_CP_REG, self.SCTLR)
        uc.reg_write(a.UC_ARM64_REG_CP_REG, (*self.SCTLR, sctlr | self.SCTLR_MMU))

    def disable_paging(self) -> bool:
        """Turn the MMU off (the access that faulted then re-runs untranslated)."""
        a, uc = self.a, self.uc
        sctlr = uc.reg_read(a.UC_ARM64_REG_CP_REG, self.SCTLR)
        uc.reg_write(a.UC_ARM64_REG_CP_REG, (*self.SCTLR, sctlr & ~1))
        self.flush_tlb()
        return True

    def fault_address(self) -> int:
        """A prefetch abort's address: the PC (unicorn sets no FAR_EL1 for a hooked abort)."""
        return self.pc()

    def page_table_root(self) -> int:
        return self.uc.reg_read(self.a.UC_ARM64_REG_TTBR0_EL1) & ((1 << 48) - 2)

    def resumes_after_faults(self) -> bool:
        """Whether emulation goes on correctly after a hook resolved a fault: on AArch64
        unicorn keeps no record of a hooked exception (checked on three aborts in a row
        by the unit tests)."""
        return True

    def forget_exception(self) -> None:
        """Nothing to forget (see resumes_after_faults)."""

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


def read_into(uc, addr: int, out: bytearray, offset: int, size: int) -> None:
    """uc_mem_read straight into ``out[offset:offset + size]``.

    The binding's mem_read copies twice (into a ctypes buffer, then a new
    bytearray); a captured kernel is tens of MiB.
    """
    from unicorn.unicorn_py3.unicorn import UcError, uclib
    view = (ctypes.c_char * size).from_buffer(out, offset)
    err = uclib.uc_mem_read(uc._uch, addr, ctypes.cast(view, ctypes.POINTER(ctypes.c_char)), size)
    if err:
        raise UcError(err)


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
        if self.table is None:
            return {}
        raw = memoryview(self.table).cast("B").cast("Q")
        keys = raw[0::2].tolist()
        return {key - 1: n for key, n in itertools.compress(zip(keys, raw[1::2].tolist()), keys)}
