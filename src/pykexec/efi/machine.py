"""The emulation engine: unicorn, guest memory on demand, service traps, guest calls, bounds.

* Guest RAM is ``[0, memory)``, mapped into unicorn in 2 MiB chunks when the
  allocator hands them out or the guest first touches them (a fault re-run under
  a ``UC_HOOK_MEM_*_UNMAPPED`` hook, which is removed again: present all the time
  it would slow every load and store), so a 2 GiB guest costs only what it uses.
  Page 0 stays unmapped: a NULL access faults.
* Every service function pointer is a slot on the trap page.  One code hook,
  limited to that page, runs the Python service and returns to the caller.
* A service that must run guest code (StartImage, a LoadFile2 that belongs
  to the guest, notification functions) is a generator: it yields
  :class:`GuestCall` and gets the callee's return value back when the callee
  returns to the return trap.  ``Exit()`` unwinds to the StartImage that
  started the image, restoring the registers saved there.
* The CPU pages as UEFI firmware does (x86_64 paging, the arm64 MMU):
  identity-mapped tables (:mod:`.paging`) in a range reserved at 1 MiB, where
  no page is executable until code is fetched from it.  A fetch from a
  non-executable page is a page fault (arm64: a prefetch abort), seen by an
  interrupt hook (which costs nothing per instruction): the page is made
  executable and the fetch resumes.  This is what keeps stores fast: unicorn
  sends every store to an executable page down its slow self-modifying-code
  path, and with paging off every page is executable.
* After ExitBootServices the first instruction outside every loaded image and
  the trap page is the hand-over.  On x86_64 the pages outside them are made
  non-executable again, so the first fetch there faults; on arm64 (and where the
  tables cannot say it exactly) a block hook, added then with the translation
  cache flushed so the decompression before it runs unhooked, watches every
  block.
* Bounds: instructions (counted by a native block hook, checked at
  checkpoints), wall-clock time, and guest memory (the RAM size).
"""

from __future__ import annotations

import collections
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

from ..errors import EmulationError, EmulationFault, EmulationLimit, StubExited, StubHalted
from . import constants as c
from .cpu import ARCHES, BlockCounter, read_into
from .memory import EfiStatusError, MemoryMap
from .paging import Arm64IdentityMap, IdentityMap

log = logging.getLogger(__name__)

CHUNK = 2 << 20
PAGE_TABLES_AT = 0x100000      # x86_64: first page above the legacy hole; stubs allocate top down
OUTSIDE = "first instruction outside the loaded images"
TRAP_SLOT = 16
CHECKPOINT_BLOCKS = 1 << 25
# QEMU sizes its software TLB only when the TLB is flushed: doubled if more than
# 70 % of it was used since the last flush.  Nothing flushes it in a stub's
# decompression loop, so it would stay at its first 256 entries, and a TLB miss
# (a page walk through the guest's tables) costs ~20x a hit.  Flushes at these
# block counts let it grow to the working set of a decompressor.
TLB_GROWTH_BLOCKS = tuple(1 << n for n in range(14, 25))
NO_RETURN = object()
UNTIL = 0xFFFF_FFFF_FFFF_F000
MAPS = {"x86_64": IdentityMap, "arm64": Arm64IdentityMap}


@dataclass(frozen=True)
class Options:
    """Bounds and switches of one emulation run."""

    memory: int = 2 << 30
    max_instructions: int = 50_000_000_000
    max_seconds: float = 600.0
    history: int = 12
    trace: Callable[[str], None] | None = None
    #: "kernel": the hand-over to the kernel proper; "kernel-stub": the entry of a
    #: nested kernel's own EFI stub (see :mod:`.kernels`), else the hand-over
    stop_at: str = "kernel"
    #: ``progress("emulating", instructions, total)``: at each checkpoint (total None),
    #: and once at the hand-over (total = instructions)
    progress: Callable[[str, int, int | None], None] | None = None


@dataclass
class GuestCall:
    """Yielded by a generator service: call guest ``fn(*args)`` and send back its result."""

    fn: int
    args: list[int]
    start_image: int | None = None      # StartImage of this handle: Exit() unwinds to it


