"""Run a kernel's own EFI stub under emulated UEFI boot services, and capture the hand-over.

The boot protocol implemented is the UEFI one (UEFI 2.10): the image is a PE
application, started at its entry point with ``(ImageHandle, SystemTable)``.
Whatever it is (a bzImage with the Linux EFI stub, an arm64 Image, a zboot
wrapper, a UKI around systemd-stub), it unpacks itself with the services it
is given, calls ExitBootServices and jumps to the kernel.  The first
instruction it executes outside every image it was given (or a bzImage's
``startup_64``, where a pre-6.7 stub returns into its own decompressor) is the
hand-over: there the registers name the kernel's boot data (x86 ``boot_params``
in RSI, arm64 FDT in X0), which :mod:`.capture` reads out.  A loader needs less:
``stop_at="kernel-stub"`` (what :func:`emulate_for_load` uses) stops at the
entry of a nested kernel's own EFI stub, where a UKI's stub hands it the kernel
image, the command line and the initrd (:mod:`.kernels`).

    >>> from pykexec import efi
    >>> cap = efi.emulate(open("vmlinuz", "rb").read(), cmdline="console=ttyS0",
    ...                   initrd=open("initrd.img", "rb").read())
    >>> cap.entry, cap.cmdline, len(cap.kernel)
    >>> efi.write_capture(cap, "out")       # kernel, initrd, cmdline, boot_params|dtb, report.json

The engine is unicorn (an optional dependency, imported when used); see
:mod:`.machine` for how it runs at full speed, :mod:`.services` for what the
firmware offers, and ``docs/emulator.md`` for the limits.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import EmulationError, FormatError, UsageError
from . import constants as c

if TYPE_CHECKING:
    from .capture import Capture

__all__ = ["Capture", "Options", "emulate", "emulate_for_load", "write_capture", "detect_arch",
           "STOPS"]


def __getattr__(name: str):
    """Capture and Options on first use: ``pykexec --help`` imports this package for the
    emulate verb's options, and should not pay for the engine and every format."""
    if name == "Capture":
        from .capture import Capture
        return Capture
    if name == "Options":
        from .machine import Options
        return Options
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_MEMORY = 2 << 30
#: where a run may stop: the hand-over to the kernel proper, or the entry of a nested
#: kernel's own EFI stub (falling back to the hand-over when no such entry is reached)
STOPS = ("kernel", "kernel-stub")
ARCH_FOR_MACHINE = {v: k for k, v in c.MACHINE_FOR_ARCH.items()}


def detect_arch(data: bytes) -> str:
    """x86_64 or arm64, from the PE header's Machine field."""
    from ..formats.pe import DOS_HEADER
    from .memory import EfiStatusError
    from .peload import read_pe
    try:
        info = read_pe(data)
    except EfiStatusError as e:
        raise FormatError("pe", f"the emulator runs PE images: {e.why or e}", field="e_lfanew",
                          offset=DOS_HEADER.offset("e_lfanew")) from e
    arch = ARCH_FOR_MACHINE.get(info.machine)
    if arch is None:
        raise FormatError("pe", f"machine {info.machine:#x} cannot be emulated; "
                          f"supported: x86_64 ({c.MACHINE_X64:#x}), arm64 ({c.MACHINE_AA64:#x})",
                          field="Machine")
    return arch


def emulate(data: bytes, *, initrd: bytes | None = None, cmdline: str | None = None,
            arch: str | None = None, memory: int = DEFAULT_MEMORY,
            max_instructions: int | None = None, max_seconds: float | None = None,
            trace: Callable[[str], None] | None = None, name: str = "image.efi",
            stop_at: str = "kernel",
            progress: Callable[[str, int, int | None], None] | None = None) -> Capture:
    """Start ``data`` (a PE image) under emulated firmware and capture the hand-over.

    ``initrd`` is offered through LoadFile2 on the LINUX_EFI_INITRD_MEDIA device
    path; ``cmdline`` becomes the image's LoadOptions (UTF-16).  ``trace`` gets one
    line per service call.  ``stop_at="kernel-stub"`` captures earlier, where
    execution reaches the entry point of a nested kernel kexec_file_load takes
    (:mod:`.kernels`), if it does.  ``progress(what, instructions, total)`` is told
    how far a long run has got.  The report's ``stopped_at`` says which capture
    it is.  Raises :class:`~pykexec.errors.EmulationError` (and its subclasses)
    when the stub stops anywhere but at a kernel hand-over, or unicorn itself fails
    (the emulation runs in a child process: :mod:`.isolation`).
    """
    from . import isolation
    if stop_at not in STOPS:
        raise UsageError(f"stop_at must be one of {', '.join(STOPS)}, not {stop_at!r}")
    found = detect_arch(data)
    if arch is not None and arch != found:
        raise UsageError(f"--arch {arch} given, but the image is a {found} PE image")
    return isolation.call(_emulate, data, initrd=initrd, cmdline=cmdline, arch=found,
                          memory=memory, max_instructions=max_instructions,
                          max_seconds=max_seconds, trace=trace, name=name, stop_at=stop_at,
                          progress=progress)


