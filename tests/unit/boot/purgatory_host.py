"""Run the committed purgatory's code on the host, two ways.

* :class:`NativeSha256`: ``purgatory.bin`` copied into an executable mapping and
  its ``pg_sha256`` called through ctypes (System V ABI, position independent),
  so the exact committed bytes hash real buffers, with the host's SHA-NI when it
  has them and with the portable code when asked to.
* :class:`Emulated`: the whole purgatory run from ``_start`` under unicorn in
  64-bit mode, as relocate_kernel enters it, with an 8250 on port 0x3f8 that
  records what it is sent, stopping at the entry point or the halt loop.
  Unicorn's CPU (QEMU 5 TCG) has no SHA extensions, so this runs the portable path.
"""

from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass, field

from pykexec.boot import purgatory

UART = 0x3F8
LSR = UART + 5


class NativeSha256:
    """``pg_sha256`` of the committed image, called natively."""

    def __init__(self, image: purgatory.Image) -> None:
        size = -(-max(image.mem_size, len(image.data)) // mmap.PAGESIZE) * mmap.PAGESIZE
        self._map = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._map.write(image.data)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint32)
        self._sha = proto(base + image.header["sha256_entry"])
        self._has_ni = ctypes.CFUNCTYPE(ctypes.c_int)(base + image.header["has_shani_entry"])

    def has_shani(self) -> bool:
        return bool(self._has_ni())

    def digest(self, data: bytes, *, portable: bool = False) -> bytes:
        out = ctypes.create_string_buffer(32)
        # bytes go by reference (no copy): the purgatory only reads them
        self._sha(ctypes.c_char_p(bytes(data)) if data else None, len(data), out,
                  purgatory.PG_NO_SHANI if portable else 0)
        return out.raw


@dataclass
class Outcome:
    stopped_at: int | None
    regs: dict[str, int]
    serial: str
    refused: bool
    mode32: bool = False
    efer: int | None = None
    ports: list[tuple[int, int]] = field(default_factory=list)     # every byte written with out
    idtr: tuple[int, int] | None = None                             # (base, limit)
    memory: dict[int, bytes] = field(default_factory=dict)


class Emulated:
    """The purgatory at ``base`` in a flat ``size``-byte physical memory, under unicorn."""

    def __init__(self, image: bytes, *, base: int = 0x200000, size: int = 64 << 20) -> None:
        from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_MODE_64, Uc
        from unicorn.x86_const import UC_X86_INS_IN, UC_X86_INS_OUT

        self.base = base
        self.header = purgatory.parse(image).header
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.mem_map(0, size)
        self.uc.mem_write(base, image)
        self.serial: list[str] = []
        self.ports: list[tuple[int, int]] = []
        self.stopped_at: int | None = None
        self.uc.hook_add(UC_HOOK_INSN, self._out, None, 1, 0, UC_X86_INS_OUT)
        self.uc.hook_add(UC_HOOK_INSN, self._in, None, 1, 0, UC_X86_INS_IN)
        self._code_hook = UC_HOOK_CODE
        self.refuse = base + self.header["refuse_entry"]

    def _out(self, uc, port, size, value, user) -> None:
        self.ports.append((port, value & 0xFF))
        if port == UART:
            self.serial.append(chr(value & 0xFF))

    def _in(self, uc, port, size, user) -> int:
        return 0x60 if port == LSR else 0xFF

    def write(self, addr: int, data: bytes) -> None:
        self.uc.mem_write(addr, data)

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))

    def run(self, entry: int, *, limit: int = 50_000_000) -> Outcome:
        from unicorn import UcError
        from unicorn.x86_const import (UC_X86_REG_CR0, UC_X86_REG_CS, UC_X86_REG_DS, UC_X86_REG_EBP,
                                       UC_X86_REG_ECX, UC_X86_REG_EDI, UC_X86_REG_EDX, UC_X86_REG_ES,
                                       UC_X86_REG_FS, UC_X86_REG_GS, UC_X86_REG_IDTR, UC_X86_REG_MSR,
                                       UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RIP, UC_X86_REG_RSI,
                                       UC_X86_REG_RSP, UC_X86_REG_SS)

        def stop(uc, addr, size, user):
            self.stopped_at = addr
            uc.emu_stop()

        for addr in (entry, self.refuse):
            self.uc.hook_add(self._code_hook, stop, None, addr, addr)
        try:
            self.uc.emu_start(self.base, 0, count=limit)
        except UcError as e:
            raise AssertionError(f"the purgatory faulted at {self.uc.reg_read(UC_X86_REG_RIP):#x}: {e}") from e
        names = {"rax": UC_X86_REG_RAX, "rbx": UC_X86_REG_RBX, "rsi": UC_X86_REG_RSI, "rsp": UC_X86_REG_RSP,
                 "rip": UC_X86_REG_RIP, "cs": UC_X86_REG_CS, "ds": UC_X86_REG_DS, "ss": UC_X86_REG_SS,
                 "cr0": UC_X86_REG_CR0, "es": UC_X86_REG_ES, "ecx": UC_X86_REG_ECX, "edx": UC_X86_REG_EDX,
                 "edi": UC_X86_REG_EDI, "ebp": UC_X86_REG_EBP, "fs": UC_X86_REG_FS, "gs": UC_X86_REG_GS}
        regs = {k: self.uc.reg_read(v) for k, v in names.items()}
        efer = self.uc.reg_read(UC_X86_REG_MSR, 0xC0000080)
        _, idt_base, idt_limit, _ = self.uc.reg_read(UC_X86_REG_IDTR)
        real = not regs["cr0"] & 1
        return Outcome(self.stopped_at, regs, "".join(self.serial), self.stopped_at == self.refuse,
                       mode32=not real and self._code32(regs["cs"]), efer=efer, ports=list(self.ports),
                       idtr=(idt_base, idt_limit))

    def _code32(self, cs: int) -> bool:
        """Whether CS's descriptor in the loaded GDT is 32-bit code (D set, L clear), as the CPU decodes it."""
        from unicorn.x86_const import UC_X86_REG_GDTR
        _, base, _, _ = self.uc.reg_read(UC_X86_REG_GDTR)
        desc = int.from_bytes(self.read(base + (cs & ~7), 8), "little")
        return bool(desc >> 54 & 1) and not desc >> 53 & 1