@dataclass
class Frame:
    gen: Generator
    caller: tuple[int, int]
    record: "CallRecord"
    base_sp: int
    context: Any = None
    start_image: int | None = None


@dataclass
class CallRecord:
    seq: int
    name: str
    args: list[int]
    pc: int
    notes: list[str] = field(default_factory=list)
    status: int | None = None
    shown: str | None = None

    def text(self) -> str:
        args = self.shown if self.shown is not None else ", ".join(f"{a:#x}" for a in self.args)
        status = "" if self.status is None else f" = {c.status_name(self.status)}"
        notes = f" [{'; '.join(self.notes)}]" if self.notes else ""
        return f"{self.name}({args}){status}{notes}"


@dataclass
class Image:
    """An image loaded into guest memory (by the emulator or by LoadImage)."""

    handle: int
    base: int
    size: int
    entry: int
    source: bytes
    loaded_image: int
    parent: int
    name: str
    started: bool = False
    #: where the boot protocol enters the kernel inside this image, if it is one
    #: (a bzImage's startup_64; an arm64 Image's first instruction and primary_entry)
    kernel_entries: dict[int, str] = field(default_factory=dict)


class Engine:
    """unicorn plumbing shared by the boot services (see :mod:`.services`)."""

    def __init__(self, arch: str, options: Options) -> None:
        if arch not in ARCHES:
            raise ValueError(f"arch must be one of {', '.join(ARCHES)}, not {arch!r}")
        self.arch = arch
        self.options = options
        self.cpu = ARCHES[arch].create()
        self.uc = self.cpu.uc
        self.memory = MemoryMap(options.memory)
        self.mapped: set[int] = set()
        self.fault: str | None = None
        self.failure: BaseException | None = None
        self.stop_reason: str | None = None
        self.frames: list[Frame] = []
        self.history: collections.deque[str] = collections.deque(maxlen=options.history)
        self.call_counts: collections.Counter[str] = collections.Counter()
        self.seq = 0
        self.record: CallRecord | None = None
        self.images: list[Image] = []
        self.stub_regions: list[tuple[int, int]] = []
        self.exit_boot_services_done = False
        self.handover: dict | None = None
        self.pending_hooks: list[tuple[int, Callable]] = []
        self.traps: list[tuple[str, Callable, int]] = []
        self.trap_base = 0
        self.trap_end = 0
        self.return_trap = 0
        self.top_return_trap = 0
        self.started = 0.0
        self.instructions: int | None = None
        self._icount: dict[int, int] = {}
        u = __import__("unicorn")
        self._u = u
        # unicorn's "virtual" TLB mode would make stores cheaper but every TLB fill dearer
        # (it restores the guest state from the TB on each fill); decompressors miss the
        # TLB often, and measured on the real stubs the default (CPU) mode is faster.
        self.cpu.make_deterministic()
        # Memory is mapped when the allocator hands it out.  An access anywhere else
        # in RAM is mapped when it faults: an unmapped-memory hook slows every load
        # and store ~4x, so it is only added while re-running the faulting instruction.
        self.memory.on_allocate = self.ensure_mapped
        self._probe: int | None = None
        self.counter = BlockCounter.create(self.uc, with_table=True)
        self.paging: IdentityMap | None = None
        self.code_pages: set[int] = set()     # pages code was fetched from
        self._last_fault: tuple[int, int] | None = None
        self._block_hook: int | None = None
        self._exec_later: int | None = None
        self._fault_pc: int | None = None
        self._start_paging()

    # -- x86_64 paging ---------------------------------------------------------------
    def _start_paging(self) -> None:
        """Identity-mapped page tables in EfiBootServicesData at 1 MiB; nothing executable yet.

        At a fixed low address, so that every allocation (top down) lands where
        it would without them.  Left off (paging off, every page executable: slow
        stores) where this unicorn cannot resume after a page fault, or the
        guest is too small to hold the tables.
        """
        ram = self.memory.ram_size
        tables = MAPS[self.arch]
        size = tables.size(ram)
        if PAGE_TABLES_AT + size > ram or not tables.fits(ram):
            return
        if not self.cpu.resumes_after_faults():
            log.warning("this unicorn cannot resume after a page fault; running with paging off")
            return
        self.memory.reserve(PAGE_TABLES_AT, size, c.BS_DATA)
        self.paging = tables(PAGE_TABLES_AT, self.memory.ram_size, self.write,
                             phys_bits=self.cpu.phys_bits)
        self.paging.build()
        self.cpu.enable_paging(self.paging.root)
        self.uc.hook_add(self._u.UC_HOOK_INTR, self._on_exception)

    def _on_exception(self, uc, intno, data) -> None:
        """UC_HOOK_INTR: a page fault is resolved here; any other exception ends the run,
        as it did before the hook (unicorn's "Unhandled CPU exception")."""
        if self.stop_reason is not None or self.failure is not None:
            return      # stopping already; the faulting instruction is retried after the stop
        try:
            if intno == self.cpu.PAGE_FAULT:
                self._on_page_fault()
                return
            name = self.cpu.VECTORS.get(intno)
            self._stop_on_fault(f"{self._u.UcError(self._u.UC_ERR_EXCEPTION)}: vector {intno}"
                                + (f" ({name})" if name else ""))
        except BaseException as e:  # noqa: BLE001 - re-raised by run()
            self.failure = e
            self.uc.emu_stop()

    def _stop_on_fault(self, what: str) -> None:
        self.fault = what
        self._fault_pc = self.cpu.pc()
        self.stop_reason = "fault"
        self.uc.emu_stop()

    def _on_page_fault(self) -> None:
        """A #PF: a fetch from a page not (yet) executable, or an access outside RAM."""
        addr, pc = self.cpu.fault_address(), self.cpu.pc()
        if self.cpu.page_table_root() != self.paging.root:
            self._stop_on_fault(f"page fault at {addr:#x} under page tables the guest loaded "
                                f"itself (CR3 {self.cpu.page_table_root():#x})")
            return
        if self._last_fault == (pc, addr):
            self._stop_on_fault(f"page fault at {addr:#x} again after it was resolved")
            return
        self._last_fault = (pc, addr)
        if not c.PAGE <= addr < self.memory.ram_size:
            # the NULL page or beyond RAM: let the access through to unicorn's
            # unmapped-memory check, which names it as it did with paging off (kind,
            # size, address); never a hand-over
            if self.paging.covers(addr):
                self.paging.allow_exec(addr)        # present and writable: a fetch
            elif not self.paging.map_beyond(addr) and not self._unpage():
                ram = self.memory.ram_size
                self._stop_on_fault(f"access at {addr:#x}, outside guest RAM [0, {ram:#x})")
                return
            self.cpu.forget_exception()
            return
        # all RAM is present and writable: this is an instruction fetch
        if self.exit_boot_services_done:
            if self._left_images(pc):
                return
            if not self.in_images(addr):
                # a block that runs off the edge of an image: let the block hook decide
                self._exec_later = addr
                self.stop_reason = "blocks"
                self.uc.emu_stop()
                return
        page = addr & ~(c.PAGE - 1)
        if page not in self.code_pages:
            self.code_pages.add(page)
            self._watch_rdtsc_page(page)
        if not self.paging.allow_exec(addr) and self.exit_boot_services_done:
            self.stop_reason = "blocks"     # a whole 2 MiB is executable: not exact any more
            self.uc.emu_stop()
        self.cpu.forget_exception()

    def _protect_images(self) -> bool:
        """At ExitBootServices: only the images, the stubs' regions and the traps stay executable.

        Then the first fetch anywhere else faults, and is the hand-over.  False
        where the tables cannot say that exactly (a 2 MiB region executable whole),
        and on arm64, whose stubs turn the MMU off (efi_enter_kernel, as booting.rst
        requires) before they branch to the kernel: that branch never faults.
        """
        if self.paging is None or self.arch != "x86_64":
            return False
        exact = self.paging.deny_exec(self.in_images)
        self.cpu.load_page_tables(self.paging.root)     # flush the TLB
        self._last_fault = None
        return exact

    def _watch_blocks(self) -> None:
        if self._block_hook is None:
            self._block_hook = self.uc.hook_add(self._u.UC_HOOK_BLOCK, self._on_block)

    # -- guest memory ----------------------------------------------------------------
    def _map_chunk(self, index: int) -> None:
        start = index * CHUNK
        lo = max(start, c.PAGE)
        self.uc.mem_map(lo, start + CHUNK - lo)
        self.mapped.add(index)

    def ensure_mapped(self, addr: int, size: int) -> None:
        if addr < c.PAGE or addr + size > self.memory.ram_size:
            raise EmulationLimit(f"[{addr:#x}, +{size:#x}) is outside guest RAM "
                                 f"[{c.PAGE:#x}, {self.memory.ram_size:#x})")
        for index in range(addr // CHUNK, (addr + max(size, 1) - 1) // CHUNK + 1):
            if index not in self.mapped:
                self._map_chunk(index)

    def _on_unmapped(self, uc, access, addr, size, value, data) -> bool:
        if c.PAGE <= addr and addr + size <= self.memory.ram_size:
            self.ensure_mapped(addr, size)
            self.stop_reason = self.stop_reason or "mapped"
            self.uc.emu_stop()
            return True
        if self._unpage():
            # arm64: a data access the tables do not map is reported at address 0
            self.stop_reason = "unpaged"
            return False
        kinds = {self._u.UC_MEM_READ_UNMAPPED: "read", self._u.UC_MEM_WRITE_UNMAPPED: "write",
                 self._u.UC_MEM_FETCH_UNMAPPED: "instruction fetch"}
        where = "the NULL page" if addr < c.PAGE else \
            f"outside guest RAM [0, {self.memory.ram_size:#x})"
        self.fault = f"{kinds.get(access, 'access')} of {size} bytes at {addr:#x}, {where}"
        return False

    def _unpage(self) -> bool:
        """arm64: turn the MMU off, so that an access beyond RAM re-runs untranslated and
        unicorn names it exactly (see paging.Arm64IdentityMap).  False on x86_64."""
        if self.paging is None or not self.cpu.disable_paging():
            return False
        self.paging = None
        return True

    def read(self, addr: int, size: int) -> bytes:
        if size == 0:
            return b""
        self.ensure_mapped(addr, size)
        return bytes(self.uc.mem_read(addr, size))

    def read_sparse(self, addr: int, size: int) -> bytes:
        """Read a large range; chunks never touched read as zeros."""
        out = bytearray(size)
        pos, end = addr, addr + size
        while pos < end:
            index = pos // CHUNK
            stop = min(end, (index + 1) * CHUNK)
            if index in self.mapped and pos >= c.PAGE:
                read_into(self.uc, pos, out, pos - addr, stop - pos)
            pos = stop
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        if data:
            self.ensure_mapped(addr, len(data))
            self.uc.mem_write(addr, bytes(data))

    def u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def u32(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 4), "little")

    def put64(self, addr: int, value: int) -> None:
        self.write(addr, (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"))

    def put32(self, addr: int, value: int) -> None:
        self.write(addr, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def utf16(self, addr: int, limit: int = 1 << 16) -> str:
        out = bytearray()
        while len(out) < limit:
            ch = self.read(addr + len(out), 2)
            if ch == b"\0\0":
                break
            out += ch
        return out.decode("utf-16-le", "replace")

    def guid_at(self, addr: int) -> bytes:
        if addr == 0:
            raise EfiStatusError(c.EFI_INVALID_PARAMETER, "NULL GUID pointer")
        return self.read(addr, 16)

    def alloc(self, mem_type: int, size: int) -> int:
        """Pages for the firmware's own structures, mapped and zeroed."""
        pages = -(-size // c.PAGE)
        addr = self.memory.allocate_pages(c.ALLOCATE_ANY_PAGES, mem_type, pages)
        self.write(addr, bytes(pages * c.PAGE))
        return addr

    # -- traps and calls -------------------------------------------------------------
    def setup_traps(self, slots: int = 512) -> None:
        size = slots * TRAP_SLOT
        self.trap_base = self.alloc(c.RT_CODE, size)
        self.trap_end = self.trap_base + size
        self.write(self.trap_base, self.cpu.trap.ljust(TRAP_SLOT, b"\0") * slots)
        self.uc.hook_add(self._u.UC_HOOK_CODE, self._on_trap, begin=self.trap_base,
                         end=self.trap_end - 1)
        self.return_trap = self.add_trap("<return>", self._returned)
        self.top_return_trap = self.add_trap("<entry returned>", self._entry_returned)

    def add_trap(self, name: str, fn: Callable) -> int:
        """A trap slot that runs ``fn`` when called; its arguments come from the call."""
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind == p.POSITIONAL_OR_KEYWORD]
        addr = self.trap_base + TRAP_SLOT * len(self.traps)
        if addr >= self.trap_end:
            raise RuntimeError("out of trap slots")
        self.traps.append((name, fn, len(params)))
        return addr

    def _on_trap(self, uc, addr, size, data) -> None:
        try:
            index = (addr - self.trap_base) // TRAP_SLOT
            if index >= len(self.traps) or (addr - self.trap_base) % TRAP_SLOT:
                raise EmulationFault(f"jump into the trap page at {addr:#x}, not a service entry",
                                     pc=addr, calls=tuple(self.history))
            name, fn, nargs = self.traps[index]
            if fn in (self._returned, self._entry_returned):
                fn()
                return
            self._dispatch(name, fn, nargs)
        except BaseException as e:  # noqa: BLE001 - re-raised by run()
            self.failure = e
            self.uc.emu_stop()

    def _guarded(self, fn: Callable) -> Callable:
        def hook(uc, addr, size, data) -> None:
            try:
                fn(uc, addr, size, data)
            except BaseException as e:  # noqa: BLE001 - re-raised by run()
                self.failure = e
                self.uc.emu_stop()
        return hook

    def _dispatch(self, name: str, fn: Callable, nargs: int) -> None:
        caller = self.cpu.caller()
        args = self.cpu.args(nargs)
        self.seq += 1
        self.call_counts[name] += 1
        record = CallRecord(self.seq, name, args, caller[0])
        outer, self.record = self.record, record
        try:
            try:
                result = fn(*args)
            except EfiStatusError as e:
                if e.why:
                    record.notes.append(e.why)
                result = e.status
            if inspect.isgenerator(result):
                frame = Frame(result, caller, record, base_sp=self.cpu.sp())
                self.frames.append(frame)
                self._advance(frame, None)
                return
            if result is NO_RETURN:
                return
            self._complete(record, result, caller)
        finally:
            self.record = outer

    def _advance(self, frame: Frame, value: Any) -> None:
        outer, self.record = self.record, frame.record
        try:
            try:
                request = frame.gen.send(value)
            except StopIteration as stop:
                self.frames.remove(frame)
                self._complete(frame.record, stop.value, frame.caller)
                return
            except EfiStatusError as e:
                self.frames.remove(frame)
                if e.why:
                    frame.record.notes.append(e.why)
                self._complete(frame.record, e.status, frame.caller)
                return
            if request.start_image is not None:
                frame.context = self.cpu.context()
                frame.start_image = request.start_image
            self.cpu.call(request.fn, request.args, self.return_trap, sp=frame.base_sp)
        finally:
            self.record = outer

    def drive(self, name: str, gen: Generator) -> None:
        """From a hook, run ``gen`` as a service is run: each GuestCall it yields runs guest code.

        When ``gen`` returns, its value goes in the result register and execution
        goes on at the PC and stack the hook saw (a capture stops the run first).
        """
        self.seq += 1
        self.call_counts[name] += 1
        here = (self.cpu.pc(), self.cpu.sp())
        frame = Frame(gen, here, CallRecord(self.seq, name, [], here[0]), base_sp=here[1])
        self.frames.append(frame)
        self._advance(frame, None)

    def _complete(self, record: CallRecord, status: int, caller: tuple[int, int]) -> None:
        record.status = status
        text = record.text()
        self.history.append(text)
        if self.options.trace:
            self.options.trace(f"[{record.seq}] {text}")
        self.cpu.finish(status, caller)

    def show(self, text: str) -> None:
        """The current call's arguments, decoded, for its trace line."""
        if self.record is not None:
            self.record.shown = text

    def note(self, text: str) -> None:
        """Add a detail (decoded arguments, outputs) to the current call's trace line."""
        if self.record is not None:
            self.record.notes.append(text)

    def _returned(self) -> None:
        if not self.frames:
            raise EmulationFault("a return to the emulator's return trap with no call pending",
                                 pc=self.cpu.pc(), calls=tuple(self.history))
        self._advance(self.frames[-1], self.cpu.result())

    def _entry_returned(self) -> None:
        status = self.cpu.result()
        raise StubExited(f"the image's entry point returned {c.status_name(status)} "
                         "without handing over to a kernel", pc=self.cpu.pc(),
                         calls=tuple(self.history), instructions=self.count_instructions())

    def unwind_exit(self, handle: int, status: int) -> bool:
        """Exit(): return from the StartImage of ``handle`` with ``status``; False if none."""
        for i in range(len(self.frames) - 1, -1, -1):
            frame = self.frames[i]
            if frame.start_image == handle:
                for dead in self.frames[i + 1:]:
                    dead.gen.close()
                del self.frames[i + 1:]
                self.cpu.restore(frame.context)
                self._advance(frame, status)
                return True
        return False

    # -- hand-over detection -----------------------------------------------------------
    def in_images(self, pc: int) -> bool:
        if self.trap_base <= pc < self.trap_end:
            return True
        if any(start <= pc < end for start, end in self.stub_regions):
            return True
        return any(img.base <= pc < img.base + img.size for img in self.images)

    def _note_stub_regions(self) -> None:
        """At ExitBootServices: the allocations that ran code so far belong to the stubs.

        systemd-stub (v256 and later, with Secure Boot off) lays the kernel's PE
        image out in pages it allocated and calls it itself; that kernel's stub
        then runs from memory no LoadImage produced.  The block counter's table
        and, on x86_64, the pages code was fetched from say which addresses ran
        before ExitBootServices.
        """
        ran = set(self.code_pages)
        if self.counter is not None:
            ran.update(self.counter.block_counts())
        seen: set[tuple[int, int]] = set()
        for addr in ran:
            alloc = self.memory.allocation_containing(addr)
            if alloc is not None:
                seen.add((alloc[0], alloc[1]))
        self.stub_regions = sorted(seen)

    def after_exit_boot_services(self) -> None:
        self.exit_boot_services_done = True
        self.stop_reason = "ebs"
        self.uc.emu_stop()

    def _on_block(self, uc, addr, size, data) -> None:
        self._left_images(addr)

    def _left_images(self, pc: int) -> bool:
        """After ExitBootServices, code at ``pc`` outside every image is the hand-over."""
        if self.handover is None and not self.in_images(pc):
            self._handover(pc, OUTSIDE)
            return True
        return False

    def _on_kernel_entry(self, uc, addr, size, data) -> None:
        if self.exit_boot_services_done and self.handover is None:
            names = (img.kernel_entries.get(addr) for img in self.images)
            self._handover(addr, next((n for n in names if n), "a kernel entry point"))

    def _handover(self, pc: int, how: str) -> None:
        self.handover = {"pc": pc, "how": how, "registers": self.cpu.handover_registers(),
                         "stopped_at": "kernel"}
        self.stop_reason = "handover"
        self.uc.emu_stop()

    def watch(self, addr: int, fn: Callable) -> None:
        """Run ``fn(uc, addr, size, data)`` when the instruction at ``addr`` executes."""
        self.pending_hooks.append((addr, fn))
        self.stop_reason = self.stop_reason or "hooks"
        self.uc.emu_stop()

    def watch_kernel_entries(self, image: Image) -> None:
        """After ExitBootServices, reaching one of ``image.kernel_entries`` is the hand-over:
        a stub that runs the kernel in place never leaves its image."""
        for addr in image.kernel_entries:
            self.watch(addr, self._on_kernel_entry)

    def _on_rdtsc(self, uc, addr, size, data) -> None:
        # A virtual time-stamp counter: 1 GHz from the blocks executed, so the same
        # image reads the same values (the host's TSC would leak into KASLR seeds).
        blocks = self.counter.counters.blocks if self.counter else self.seq
        self.tsc = max(getattr(self, "tsc", 0) + 1, 1_000_000_000 + 64 * blocks)
        self.cpu.timestamp(self.tsc, 3 if self.read(addr, 3) == b"\x0f\x01\xf9" else 2)

    def watch_rdtsc(self, base: int, image: bytes, ranges) -> int:
        """Hook every RDTSC/RDTSCP byte pattern starting in ``ranges`` (RVAs) of ``image`` at ``base``.

        A hook fires only at an instruction boundary, so a pattern inside another
        instruction's bytes costs a hook that never runs, never a wrong result.
        """
        found = 0
        for start, end in ranges:
            for pattern in getattr(self.cpu, "RDTSC", ()):
                at = image.find(pattern, start, end + len(pattern) - 1)
                while 0 <= at < end:
                    self.watch(base + at, self._on_rdtsc)
                    found += 1
                    at = image.find(pattern, at + 1, end + len(pattern) - 1)
        return found

    def _watch_rdtsc_page(self, page: int) -> None:
        """First fetch from a page no LoadImage produced (systemd-stub 256+ lays the
        kernel's image out itself): its RDTSCs read the virtual counter too."""
        if not getattr(self.cpu, "RDTSC", ()) or \
                any(img.base <= page < img.base + img.size for img in self.images):
            return      # no such instruction here, or watched when it was loaded
        end = min(page + c.PAGE + 2, self.memory.ram_size)
        self.watch_rdtsc(page, self.read(page, end - page), [(0, c.PAGE)])

    # -- running -----------------------------------------------------------------------
    def count_instructions(self) -> int | None:
        """Instructions executed so far: exact, from the native block counter."""
        if self.counter is None:
            return None
        k = self.counter.counters
        if self.arch == "arm64":
            return k.bytes // 4
        counts = self.counter.block_counts()
        new = [addr for addr in counts if addr not in self._icount]
        if new and self.paging is not None:
            # unicorn translates through the page tables, and a page fault while it
            # does so outside emulation crashes the process: under these tables all
            # RAM is executable.  Loading either flushes the TLB.
            self.cpu.load_page_tables(self.paging.translate_root)
        try:
            for addr in new:
                try:
                    self._icount[addr] = self.uc.ctl_request_cache(addr)[1]
                except Exception:  # noqa: BLE001 - memory gone since: estimate from bytes
                    self._icount[addr] = 0
        finally:
            if new and self.paging is not None:
                self.cpu.load_page_tables(self.paging.root)
        total = sum(n * self._icount[addr] for addr, n in counts.items())
        # blocks the table had no room for: 4 bytes an instruction, a stated approximation
        return total + k.overflow_bytes // 4

    def run(self, entry: int, args: list[int], stack_top: int) -> dict:
        """Call ``entry(*args)`` and run until the hand-over; return it."""
        self.cpu.call(entry, args, self.top_return_trap, sp=stack_top + 256)
        for addr, fn in self.pending_hooks:
            self.uc.hook_add(self._u.UC_HOOK_CODE, self._guarded(fn), begin=addr, end=addr)
        self.pending_hooks.clear()
        self.started = time.monotonic()
        checkpoint = CHECKPOINT_BLOCKS
        growth = collections.deque(TLB_GROWTH_BLOCKS)
        if self.counter:
            self.counter.counters.stop_at = growth[0]
        while True:
            self.stop_reason = None
            remaining = self.options.max_seconds - (time.monotonic() - self.started)
            if remaining <= 0:
                self._limit(f"time limit of {self.options.max_seconds:g} s reached")
            pc = self.cpu.pc()
            if self.paging is not None:
                self.cpu.forget_exception()     # a fault a hook stopped at is over
            try:
                # unicorn's timeout costs ~2x in CPU time: with the block counter the
                # time limit is checked at its checkpoints instead
                timeout = 0 if self.counter else int(remaining * 1e6)
                self.uc.emu_start(pc, UNTIL, timeout=timeout)
            except self._u.UcError as e:
                unmapped = (self._u.UC_ERR_READ_UNMAPPED, self._u.UC_ERR_WRITE_UNMAPPED,
                            self._u.UC_ERR_FETCH_UNMAPPED)
                if self.failure is None and e.errno in unmapped and self._probe is None:
                    u = self._u
                    self._probe = self.uc.hook_add(
                        u.UC_HOOK_MEM_READ_UNMAPPED | u.UC_HOOK_MEM_WRITE_UNMAPPED
                        | u.UC_HOOK_MEM_FETCH_UNMAPPED, self._on_unmapped)
                    continue
                if self.failure is None and self.stop_reason == "unpaged":
                    continue
                if self.failure is None:
                    raise self._fault(self.fault or str(e)) from e
            if self._probe is not None:
                self.uc.hook_del(self._probe)
                self._probe = None
            if self.failure is not None:
                failure, self.failure = self.failure, None
                if isinstance(failure, EmulationError):
                    raise failure
                raise EmulationError(f"{type(failure).__name__} in the emulator: {failure}",
                                     pc=self.cpu.pc(), calls=tuple(self.history)) from failure
            if self.stop_reason == "handover":
                self.instructions = self.count_instructions()
                if self.options.progress and self.instructions is not None:
                    self.options.progress("emulating", self.instructions, self.instructions)
                return self.handover
            if self.stop_reason == "fault":
                raise self._fault(self.fault, self._fault_pc)
            if self.stop_reason == "ebs":
                self._note_stub_regions()
                if not self._protect_images():
                    self._watch_blocks()
                self.uc.ctl_flush_tb()
            if self.stop_reason == "blocks":
                self._watch_blocks()
                self.uc.ctl_flush_tb()
                if self._exec_later is not None:
                    self.paging.allow_exec(self._exec_later)
                    self._exec_later = None
            if self.pending_hooks:
                for addr, fn in self.pending_hooks:
                    self.uc.hook_add(self._u.UC_HOOK_CODE, self._guarded(fn),
                                     begin=addr, end=addr)
                self.pending_hooks.clear()
                self.uc.ctl_flush_tb()
            if self.stop_reason is not None:
                continue
            if growth and self.counter and self.counter.counters.blocks >= growth[0]:
                self.cpu.flush_tlb()
                while growth and growth[0] <= self.counter.counters.blocks:
                    growth.popleft()
                self.counter.counters.stop_at = min(growth[0] if growth else checkpoint,
                                                    checkpoint)
                continue
            if self.counter and self.counter.counters.blocks >= checkpoint:
                if time.monotonic() - self.started >= self.options.max_seconds:
                    self._limit(f"time limit of {self.options.max_seconds:g} s reached")
                n = self.count_instructions()
                if n is not None and n >= self.options.max_instructions:
                    self._limit(f"instruction limit of {self.options.max_instructions} reached")
                if self.options.progress and n is not None:
                    self.options.progress("emulating", n, None)
                checkpoint += CHECKPOINT_BLOCKS
                self.counter.counters.stop_at = checkpoint
                continue
            if time.monotonic() - self.started >= self.options.max_seconds:
                self._limit(f"time limit of {self.options.max_seconds:g} s reached")
            raise StubHalted("the image halted (a halt or wait-for-interrupt instruction) before any "
                             "hand-over to a kernel, waiting as a boot loader does and a kernel's EFI "
                             f"stub never does{self.said()}", pc=self.cpu.pc(),
                             calls=tuple(self.history), instructions=self.count_instructions())

    def said(self) -> str:
        """What the image printed, for an error ("; it printed: ..."): the firmware's to say."""
        return ""

    def _limit(self, what: str):
        raise EmulationLimit(f"{what}: the stub loops or needs more", pc=self.cpu.pc(),
                             calls=tuple(self.history), instructions=self.count_instructions())

    def _fault(self, what: str, pc: int | None = None) -> EmulationFault:
        self.fault = None
        return EmulationFault(f"emulated code faulted: {what}",
                              pc=self.cpu.pc() if pc is None else pc,
                              calls=tuple(self.history), instructions=self.count_instructions())

    def elapsed(self) -> float:
        return time.monotonic() - self.started
