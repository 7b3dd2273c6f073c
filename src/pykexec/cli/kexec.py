"""``pykexec kexec``: the command line of kexec-tools' ``kexec``, served by pykexec.

A shim named ``kexec`` that runs ``pykexec kexec "$@"`` serves ``systemctl
kexec`` and kdump scripts unchanged.  Flags keep kexec-tools' meanings
(kexec/kexec.c usage(), kexec/arch/i386/include/arch/options.h):

* actions: ``-l`` load, ``-p`` load a crash kernel, ``-u`` unload (``-p -u``:
  the crash kernel), ``-e`` exec, ``-S`` status (exit 0 if loaded); with no
  action the kernel is loaded and executed at once, as kexec-tools does;
* syscall: ``-s`` kexec_file_load, ``-c`` kexec_load, ``-a`` try both;
* ``--append`` and ``--command-line`` both give the command line (in
  kexec-tools they are synonyms); with ``--reuse-cmdline`` they are appended
  to the running kernel's;
* ``-d`` debug (and the segments loaded), ``-f`` force, ``-x`` no ifdown, ``-y`` no sync,
  ``-i`` no checks;
* ``--entry-32bit`` and ``--real-mode``: a bzImage's other entries (kexec_load);
* ``--module FILE[,ARGS]`` Multiboot modules (kexec into Xen);
* ``--print-ckr-size``: the crash kernel region's size in bytes, as kdump scripts ask it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__, api
from ..errors import UsageError

log = logging.getLogger(__name__)
# kexec-tools options pykexec takes and ignores, as in its option tables (kexec/kexec.h KEXEC_OPTIONS,
# kexec/arch/i386/include/arch/options.h): those that take a value, then those that take none.
IGNORED = (("--mem-min",), ("--mem-max",), ("-t", "--type"), ("--serial",), ("--serial-baud",))
IGNORED_FLAGS = ("--reuseinitrd", "--hotplug", "--no-cma", "--force-dtb", "--noefi", "--reuse-video-type",
                 "--console-vga", "--console-serial", "--reset-vga", "--elf32-core-headers",
                 "--elf64-core-headers", "--pass-memmap-cmdline")


class KexecParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"kexec: {message}")


def build_parser() -> KexecParser:
    p = KexecParser(prog="kexec", description="kexec-tools compatible front end of pykexec",
                    allow_abbrev=False)
    act = p.add_argument_group("actions")
    act.add_argument("-l", "--load", action="store_true", help="load the new kernel")
    act.add_argument("-p", "--load-panic", action="store_true",
                     help="load the new kernel for use on panic (crash)")
    act.add_argument("-u", "--unload", action="store_true", help="unload the current kernel")
    act.add_argument("-e", "--exec", action="store_true", help="execute the loaded kernel")
    act.add_argument("--print-ckr-size", action="store_true",
                     help="print the size of the crash kernel region in bytes")
    act.add_argument("-S", "--status", action="store_true",
                     help="exit 0 if a kernel is loaded (with -p: a crash kernel), else 1")
    call = p.add_mutually_exclusive_group()
    call.add_argument("-s", "--kexec-file-syscall", dest="mode", action="store_const",
                      const="file", help="use kexec_file_load")
    call.add_argument("-c", "--kexec-syscall", dest="mode", action="store_const", const="user",
                      help="use kexec_load")
    call.add_argument("-a", "--kexec-syscall-auto", dest="mode", action="store_const",
                      const="auto", help="kexec_file_load, then kexec_load (default)")
    p.add_argument("--initrd", "--ramdisk", metavar="FILE", action="append", default=[])
    p.add_argument("--append", "--command-line", dest="append", metavar="S")
    p.add_argument("--reuse-cmdline", action="store_true")
    p.add_argument("--dtb", metavar="FILE")
    p.add_argument("--module", metavar="FILE[,ARGS]", action="append", default=[],
                   help="Multiboot module (kexec_load)")
    p.add_argument("-d", "--debug", action="store_true", help="show debug output")
    p.add_argument("-f", "--force", action="store_true",
                   help="execute at once; pykexec never calls shutdown anyway")
    p.add_argument("-x", "--no-ifdown", action="store_true", help="accepted; pykexec never ifdowns")
    p.add_argument("-y", "--no-sync", action="store_true", help="do not sync before exec")
    p.add_argument("-i", "--no-checks", action="store_true",
                   help="kexec_load: the purgatory skips its SHA-256 checks")
    p.add_argument("--entry-32bit", action="store_true",
                   help="x86 bzImage, kexec_load: enter it through the 32-bit boot protocol")
    p.add_argument("--real-mode", action="store_true",
                   help="x86 bzImage, kexec_load: enter it through its real-mode setup code")
    p.add_argument("-v", "--version", action="version", version=f"kexec (pykexec {__version__})")
    for flags in IGNORED:
        p.add_argument(*flags, metavar="X", help=argparse.SUPPRESS)
    for flag in IGNORED_FLAGS:
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("kernel", nargs="?", help="kernel image")
    p.set_defaults(mode="auto")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="kexec: %(message)s")
    for flag in (*(flags[-1] for flags in IGNORED), *IGNORED_FLAGS):
        if getattr(args, flag.lstrip("-").replace("-", "_"), None):
            log.warning("%s is accepted for compatibility and ignored", flag)
    if args.print_ckr_size:
        print(api.status().crash_size or 0)
        return 0
    if args.status:
        st = api.status()
        return 0 if (st.crash_loaded if args.load_panic else st.loaded) else 1
    if args.unload:
        api.unload(crash=args.load_panic)
        return 0
    if args.load or args.load_panic or (args.kernel and not args.exec):
        _load(args)
        if args.load or args.load_panic:
            return 0
    if args.exec or args.kernel:
        api.execute(sync=not args.no_sync)
        return 0
    raise UsageError("kexec: nothing to do; give -l KERNEL, -p KERNEL, -e, -u or -S")


def _load(args: argparse.Namespace) -> None:
    if not args.kernel:
        raise UsageError("kexec: -l and -p need a kernel image")
    _, report, loaded = api.load(api.LoadOptions(
        image=args.kernel, initrds=tuple(args.initrd), append=args.append, reuse_cmdline=args.reuse_cmdline,
        crash=args.load_panic, mode=args.mode, debug=args.debug, modules=tuple(args.module),
        checks=not args.no_checks, dtb=args.dtb, entry=_entry(args)))
    if args.debug:  # as kexec-tools -d: the segments handed to the kernel, and the call
        for line in str(loaded).splitlines() if loaded is not None else ():
            print(f"kexec: {line}", file=sys.stderr)
        print(f"kexec: loaded {args.kernel} with {report.syscall}", file=sys.stderr)


def _entry(args: argparse.Namespace) -> int | None:
    """The bzImage entry kexec-tools' flags ask for: ``--real-mode`` wins over ``--entry-32bit``,
    as in its bzImage64_load."""
    return 16 if args.real_mode else 32 if args.entry_32bit else None