def _emulate(data: bytes, *, initrd: bytes | None, cmdline: str | None, arch: str,
             memory: int, max_instructions: int | None, max_seconds: float | None,
             trace: Callable[[str], None] | None, name: str, stop_at: str,
             progress: Callable[[str, int, int | None], None] | None) -> Capture:
    """:func:`emulate`'s work, in whichever process runs it."""
    from .capture import Capture, arm64_capture, kernel_stub_capture, x86_capture
    from .machine import Options
    from .memory import EfiStatusError
    from .services import Firmware, top_file_path
    defaults = Options()
    options = Options(memory=memory,
                      max_instructions=max_instructions or defaults.max_instructions,
                      max_seconds=max_seconds or defaults.max_seconds, trace=trace,
                      stop_at=stop_at, progress=progress)
    t0 = time.monotonic()
    fw = Firmware(arch, options, initrd=initrd)
    try:
        image = fw.load_image(data, parent=0, name=name, file_path_dp=top_file_path(name))
    except EfiStatusError as e:
        raise EmulationError(f"the firmware cannot load {name}: {e}") from e
    fw.set_load_options(image, cmdline)
    handover = fw.start(image)
    if handover["stopped_at"] == "kernel-stub":
        pieces = kernel_stub_capture(fw, handover)
    else:
        pieces = (x86_capture if arch == "x86_64" else arm64_capture)(fw, handover)
    seconds = time.monotonic() - t0
    report = _report(fw, image, handover, pieces, data, seconds)
    return Capture(arch=arch, entry=handover["pc"], kernel=pieces["kernel"],
                   kernel_base=pieces["kernel_base"], initrd=pieces["initrd"],
                   cmdline=pieces["cmdline"], boot_params=pieces.get("boot_params"),
                   dtb=pieces.get("dtb"), loadable=pieces.get("loadable"), report=report)


def _report(fw, image, handover: dict, pieces: dict, data: bytes, seconds: float) -> dict:
    import hashlib

    from .capture import sha256
    k = fw.counter.counters if fw.counter else None
    kernel, initrd = pieces["kernel"], pieces["initrd"]
    return {
        "arch": fw.arch,
        "image": {"name": image.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "entry": handover["pc"],
        "entry_offset": handover["pc"] - pieces["kernel_base"],
        "stopped_at": handover["stopped_at"],
        "handover": handover["how"],
        "registers": handover["registers"],
        "kernel": {"base": pieces["kernel_base"], "size": len(kernel), "sha256": sha256(kernel)},
        "initrd": None if initrd is None else {"size": len(initrd), "sha256": sha256(initrd)},
        "cmdline": pieces["cmdline"],
        **pieces["report"],
        "images": [{"name": i.name, "handle": i.handle, "base": i.base, "size": i.size,
                    "entry": i.entry, "started": i.started} for i in fw.images],
        "system_table": fw.st,
        "regions": [d.to_json() for d in fw.memory.descriptors() if d.type != c.CONVENTIONAL],
        "calls": dict(sorted(fw.call_counts.items())),
        "console": "".join(fw.console),
        "variables_set": sorted(f"{n}-{c.guid_text(g)}" for n, g in fw.variables),
        "instructions": fw.instructions,
        "blocks": k.blocks if k else None,
        "guest_memory": {"ram": fw.memory.ram_size,
                         "mapped": len(fw.mapped) * (2 << 20)},
        "seconds": round(seconds, 3),
    }


def emulate_for_load(data: bytes, *, initrd: bytes | None, cmdline: str | None,
                     arch: str | None) -> Capture:
    """The loader's fallback: what ``pykexec load --via-emulator`` hands the kernel.

    It stops at the entry of the nested kernel's own EFI stub when there is one
    (``stop_at="kernel-stub"``: a UKI's systemd-stub starting ``.linux``, a zboot
    starting its Image), so the kernel's stub never runs its decompressor;
    otherwise at the hand-over.  ``Capture.loadable`` is the kernel for
    kexec_file_load (the bzImage or arm64 Image), with ``initrd`` and ``cmdline``
    as the stub passed them; ``boot_params``/``dtb`` (hand-over captures only)
    are there for a kexec_load (user mode) path.
    """
    import logging
    cap = emulate(data, initrd=initrd, cmdline=cmdline, arch=arch, stop_at="kernel-stub")
    r = cap.report
    logging.getLogger(__name__).info("EFI emulator: stopped at %s: %s; %s instructions in %.2f s", r["stopped_at"],
             r["handover"], r["instructions"], r["seconds"])
    return cap


def write_capture(cap: Capture, outdir: str | Path) -> dict[str, Path]:
    """DIR/kernel, DIR/initrd, DIR/cmdline, DIR/boot_params (x86) or DIR/dtb (arm64), DIR/report.json."""
    import json

    from ..output import write_files
    written = write_files(outdir, {
        "kernel": cap.kernel, "initrd": cap.initrd,
        "cmdline": None if cap.cmdline is None else cap.cmdline.encode(),
        "boot_params": cap.boot_params, "dtb": cap.dtb,
        "report.json": (json.dumps(cap.report, indent=2) + "\n").encode()})
    written["report"] = written.pop("report.json")
    return written
