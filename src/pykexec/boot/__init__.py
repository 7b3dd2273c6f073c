"""What user mode (kexec_load) builds itself: the bytes the kernel's kexec_file loader would build.

x86_64 only.  One module per structure, each naming its specification:

* :mod:`.bootparam`, :mod:`.zeropage` -- struct boot_params (the zero page) and
  setup_data: Documentation/arch/x86/boot.rst, arch/x86/include/uapi/asm/bootparam.h;
* :mod:`.e820` -- the memory map for the next kernel (and a capture kernel);
* :mod:`.firmware` -- what the running system hands on: its boot_params, EFI
  runtime map and tables, ACPI RSDP (sysfs, injectable roots);
* :mod:`.elfcore` -- the kdump ELF core header (fs/proc/vmcore.c reads it);
* :mod:`.multiboot_info` -- Multiboot 1 and 2: loading rules and the boot
  information structures (Xen);
* :mod:`.purgatory` -- the code between the kernels: SHA-256 checks and the
  hand-off (source, build script and committed bytes beside it);
* :mod:`.usermode` -- :func:`build_user_load`, which puts them together into the
  arguments of kexec_load for a prepared image, validated first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .multiboot_info import Module, ModuleArg, load_module, parse_module_arg
    from .usermode import UserLoad, build_user_load

__all__ = ["build_user_load", "UserLoad", "Module", "ModuleArg", "load_module", "parse_module_arg"]


def __getattr__(name: str):
    """The user-mode builder and Multiboot modules on first use: the planners read the
    zero-page layout in :mod:`.bootparam`, and should not pay for the builder, its
    purgatory and the Multiboot loader (nor should ``pykexec --help``)."""
    if name in ("UserLoad", "build_user_load"):
        from . import usermode
        return getattr(usermode, name)
    if name in ("Module", "ModuleArg", "load_module", "parse_module_arg"):
        from . import multiboot_info
        return getattr(multiboot_info, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
