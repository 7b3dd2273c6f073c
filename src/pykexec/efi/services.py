"""The firmware: system table, boot and runtime services, console, initrd, image loader.

UEFI 2.10 chapters 4 (tables), 7 (boot services), 8 (runtime services), 9
(loaded image), 12 (console) and 13.2 (LoadFile2).  What is here is what the
Linux EFI stub (drivers/firmware/efi/libstub), its 6.1-era zboot wrapper and
systemd-stub call; each service either does what the specification says or
answers with the status the specification gives for what this firmware does
not have (no drivers, no file systems, no RNG, no TPM, no graphics):
``EFI_UNSUPPORTED`` for a protocol a handle lacks, ``EFI_NOT_FOUND`` for a
search that finds nothing.  Nothing answers success without doing the work.

Determinism: there is no RNG protocol, GetTime answers a fixed clock moved
only by Stall(), and allocation is top down from fixed addresses, so the same
image, initrd and command line always give the same memory contents.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..errors import EmulationError, StubExited
from ..formats import arm64_image, bzimage
from . import constants as c
from . import kernels
from .handles import HandleDatabase, device_path_bytes, file_path, parse_device_path, path_text, \
    vendor_media_path
from .machine import NO_RETURN, Engine, GuestCall, Image, Options
from .memory import EfiStatusError, Pools
from .peload import layout, read_pe

FIRMWARE_VENDOR = "pykexec"
FIRMWARE_REVISION = 0x00010000
EPOCH = (2026, 1, 1)
STACK_SIZE = 1 << 20
CONFIG_TABLE_CAPACITY = 64
HANDLE_ARENA = 64 << 10
TWO_MIB = 2 << 20
MAX_VARIADIC_PAIRS = 32


def hx(v: int) -> str:
    return f"{v:#x}"


@dataclass
class Event:
    handle: int
    type: int
    tpl: int
    notify: int
    context: int
    group: bytes | None = None
    signaled: bool = False
    timer_due: int | None = None
    timer_period: int = 0


class Firmware(Engine):
    """An emulated UEFI firmware around one unicorn CPU."""

    def __init__(self, arch: str, options: Options, *, initrd: bytes | None = None) -> None:
        super().__init__(arch, options)
        self.setup_traps()
        self.pools = Pools(self.memory)
        self._arena = self.alloc(c.BS_DATA, HANDLE_ARENA)
        self._arena_next = 0
        self.handles = HandleDatabase(self._fresh_handle)
        self.images_by_handle: dict[int, Image] = {}
        self.events: dict[int, Event] = {}
        self.notifies: list[tuple[bytes, int, int]] = []   # guid, event, registration
        self.variables: dict[tuple[str, bytes], tuple[int, bytes]] = {}
        self.config_tables: list[tuple[bytes, int]] = []
        self.console: list[str] = []
        self.clock_us = 0
        self.monotonic = 0
        self.tpl = c.TPL_APPLICATION
        self.watchdog: int | None = None
        self.ebs_image: int | None = None
        self.initrd = initrd
        self.initrd_handle: int | None = None
        # --stop-at kernel-stub: kernels found in loaded images' sections (a UKI's .linux),
        # and the entry points watched, each with the kernel, base and image expected there
        self.kernel_sections: list[kernels.Kernel] = []
        self.entry_watches: dict[int, list[tuple[kernels.Kernel, int, Image | None]]] = {}
        self.stack_top = self.alloc(c.BS_DATA, STACK_SIZE) + STACK_SIZE
        self._build_tables()

    # -- construction ------------------------------------------------------------------
    def _fresh_handle(self) -> int:
        if self._arena_next >= HANDLE_ARENA:
            raise EfiStatusError(c.EFI_OUT_OF_RESOURCES, "out of handles")
        value = self._arena + self._arena_next
        self._arena_next += 16
        return value

    def _table(self, names: tuple[str, ...], prefix: str, signature: int, mem_type: int) -> int:
        size = c.TABLE_HEADER_SIZE + 8 * len(names)
        addr = self.alloc(mem_type, size)
        body = b""
        for name in names:
            fn = getattr(self, f"{prefix}_{name}", None)
            label = f"{'BS' if prefix == 'bs' else 'RT'}.{name}"
            body += struct.pack("<Q", self.add_trap(label, fn or self._unsupported(label)))
        self.write(addr + c.TABLE_HEADER_SIZE, body)
        self._header(addr, signature, size)
        return addr

    def _header(self, addr: int, signature: int, size: int) -> None:
        self.write(addr, struct.pack("<QIIII", signature, c.SPEC_REVISION, size, 0, 0))
        crc = zlib.crc32(self.read(addr, size))
        self.put32(addr + 16, crc)

    def _unsupported(self, label: str):
        def service() -> int:
            self.note("not provided by this firmware")
            return c.EFI_UNSUPPORTED
        service.__name__ = label
        return service

    def _protocol(self, names: tuple[str, ...], prefix: str, extra: int = 0) -> int:
        addr = self.alloc(c.BS_DATA, 8 * len(names) + extra)
        for i, name in enumerate(names):
            self.put64(addr + 8 * i, self.add_trap(f"{prefix}.{name}", getattr(self, f"{prefix.lower()}_{name}")))
        return addr

    def _build_tables(self) -> None:
        self.bs = self._table(c.BOOT_SERVICES, "bs", c.BOOT_SERVICES_SIGNATURE, c.BS_DATA)
        self.rt = self._table(c.RUNTIME_SERVICES, "rt", c.RUNTIME_SERVICES_SIGNATURE, c.RT_DATA)
        vendor = (FIRMWARE_VENDOR + "\0").encode("utf-16-le")
        self.st = self.alloc(c.RT_DATA, c.ST_SIZE + len(vendor) + 24 * CONFIG_TABLE_CAPACITY)
        self.vendor = self.st + c.ST_SIZE
        self.config_array = (self.vendor + len(vendor) + 15) & ~15
        self.write(self.vendor, vendor)
        # console out: nine functions, then the Mode pointer; Mode follows
        self.con_out = self._protocol(c.TEXT_OUTPUT, "ConOut", extra=8 + 24)
        self.con_out_mode = self.con_out + 8 * len(c.TEXT_OUTPUT) + 8
        self.put64(self.con_out + 8 * len(c.TEXT_OUTPUT), self.con_out_mode)
        self.write(self.con_out_mode, struct.pack("<iiiiiB", 1, 0, 0x07, 0, 0, 1))
        self.con_in = self._protocol(c.TEXT_INPUT, "ConIn", extra=8)
        wait_for_key = self._new_event(c.EVT_NOTIFY_WAIT, c.TPL_NOTIFY, 0, 0)
        self.put64(self.con_in + 16, wait_for_key)
        self.console_handle = self.handles.install(0, c.SIMPLE_TEXT_OUTPUT_PROTOCOL, self.con_out)
        self.handles.install(self.console_handle, c.SIMPLE_TEXT_INPUT_PROTOCOL, self.con_in)
        st = struct.pack("<QIIII", c.SYSTEM_TABLE_SIGNATURE, c.SPEC_REVISION, c.ST_SIZE, 0, 0)
        st += struct.pack("<QI4xQQQQQQQQQQ", self.vendor, FIRMWARE_REVISION,
                          self.console_handle, self.con_in, self.console_handle, self.con_out,
                          self.console_handle, self.con_out, self.rt, self.bs, 0, self.config_array)
        self.write(self.st, st)
        # EFI_RT_PROPERTIES_TABLE, version 1: no runtime service is usable after
        # ExitBootServices, in particular not SetVirtualAddressMap.
        rt_props = self.alloc(c.RT_DATA, 8)
        self.write(rt_props, struct.pack("<HHI", 1, 8, 0))
        self._set_config_table(c.RT_PROPERTIES_TABLE, rt_props)
        if self.initrd is not None:
            self._install_initrd()

    def _install_initrd(self) -> None:
        """LINUX_EFI_INITRD_MEDIA: VenMedia(5568e427-...)/End with a LoadFile2 that gives the initrd."""
        path = vendor_media_path(c.LINUX_EFI_INITRD_MEDIA)
        iface = self.alloc(c.BS_DATA, 8 + len(path))
        self.put64(iface, self.add_trap("InitrdLoadFile2.LoadFile", self.initrd_LoadFile))
        self.write(iface + 8, path)
        self.initrd_handle = self.handles.install(0, c.DEVICE_PATH_PROTOCOL, iface + 8)
        self.handles.install(self.initrd_handle, c.LOAD_FILE2_PROTOCOL, iface)

    def _set_config_table(self, guid: bytes, table: int) -> None:
        for i, (g, _) in enumerate(self.config_tables):
            if g == guid:
                if table:
                    self.config_tables[i] = (guid, table)
                else:
                    del self.config_tables[i]
                break
        else:
            if not table:
                raise EfiStatusError(c.EFI_NOT_FOUND, f"no {c.guid_name(guid)} table to delete")
            if len(self.config_tables) >= CONFIG_TABLE_CAPACITY:
                raise EfiStatusError(c.EFI_OUT_OF_RESOURCES, "configuration table is full")
            self.config_tables.append((guid, table))
        self.write(self.config_array, b"".join(g + struct.pack("<Q", t)
                                               for g, t in self.config_tables))
        self.put64(self.st + c.ST_NUMBER_OF_TABLE_ENTRIES, len(self.config_tables))
        self.put32(self.st + 16, 0)
        self.put32(self.st + 16, zlib.crc32(self.read(self.st, c.ST_SIZE)))

    # -- images ------------------------------------------------------------------------
    def load_image(self, data: bytes, *, parent: int, name: str, file_path_dp: bytes | None,
                   device_handle: int = 0, full_path: bytes | None = None) -> Image:
        """Place a PE image as firmware does and give it a handle with LOADED_IMAGE."""
        info = read_pe(data)
        if info.machine != self.cpu.machine:
            raise EfiStatusError(c.EFI_UNSUPPORTED, f"PE machine {info.machine:#x} is not "
                                 f"{self.cpu.machine:#x} ({self.arch})")
        if info.subsystem not in c.SUBSYSTEMS:
            raise EfiStatusError(c.EFI_UNSUPPORTED, f"PE subsystem {info.subsystem} is not an "
                                 "EFI image")
        pages = -(-info.size_of_image // c.PAGE)
        # Aligned to SectionAlignment but never to 2 MiB, as loaders that honour only
        # SectionAlignment often place images: the arm64 stub then mostly copies the
        # kernel out of the image, and the hand-over is seen leaving the image (a stub
        # that runs it in place is caught at kernel_entries instead).
        base = self.memory.allocate_pages(c.ALLOCATE_ANY_PAGES, c.LOADER_CODE, pages,
                                          align=info.section_alignment, avoid_align=TWO_MIB)
        mapped = layout(data, info, base)
        self.write(base, mapped)
        if self.arch == "x86_64":
            self.watch_rdtsc(base, bytes(mapped), info.executable_ranges)
        handle = self.handles.create()
        li = self.pools.allocate(c.BS_DATA, c.LI_SIZE)
        fp = 0
        if file_path_dp:
            fp = self.pools.allocate(c.BS_DATA, len(file_path_dp))
            self.write(fp, file_path_dp)
        self.write(li, struct.pack("<I4xQQQQQI4xQQQIIQ", c.LOADED_IMAGE_REVISION, parent, self.st,
                                   device_handle, fp, 0, 0, 0, base, pages * c.PAGE,
                                   c.LOADER_CODE, c.LOADER_DATA, 0))
        self.handles.install(handle, c.LOADED_IMAGE_PROTOCOL, li)
        if full_path:
            dp = self.pools.allocate(c.BS_DATA, len(full_path))
            self.write(dp, full_path)
            self.handles.install(handle, c.LOADED_IMAGE_DEVICE_PATH_PROTOCOL, dp)
        image = Image(handle=handle, base=base, size=pages * c.PAGE, entry=base + info.entry,
                      source=bytes(data), loaded_image=li, parent=parent, name=name)
        image.kernel_entries = kernel_entries(self.arch, data, base)
        self.images.append(image)
        self.images_by_handle[handle] = image
        self.watch_kernel_entries(image)
        if self.options.stop_at == "kernel-stub":
            self._watch_kernels(image, info)
        return image

    def set_load_options(self, image: Image, cmdline: str | None) -> None:
        """LoadOptions: the command line in UTF-16 with its NUL, as boot managers pass it."""
        if cmdline is None:
            return
        raw = (cmdline + "\0").encode("utf-16-le")
        buf = self.pools.allocate(c.LOADER_DATA, len(raw))
        self.write(buf, raw)
        self.put32(image.loaded_image + c.LI_LOAD_OPTIONS_SIZE, len(raw))
        self.put64(image.loaded_image + c.LI_LOAD_OPTIONS, buf)

    def start(self, image: Image) -> dict:
        image.started = True
        return self.run(image.entry, [image.handle, self.st], self.stack_top)

    # -- events ------------------------------------------------------------------------
    def _new_event(self, type_: int, tpl: int, notify: int, context: int,
                   group: bytes | None = None) -> int:
        handle = self._fresh_handle()
        if type_ == c.EVT_SIGNAL_EXIT_BOOT_SERVICES:
            group = c.EVENT_GROUP_EXIT_BOOT_SERVICES
        self.events[handle] = Event(handle, type_, tpl, notify, context, group)
        return handle

    def _event(self, handle: int) -> Event:
        ev = self.events.get(handle)
        if ev is None:
            raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"{handle:#x} is not an event")
        return ev

    def _signal(self, ev: Event):
        """Signal ``ev`` (and its group); a generator that runs notify functions."""
        targets = [e for e in self.events.values() if ev.group and e.group == ev.group] or [ev]
        for e in targets:
            e.signaled = True
            if e.type & c.EVT_NOTIFY_SIGNAL and e.notify:
                e.signaled = False
                yield GuestCall(e.notify, [e.handle, e.context])

    # ================================================================================
    # Boot services (UEFI 2.10 chapter 7)
    # ================================================================================
    def bs_RaiseTPL(self, new_tpl):
        old, self.tpl = self.tpl, new_tpl
        self.show(f"{new_tpl}")
        return old

    def bs_RestoreTPL(self, old_tpl):
        self.tpl = old_tpl
        self.show(f"{old_tpl}")
        return 0

    def bs_AllocatePages(self, type_, memory_type, pages, memory):
        where = self.u64(memory) if memory else 0
        kind = c.ALLOCATE_TYPES[type_] if type_ < 3 else str(type_)
        self.show(f"{kind}, {c.memory_type_name(memory_type)}, {pages:#x} pages"
                  + (f", {where:#x}" if type_ else ""))
        if memory == 0:
            return c.EFI_INVALID_PARAMETER
        base = self.memory.allocate_pages(type_, memory_type, pages, where)
        self.put64(memory, base)
        self.note(f"-> [{base:#x}, {base + pages * c.PAGE:#x})")
        self._watch_layouts(base, pages)
        return c.EFI_SUCCESS

    def bs_FreePages(self, memory, pages):
        self.show(f"{memory:#x}, {pages:#x} pages")
        self.memory.free_pages(memory, pages)
        return c.EFI_SUCCESS

    def bs_GetMemoryMap(self, size_ptr, map_ptr, key_ptr, desc_size_ptr, desc_version_ptr):
        if size_ptr == 0:
            return c.EFI_INVALID_PARAMETER
        have, need = self.u64(size_ptr), self.memory.map_size
        self.show(f"size {have:#x}, {map_ptr:#x}")
        self.put64(size_ptr, need)
        if desc_size_ptr:
            self.put64(desc_size_ptr, c.DESCRIPTOR_SIZE)
        if desc_version_ptr:
            self.put32(desc_version_ptr, c.DESCRIPTOR_VERSION)
        if have < need:
            self.note(f"needs {need:#x}")
            return c.EFI_BUFFER_TOO_SMALL
        if map_ptr == 0:
            return c.EFI_INVALID_PARAMETER
        self.write(map_ptr, self.memory.pack())
        if key_ptr:
            self.put64(key_ptr, self.memory.key)
        self.note(f"{len(self.memory.descs)} descriptors, key {self.memory.key}")
        return c.EFI_SUCCESS

    def bs_AllocatePool(self, pool_type, size, buffer):
        self.show(f"{c.memory_type_name(pool_type)}, {size:#x}")
        if buffer == 0:
            return c.EFI_INVALID_PARAMETER
        addr = self.pools.allocate(pool_type, size)
        self.put64(buffer, addr)
        self.note(f"-> {addr:#x}")
        return c.EFI_SUCCESS

    def bs_FreePool(self, buffer):
        self.show(hx(buffer))
        self.pools.release(buffer)
        return c.EFI_SUCCESS

    def bs_CreateEvent(self, type_, notify_tpl, notify_function, notify_context, event):
        return self.bs_CreateEventEx(type_, notify_tpl, notify_function, notify_context, 0, event)

    def bs_CreateEventEx(self, type_, notify_tpl, notify_function, notify_context, event_group,
                         event):
        group = self.guid_at(event_group) if event_group else None
        self.show(f"{type_:#x}, TPL {notify_tpl}, {notify_function:#x}"
                  + (f", group {c.guid_name(group)}" if group else ""))
        if event == 0 or (type_ & (c.EVT_NOTIFY_SIGNAL | c.EVT_NOTIFY_WAIT) and not notify_function):
            return c.EFI_INVALID_PARAMETER
        handle = self._new_event(type_, notify_tpl, notify_function, notify_context, group)
        self.put64(event, handle)
        self.note(f"-> {handle:#x}")
        return c.EFI_SUCCESS

    def bs_SetTimer(self, event, type_, trigger_time):
        ev = self._event(event)
        self.show(f"{event:#x}, {('cancel', 'periodic', 'relative')[type_] if type_ < 3 else type_}, "
                  f"{trigger_time * 100} ns")
        if not ev.type & c.EVT_TIMER or type_ > 2:
            return c.EFI_INVALID_PARAMETER
        ev.timer_due = None if type_ == 0 else self.clock_us + trigger_time // 10
        ev.timer_period = trigger_time // 10 if type_ == 1 else 0
        return c.EFI_SUCCESS

    def bs_WaitForEvent(self, number, events, index):
        handles = [self.u64(events + 8 * i) for i in range(number)]
        self.show(", ".join(hx(h) for h in handles))
        evs = [self._event(h) for h in handles]
        for i, ev in enumerate(evs):
            if ev.signaled:
                ev.signaled = False
                self.put64(index, i)
                return c.EFI_SUCCESS
        timed = [(ev.timer_due, i) for i, ev in enumerate(evs) if ev.timer_due is not None]
        if not timed:
            raise EmulationError("WaitForEvent on events nothing will ever signal "
                                 "(no timer, no input device)", pc=self.cpu.pc(),
                                 calls=tuple(self.history))
        due, i = min(timed)
        self.clock_us = max(self.clock_us, due)
        ev = evs[i]
        ev.timer_due = self.clock_us + ev.timer_period if ev.timer_period else None
        self.put64(index, i)
        self.note(f"timer fired; virtual clock at {self.clock_us} us")
        return c.EFI_SUCCESS

    def bs_SignalEvent(self, event):
        self.show(hx(event))
        yield from self._signal(self._event(event))
        return c.EFI_SUCCESS

    def bs_CloseEvent(self, event):
        self.show(hx(event))
        self._event(event)
        del self.events[event]
        self.notifies = [n for n in self.notifies if n[1] != event]
        return c.EFI_SUCCESS

    def bs_CheckEvent(self, event):
        ev = self._event(event)
        self.show(hx(event))
        if ev.type & c.EVT_NOTIFY_SIGNAL:
            return c.EFI_INVALID_PARAMETER
        if ev.timer_due is not None and ev.timer_due <= self.clock_us:
            ev.signaled, ev.timer_due = True, None
        if ev.signaled:
            ev.signaled = False
            return c.EFI_SUCCESS
        return c.EFI_NOT_READY

    def _after_install(self, guid: bytes):
        for g, event, _ in list(self.notifies):
            if g == guid and event in self.events:
                yield from self._signal(self.events[event])

    def bs_InstallProtocolInterface(self, handle, protocol, interface_type, interface):
        guid = self.guid_at(protocol)
        self.show(f"{self.u64(handle) if handle else 0:#x}, {c.guid_name(guid)}, {interface:#x}")
        if handle == 0 or interface_type != 0:
            return c.EFI_INVALID_PARAMETER
        h = self.handles.install(self.u64(handle), guid, interface)
        self.put64(handle, h)
        self.note(f"handle {h:#x}")
        yield from self._after_install(guid)
        return c.EFI_SUCCESS

    def bs_ReinstallProtocolInterface(self, handle, protocol, old_interface, new_interface):
        guid = self.guid_at(protocol)
        self.show(f"{handle:#x}, {c.guid_name(guid)}, {old_interface:#x} -> {new_interface:#x}")
        self.handles.reinstall(handle, guid, old_interface, new_interface)
        yield from self._after_install(guid)
        return c.EFI_SUCCESS

    def bs_UninstallProtocolInterface(self, handle, protocol, interface):
        guid = self.guid_at(protocol)
        self.show(f"{handle:#x}, {c.guid_name(guid)}, {interface:#x}")
        self.handles.uninstall(handle, guid, interface)
        return c.EFI_SUCCESS

    def bs_HandleProtocol(self, handle, protocol, interface):
        guid = self.guid_at(protocol)
        self.show(f"{handle:#x}, {c.guid_name(guid)}")
        if interface == 0:
            return c.EFI_INVALID_PARAMETER
        value = self.handles.lookup(handle, guid)
        self.put64(interface, value)
        self.note(f"-> {value:#x}")
        return c.EFI_SUCCESS

    def bs_RegisterProtocolNotify(self, protocol, event, registration):
        guid = self.guid_at(protocol)
        self.show(f"{c.guid_name(guid)}, {event:#x}")
        self._event(event)
        if registration == 0:
            return c.EFI_INVALID_PARAMETER
        key = self._fresh_handle()
        self.notifies.append((guid, event, key))
        self.put64(registration, key)
        return c.EFI_SUCCESS

    def _search(self, search_type: int, protocol: int, key: int) -> list[int]:
        if search_type == c.ALL_HANDLES:
            self.show("AllHandles")
            return self.handles.with_protocol(None)
        if search_type == c.BY_PROTOCOL:
            guid = self.guid_at(protocol)
            self.show(f"ByProtocol, {c.guid_name(guid)}")
            return self.handles.with_protocol(guid)
        if search_type == c.BY_REGISTER_NOTIFY:
            self.show(f"ByRegisterNotify, {key:#x}")
            for guid, _, reg in self.notifies:
                if reg == key:
                    return self.handles.with_protocol(guid)[-1:]
            raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"no registration {key:#x}")
        raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"search type {search_type}")

    def bs_LocateHandle(self, search_type, protocol, search_key, buffer_size, buffer):
        found = self._search(search_type, protocol, search_key)
        if buffer_size == 0:
            return c.EFI_INVALID_PARAMETER
        if not found:
            return c.EFI_NOT_FOUND
        need = 8 * len(found)
        have = self.u64(buffer_size)
        self.put64(buffer_size, need)
        if have < need:
            return c.EFI_BUFFER_TOO_SMALL
        self.write(buffer, b"".join(struct.pack("<Q", h) for h in found))
        return c.EFI_SUCCESS

    def bs_LocateHandleBuffer(self, search_type, protocol, search_key, no_handles, buffer):
        found = self._search(search_type, protocol, search_key)
        if no_handles == 0 or buffer == 0:
            return c.EFI_INVALID_PARAMETER
        if not found:
            return c.EFI_NOT_FOUND
        addr = self.pools.allocate(c.BS_DATA, 8 * len(found))
        self.write(addr, b"".join(struct.pack("<Q", h) for h in found))
        self.put64(no_handles, len(found))
        self.put64(buffer, addr)
        self.note(f"{len(found)} handles")
        return c.EFI_SUCCESS

    def _device_paths(self) -> dict[int, list]:
        out = {}
        for h in self.handles.with_protocol(c.DEVICE_PATH_PROTOCOL):
            iface = self.handles.handles[h].protocols[c.DEVICE_PATH_PROTOCOL]
            if iface:
                out[h] = parse_device_path(self.read, iface)
        return out

    def bs_LocateDevicePath(self, protocol, device_path, device):
        guid = self.guid_at(protocol)
        if device_path == 0 or device == 0 or self.u64(device_path) == 0:
            self.show(f"{c.guid_name(guid)}, NULL")
            return c.EFI_INVALID_PARAMETER
        start = self.u64(device_path)
        nodes = parse_device_path(self.read, start)
        self.show(f"{c.guid_name(guid)}, {path_text(nodes)}")
        handle, matched = self.handles.locate_device_path(guid, nodes, self._device_paths())
        self.put64(device, handle)
        self.put64(device_path, start + len(device_path_bytes(nodes[:matched])))
        self.note(f"-> handle {handle:#x}, rest {path_text(nodes[matched:])}")
        return c.EFI_SUCCESS

    def bs_InstallConfigurationTable(self, guid, table):
        g = self.guid_at(guid)
        self.show(f"{c.guid_name(g)}, {table:#x}")
        self._set_config_table(g, table)
        return c.EFI_SUCCESS

    def bs_LoadImage(self, boot_policy, parent_image_handle, device_path, source_buffer,
                     source_size, image_handle):
        path = parse_device_path(self.read, device_path) if device_path else []
        self.show(f"{'BootPolicy, ' if boot_policy else ''}parent {parent_image_handle:#x}, "
                  f"{path_text(path) if path else 'no path'}, "
                  + (f"buffer [{source_buffer:#x}, +{source_size:#x})" if source_buffer else "no buffer"))
        if image_handle == 0 or parent_image_handle not in self.images_by_handle:
            return c.EFI_INVALID_PARAMETER
        device_handle, rest = 0, path
        if source_buffer:
            data = self.read(source_buffer, source_size)
        elif path:
            data, device_handle, rest = yield from self._load_from_path(bool(boot_policy), path)
        else:
            return c.EFI_NOT_FOUND
        image = self.load_image(data, parent=parent_image_handle, name=path_text(path) or "buffer",
                                file_path_dp=device_path_bytes(rest) if rest else None,
                                device_handle=device_handle,
                                full_path=device_path_bytes(path) if path else None)
        self.put64(image_handle, image.handle)
        self.note(f"-> handle {image.handle:#x}, image [{image.base:#x}, +{image.size:#x}), "
                  f"entry {image.entry:#x}")
        return c.EFI_SUCCESS

    def _load_from_path(self, boot_policy: bool, path: list):
        """LoadImage without a buffer: LOAD_FILE, then LOAD_FILE2 (not for boot policy)."""
        paths = self._device_paths()
        for guid in (c.LOAD_FILE_PROTOCOL,) + (() if boot_policy else (c.LOAD_FILE2_PROTOCOL,)):
            try:
                handle, matched = self.handles.locate_device_path(guid, path, paths)
            except EfiStatusError:
                continue
            rest = path[matched:]
            iface = self.handles.lookup(handle, guid)
            data = yield from self._guest_load_file(iface, rest, boot_policy, c.guid_name(guid))
            self.note(f"{len(data):#x} bytes from {c.guid_name(guid)} on handle {handle:#x}")
            return data, handle, rest
        raise EfiStatusError(c.EFI_NOT_FOUND, f"nothing can load {path_text(path)}")

    def _guest_load_file(self, iface: int, rest: list, boot_policy: bool, what: str,
                         mem_type: int = c.BS_DATA):
        """Call a guest's LoadFile(2) as its callers do: a size query that answers
        EFI_BUFFER_TOO_SMALL, then the load into pages allocated for it.  Returns the bytes."""
        fn = self.u64(iface)
        rest_raw = device_path_bytes(rest)
        scratch = self.pools.allocate(c.BS_DATA, 8 + len(rest_raw))
        try:
            self.write(scratch + 8, rest_raw)
            self.put64(scratch, 0)
            status = yield GuestCall(fn, [iface, scratch + 8, int(boot_policy), scratch, 0])
            if status != c.EFI_BUFFER_TOO_SMALL:
                raise EfiStatusError(status if status & c.HIGH_BIT else c.EFI_LOAD_ERROR,
                                     f"{what} size query answered {c.status_name(status)}")
            size = self.u64(scratch)
            pages = max(1, -(-size // c.PAGE))
            buf = self.memory.allocate_pages(c.ALLOCATE_ANY_PAGES, mem_type, pages)
            status = yield GuestCall(fn, [iface, scratch + 8, int(boot_policy), scratch, buf])
            size = min(self.u64(scratch), pages * c.PAGE)
            data = self.read_sparse(buf, size)
            self.memory.free_pages(buf, pages)
        finally:
            self.pools.release(scratch)
        if status != c.EFI_SUCCESS:
            raise EfiStatusError(status, f"{what} LoadFile failed")
        return data

    # -- early capture: the entry of a nested kernel's own EFI stub (--stop-at kernel-stub) --
    def _watch_kernels(self, image: Image, info) -> None:
        """Kernels this image brings: itself if nested (LoadImage), else in its sections."""
        if image.parent:
            kernel = kernels.recognise(image.source, self.arch, origin=f"LoadImage of {image.name}")
            if kernel is not None:
                self._watch_entry(image.entry, kernel, image.base, image)
        self.kernel_sections += kernels.in_sections(image.source, info, self.arch)

    def _watch_layouts(self, base: int, pages: int) -> None:
        """An allocation a stub may lay a kernel out in (systemd-stub 256+): watch its entry.

        The kernel sits at the start of the allocation (262 on x86) or at the first
        SectionAlignment boundary in it (262 on arm64 allocates SizeOfImage plus the
        alignment and frees the slack on either side).
        """
        if self.options.stop_at != "kernel-stub" or self.exit_boot_services_done:
            return
        end = base + pages * c.PAGE
        for kernel in self.kernel_sections:
            align = kernel.info.section_alignment
            for at in sorted({base, (base + align - 1) & ~(align - 1)}):
                if kernel.size_of_image <= end - at <= kernel.size_of_image + TWO_MIB:
                    self._watch_entry(at + kernel.entry, kernel, at, None)

    def _watch_entry(self, addr: int, kernel: kernels.Kernel, base: int,
                     image: Image | None) -> None:
        expected = self.entry_watches.setdefault(addr, [])
        if not expected:
            self.watch(addr, self._at_kernel_entry)
        expected.append((kernel, base, image))

    def _at_kernel_entry(self, uc, addr, size, data) -> None:
        if self.handover is not None or self.exit_boot_services_done:
            return
        for kernel, base, image in self.entry_watches.get(addr, ()):
            if image is not None:
                if self.images_by_handle.get(image.handle) is not image:
                    continue            # unloaded since; the memory may hold anything
                how = (f"StartImage of {image.name}" if image.started
                       else f"a jump to the entry point of {image.name}")
            elif kernel.laid_out_at(self.read_sparse, base):
                how = f"a call into the {kernel.origin} kernel the stub laid out at {base:#x}"
            else:
                continue
            self.drive("<kernel-stub capture>", self._capture_kernel_stub(kernel, base, addr, how))
            return

    def _capture_kernel_stub(self, kernel: kernels.Kernel, base: int, pc: int, how: str):
        """What the kernel's EFI stub would read, read as it would: LoadOptions, then the initrd."""
        registers = self.cpu.handover_registers()
        handle = self.cpu.arg(0)
        cmdline = self.kernel_cmdline(handle)
        try:
            initrd, source = yield from self._kernel_initrd()
        except EfiStatusError as e:
            raise EmulationError(f"the initrd's LoadFile2 failed as the kernel's stub would "
                                 f"call it: {e}", pc=self.cpu.pc(), calls=tuple(self.history),
                                 instructions=self.count_instructions()) from e
        self.note(f"{kernel.layers[-1]} of {len(kernel.data):#x} bytes at {pc:#x}, "
                  f"initrd {'none' if initrd is None else f'{len(initrd):#x} bytes'}")
        self.handover = {"pc": pc, "how": f"entry of the kernel's EFI stub: {how}",
                         "registers": registers, "stopped_at": "kernel-stub",
                         "kernel_stub": {"kernel": kernel, "base": base, "cmdline": cmdline,
                                         "initrd": initrd, "initrd_source": source,
                                         "image_handle": handle}}
        self.stop_reason = "handover"
        self.uc.emu_stop()
        return c.EFI_SUCCESS

    def kernel_cmdline(self, handle: int) -> str | None:
        """LoadOptions of ``handle``'s LOADED_IMAGE as the Linux stub reads them
        (libstub efi_convert_cmdline: UTF-16, up to LoadOptionsSize, a NUL or a newline)."""
        try:
            li = self.handles.lookup(handle, c.LOADED_IMAGE_PROTOCOL)
        except EfiStatusError:
            return None
        size, ptr = self.u32(li + c.LI_LOAD_OPTIONS_SIZE), self.u64(li + c.LI_LOAD_OPTIONS)
        if not ptr or not size:
            return None
        text = self.read(ptr, size & ~1).decode("utf-16-le", "replace")
        return text.split("\0", 1)[0].split("\n", 1)[0]

    def _kernel_initrd(self):
        """The initrd as the Linux stub loads it (libstub efi_load_initrd_dev_path):
        LocateDevicePath(LOAD_FILE2, VenMedia(LINUX_EFI_INITRD_MEDIA)/End), then that
        LoadFile2.  Returns (bytes or None, where they came from)."""
        raw = vendor_media_path(c.LINUX_EFI_INITRD_MEDIA)
        path = parse_device_path(lambda addr, n: raw[addr:addr + n], 0)
        try:
            handle, matched = self.handles.locate_device_path(c.LOAD_FILE2_PROTOCOL, path,
                                                              self._device_paths())
        except EfiStatusError:
            return None, None
        if handle == self.initrd_handle:
            return self.initrd, "the emulator's LoadFile2 (--initrd)"
        iface = self.handles.lookup(handle, c.LOAD_FILE2_PROTOCOL)
        data = yield from self._guest_load_file(iface, path[matched:], False,
                                                "LINUX_EFI_INITRD_MEDIA LoadFile2", c.LOADER_DATA)
        return data, f"the guest's LoadFile2 on handle {handle:#x}"

    def bs_StartImage(self, image_handle, exit_data_size, exit_data):
        self.show(hx(image_handle))
        image = self.images_by_handle.get(image_handle)
        if image is None or image.started:
            return c.EFI_INVALID_PARAMETER
        image.started = True
        status = yield GuestCall(image.entry, [image.handle, self.st], start_image=image_handle)
        self.note(f"{image.name} returned {c.status_name(status)}")
        return status

    def bs_Exit(self, image_handle, exit_status, exit_data_size, exit_data):
        text = self.utf16(exit_data, exit_data_size) if exit_data and exit_data_size else ""
        self.show(f"{image_handle:#x}, {c.status_name(exit_status)}"
                  + (f", {text!r}" if text else ""))
        image = self.images_by_handle.get(image_handle)
        if image is None:
            return c.EFI_INVALID_PARAMETER
        self.record.status = c.EFI_SUCCESS
        self.history.append(self.record.text() + " [unwinds]")
        if self.options.trace:
            self.options.trace(f"[{self.record.seq}] {self.history[-1]}")
        if self.unwind_exit(image_handle, exit_status):
            return NO_RETURN
        raise StubExited(f"{image.name} called Exit({c.status_name(exit_status)}"
                         + (f", {text!r}" if text else "") + ") instead of starting a kernel",
                         pc=self.cpu.pc(), calls=tuple(self.history),
                         instructions=self.count_instructions())

    def bs_UnloadImage(self, image_handle):
        self.show(hx(image_handle))
        image = self.images_by_handle.get(image_handle)
        if image is None:
            return c.EFI_INVALID_PARAMETER
        if image.started:
            unload = self.u64(image.loaded_image + c.LI_UNLOAD)
            if not unload:
                return c.EFI_UNSUPPORTED
            status = yield GuestCall(unload, [image_handle])
            if status != c.EFI_SUCCESS:
                return status
        self._forget(image)
        return c.EFI_SUCCESS

    def _forget(self, image: Image) -> None:
        h = self.handles.handles.get(image.handle)
        if h is not None:
            for guid, iface in list(h.protocols.items()):
                self.handles.uninstall(image.handle, guid, iface)
        self.memory.free_pages(image.base, image.size // c.PAGE)
        self.images.remove(image)
        del self.images_by_handle[image.handle]

    def bs_ExitBootServices(self, image_handle, map_key):
        self.show(f"{image_handle:#x}, key {map_key}")
        if map_key != self.memory.key:
            self.note(f"the map key is {self.memory.key}")
            return c.EFI_INVALID_PARAMETER
        for ev in [e for e in self.events.values() if e.group == c.EVENT_GROUP_EXIT_BOOT_SERVICES]:
            yield from self._signal(ev)
        self.ebs_image = image_handle
        self.after_exit_boot_services()
        return c.EFI_SUCCESS

    def bs_GetNextMonotonicCount(self, count):
        self.monotonic += 1
        self.put64(count, self.monotonic)
        return c.EFI_SUCCESS

    def bs_Stall(self, microseconds):
        self.show(f"{microseconds} us")
        self.clock_us += microseconds
        return c.EFI_SUCCESS

    def bs_SetWatchdogTimer(self, timeout, watchdog_code, data_size, watchdog_data):
        self.show(f"{timeout} s, code {watchdog_code:#x}")
        self.watchdog = timeout or None
        return c.EFI_SUCCESS

    def bs_ConnectController(self, controller_handle, driver_image_handle, remaining_path,
                             recursive):
        self.show(hx(controller_handle))
        self.handles.get_handle(controller_handle)
        self.note("this firmware has no drivers")
        return c.EFI_NOT_FOUND

    def bs_DisconnectController(self, controller_handle, driver_image_handle, child_handle):
        self.show(hx(controller_handle))
        self.handles.get_handle(controller_handle)
        self.note("no driver manages it")
        return c.EFI_SUCCESS

    def bs_OpenProtocol(self, handle, protocol, interface, agent_handle, controller_handle,
                        attributes):
        guid = self.guid_at(protocol)
        self.show(f"{handle:#x}, {c.guid_name(guid)}, attributes {attributes:#x}")
        value = self.handles.lookup(handle, guid)
        if attributes != c.OPEN_TEST_PROTOCOL:
            if interface == 0:
                return c.EFI_INVALID_PARAMETER
            self.put64(interface, value)
            self.note(f"-> {value:#x}")
        self.handles.handles[handle].opens.append((guid, agent_handle, controller_handle,
                                                   attributes))
        return c.EFI_SUCCESS

    def bs_CloseProtocol(self, handle, protocol, agent_handle, controller_handle):
        guid = self.guid_at(protocol)
        self.show(f"{handle:#x}, {c.guid_name(guid)}")
        h = self.handles.get_handle(handle)
        self.handles.lookup(handle, guid)
        kept = [o for o in h.opens if not (o[0] == guid and o[1] == agent_handle
                                           and o[2] == controller_handle)]
        if len(kept) == len(h.opens):
            return c.EFI_NOT_FOUND
        h.opens = kept
        return c.EFI_SUCCESS

    def bs_OpenProtocolInformation(self, handle, protocol, entry_buffer, entry_count):
        guid = self.guid_at(protocol)
        self.show(f"{handle:#x}, {c.guid_name(guid)}")
        self.handles.lookup(handle, guid)
        opens = [o for o in self.handles.handles[handle].opens if o[0] == guid]
        addr = self.pools.allocate(c.BS_DATA, max(24 * len(opens), 1))
        self.write(addr, b"".join(struct.pack("<QQII", o[1], o[2], o[3], 1) for o in opens))
        self.put64(entry_buffer, addr)
        self.put64(entry_count, len(opens))
        return c.EFI_SUCCESS

    def bs_ProtocolsPerHandle(self, handle, protocol_buffer, protocol_buffer_count):
        self.show(hx(handle))
        guids = list(self.handles.get_handle(handle).protocols)
        addr = self.pools.allocate(c.BS_DATA, 24 * len(guids) or 8)
        for i, g in enumerate(guids):
            self.put64(addr + 8 * i, addr + 8 * len(guids) + 16 * i)
            self.write(addr + 8 * len(guids) + 16 * i, g)
        self.put64(protocol_buffer, addr)
        self.put64(protocol_buffer_count, len(guids))
        return c.EFI_SUCCESS

    def bs_LocateProtocol(self, protocol, registration, interface):
        guid = self.guid_at(protocol)
        self.show(c.guid_name(guid))
        if interface == 0:
            return c.EFI_INVALID_PARAMETER
        value = self.handles.locate(guid)
        self.put64(interface, value)
        self.note(f"-> {value:#x}")
        return c.EFI_SUCCESS

    def _pairs(self, first: int) -> list[tuple[bytes, int]]:
        pairs = []
        for i in range(MAX_VARIADIC_PAIRS):
            gp = self.cpu.arg(first + 2 * i)
            if gp == 0:
                return pairs
            pairs.append((self.guid_at(gp), self.cpu.arg(first + 2 * i + 1)))
        raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"more than {MAX_VARIADIC_PAIRS} "
                             "protocol/interface pairs, or no NULL terminator")

    def bs_InstallMultipleProtocolInterfaces(self, handle):
        pairs = self._pairs(1)
        current = self.u64(handle) if handle else 0
        self.show(f"{current:#x}, " + ", ".join(f"{c.guid_name(g)}={i:#x}" for g, i in pairs))
        if handle == 0:
            return c.EFI_INVALID_PARAMETER
        for g, iface in pairs:
            if g == c.DEVICE_PATH_PROTOCOL and iface:
                want = device_path_bytes(parse_device_path(self.read, iface))
                for other, nodes in self._device_paths().items():
                    if device_path_bytes(nodes) == want:
                        self.note(f"handle {other:#x} already has {path_text(nodes)}")
                        return c.EFI_ALREADY_STARTED
        done: list[tuple[bytes, int]] = []
        try:
            for g, iface in pairs:
                current = self.handles.install(current, g, iface)
                done.append((g, iface))
        except EfiStatusError:
            for g, iface in done:
                self.handles.uninstall(current, g, iface)
            raise
        self.put64(handle, current)
        self.note(f"handle {current:#x}")
        for g, _ in pairs:
            yield from self._after_install(g)
        return c.EFI_SUCCESS

    def bs_UninstallMultipleProtocolInterfaces(self, handle):
        pairs = self._pairs(1)
        self.show(f"{handle:#x}, " + ", ".join(f"{c.guid_name(g)}={i:#x}" for g, i in pairs))
        h = self.handles.get_handle(handle)
        if any(h.protocols.get(g) != i for g, i in pairs):
            return c.EFI_INVALID_PARAMETER
        for g, iface in pairs:
            self.handles.uninstall(handle, g, iface)
        return c.EFI_SUCCESS

    def bs_CalculateCrc32(self, data, data_size, crc32):
        self.show(f"[{data:#x}, +{data_size:#x})")
        if data == 0 or crc32 == 0 or data_size == 0:
            return c.EFI_INVALID_PARAMETER
        self.put32(crc32, zlib.crc32(self.read(data, data_size)))
        return c.EFI_SUCCESS

    def bs_CopyMem(self, destination, source, length):
        self.show(f"{destination:#x}, {source:#x}, {length:#x}")
        self.write(destination, self.read(source, length))
        return 0

    def bs_SetMem(self, buffer, size, value):
        self.show(f"{buffer:#x}, {size:#x}, {value & 0xFF:#x}")
        self.write(buffer, bytes([value & 0xFF]) * size)
        return 0

    # ================================================================================
    # Runtime services (UEFI 2.10 chapter 8)
    # ================================================================================
    def rt_GetTime(self, time, capabilities):
        if time == 0:
            return c.EFI_INVALID_PARAMETER
        secs = self.clock_us // 1_000_000
        y, m, d = EPOCH
        self.write(time, struct.pack("<HBBBBBBIhBB", y, m, d, (secs // 3600) % 24,
                                     (secs // 60) % 60, secs % 60, 0,
                                     (self.clock_us % 1_000_000) * 1000, 2047, 0, 0))
        if capabilities:
            self.write(capabilities, struct.pack("<IIB", 1, 50_000_000, 0))
        return c.EFI_SUCCESS

    def rt_SetVirtualAddressMap(self, memory_map_size, descriptor_size, descriptor_version,
                                virtual_map):
        self.note("not supported (EFI_RT_PROPERTIES_TABLE says so)")
        return c.EFI_UNSUPPORTED

    def rt_ConvertPointer(self, debug_disposition, address):
        self.note("only valid during SetVirtualAddressMap, which is not supported")
        return c.EFI_UNSUPPORTED

    def rt_GetVariable(self, variable_name, vendor_guid, attributes, data_size, data):
        name = self.utf16(variable_name) if variable_name else ""
        guid = self.guid_at(vendor_guid)
        self.show(f"{name!r}, {c.guid_name(guid)}")
        if data_size == 0:
            return c.EFI_INVALID_PARAMETER
        found = self.variables.get((name, guid))
        if found is None:
            return c.EFI_NOT_FOUND
        attrs, value = found
        have = self.u64(data_size)
        self.put64(data_size, len(value))
        if attributes:
            self.put32(attributes, attrs)
        if have < len(value):
            return c.EFI_BUFFER_TOO_SMALL
        self.write(data, value)
        return c.EFI_SUCCESS

    def rt_GetNextVariableName(self, variable_name_size, variable_name, vendor_guid):
        current = (self.utf16(variable_name), self.read(vendor_guid, 16))
        names = sorted(self.variables)
        if current[0] == "":
            following = names
        elif current in names:
            following = names[names.index(current) + 1:]
        else:
            return c.EFI_INVALID_PARAMETER
        if not following:
            return c.EFI_NOT_FOUND
        name, guid = following[0]
        raw = (name + "\0").encode("utf-16-le")
        have = self.u64(variable_name_size)
        self.put64(variable_name_size, len(raw))
        if have < len(raw):
            return c.EFI_BUFFER_TOO_SMALL
        self.write(variable_name, raw)
        self.write(vendor_guid, guid)
        return c.EFI_SUCCESS

    def rt_SetVariable(self, variable_name, vendor_guid, attributes, data_size, data):
        name = self.utf16(variable_name) if variable_name else ""
        guid = self.guid_at(vendor_guid)
        self.show(f"{name!r}, {c.guid_name(guid)}, attributes {attributes:#x}, {data_size} bytes")
        if not name:
            return c.EFI_INVALID_PARAMETER
        if data_size == 0 or attributes == 0:
            if self.variables.pop((name, guid), None) is None:
                return c.EFI_NOT_FOUND
            return c.EFI_SUCCESS
        self.variables[(name, guid)] = (attributes, self.read(data, data_size))
        return c.EFI_SUCCESS

    def rt_GetNextHighMonotonicCount(self, high_count):
        self.monotonic += 1 << 32
        self.put32(high_count, self.monotonic >> 32)
        return c.EFI_SUCCESS

    def rt_ResetSystem(self, reset_type, reset_status, data_size, reset_data):
        kinds = ("cold", "warm", "shutdown", "platform-specific")
        raise StubExited(f"the stub called ResetSystem({kinds[reset_type] if reset_type < 4 else reset_type}, "
                         f"{c.status_name(reset_status)})", pc=self.cpu.pc(),
                         calls=tuple(self.history), instructions=self.count_instructions())

    # ================================================================================
    # Console (chapter 12) and the initrd's LoadFile2 (13.2)
    # ================================================================================
    def conout_Reset(self, this, extended_verification):
        return c.EFI_SUCCESS

    def said(self) -> str:
        text = " ".join("".join(self.console).split())
        if not text:
            return ""
        return f"; it printed: {text[:160]!r}" + (" ..." if len(text) > 160 else "")

    def conout_OutputString(self, this, string):
        text = self.utf16(string)
        self.console.append(text)
        self.show(repr(text))
        return c.EFI_SUCCESS

    def conout_TestString(self, this, string):
        return c.EFI_SUCCESS

    def conout_QueryMode(self, this, mode_number, columns, rows):
        self.show(str(mode_number))
        if mode_number != 0:
            return c.EFI_UNSUPPORTED
        self.put64(columns, 80)
        self.put64(rows, 25)
        return c.EFI_SUCCESS

    def conout_SetMode(self, this, mode_number):
        self.show(str(mode_number))
        return c.EFI_SUCCESS if mode_number == 0 else c.EFI_UNSUPPORTED

    def conout_SetAttribute(self, this, attribute):
        self.put32(self.con_out_mode + 8, attribute)
        return c.EFI_SUCCESS

    def conout_ClearScreen(self, this):
        self.put32(self.con_out_mode + 12, 0)
        self.put32(self.con_out_mode + 16, 0)
        return c.EFI_SUCCESS

    def conout_SetCursorPosition(self, this, column, row):
        if column >= 80 or row >= 25:
            return c.EFI_UNSUPPORTED
        self.put32(self.con_out_mode + 12, column)
        self.put32(self.con_out_mode + 16, row)
        return c.EFI_SUCCESS

    def conout_EnableCursor(self, this, visible):
        return c.EFI_UNSUPPORTED

    def conin_Reset(self, this, extended_verification):
        return c.EFI_SUCCESS

    def conin_ReadKeyStroke(self, this, key):
        return c.EFI_NOT_READY

    def initrd_LoadFile(self, this, file_path, boot_policy, buffer_size, buffer):
        size = len(self.initrd or b"")
        have = self.u64(buffer_size) if buffer_size else 0
        self.show(f"size {have:#x}, {buffer:#x}")
        if buffer_size == 0:
            return c.EFI_INVALID_PARAMETER
        if boot_policy:
            return c.EFI_UNSUPPORTED
        if buffer == 0 or have < size:
            self.put64(buffer_size, size)
            self.note(f"needs {size:#x}")
            return c.EFI_BUFFER_TOO_SMALL
        self.write(buffer, self.initrd)
        self.put64(buffer_size, size)
        self.note(f"{size:#x} bytes of initrd")
        return c.EFI_SUCCESS


def kernel_entries(arch: str, data: bytes, base: int) -> dict[int, str]:
    """Where a boot protocol enters the kernel in ``data`` loaded at ``base``, and its name.

    * x86_64 bzImage: startup_64, the protected-mode kernel + 0x200 (boot.rst),
      where a pre-6.7 stub returns into the kernel's own decompressor.
    * arm64 Image: its first instruction (booting.rst), and primary_entry, the
      target of code1's branch, where the stub's efi_enter_kernel jumps when it
      runs the kernel where it was loaded (6.1 on a 64 KiB-aligned image
      without a KASLR seed).  The Image's file offsets are its RVAs.
    """
    if arch == "x86_64" and bzimage.has_setup_header(data):
        kernel = bzimage.setup_size(bzimage.SETUP_HEADER.get(data, "setup_sects"))
        return {base + kernel + bzimage.STARTUP_64_OFFSET:
                "the kernel entry point of the loaded bzImage (startup_64)"}
    if arch != "arm64" or not arm64_image.probe(data):
        return {}
    entries = {base: "the arm64 Image's first instruction, where it was loaded"}
    code1 = arm64_image.HEADER.get(data, "code1")
    if code1 >> 26 == 0b000101:                     # B <imm26>
        imm = code1 & 0x3FF_FFFF
        target = 4 + 4 * (imm - (1 << 26) if imm & (1 << 25) else imm)
        if 0 < target < len(data):
            entries[base + target] = ("the arm64 Image's primary_entry (code1's branch), "
                                      "where it was loaded")
    return entries


def top_file_path(name: str) -> bytes:
    return file_path("\\" + name)
