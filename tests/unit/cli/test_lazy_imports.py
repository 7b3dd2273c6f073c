"""``--version``, ``extract``, ``inspect``, ``load`` and ``plan`` load only what they use.

Start-up is most of what a small extract or a dry-run load costs, so each verb
imports its own modules and each format imports its library when it parses.
These tests run the CLI in a fresh interpreter and list what it imported: a
top-level import of pefile, pyelftools, unicorn, cryptography, the loader or
the planner on the extract path, or of anything a plain bzImage's file-mode
load does not use on the load path (a parser the registry never reaches, a
decompressor for a payload the kernel decompresses itself), makes them fail;
so does any verb's module on ``--version``.  The load path is checked on
synthetic images here and on Debian's kernels (``-m real``).  The peak memory
of a load and of a plan is measured the same way: it must not grow with the
initrd neither reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import builders as b
from tests import material

# Never needed to extract or inspect a bzImage whose payload is zstd.
HEAVY = ("pefile", "elftools", "unicorn", "cryptography", "lz4", "lzo", "ctypes", "logging",
         "hashlib", "pykexec.api", "pykexec.backends.linux.syscalls", "pykexec.backends.linux.policy",
         "pykexec.backends.linux.file", "pykexec.backends.linux.user", "pykexec.cli.kexec",
         "pykexec.receivers", "pykexec.plan", "pykexec.machine", "pykexec.trust", "pykexec.efi",
         "pykexec.boot")

# Never needed for `load --dry-run --mode file` of a bzImage with no signature check: the
# kernel reads the files itself, and the text view shows no hashes.
HEAVY_FOR_LOAD = ("pefile", "elftools", "unicorn", "cryptography", "lz4", "lzo", "zstandard",
                  "ctypes", "hashlib", "pykexec.images", "pykexec.output", "pykexec.boot.usermode",
                  "pykexec.boot.multiboot_info", "pykexec.boot.purgatory", "pykexec.boot.firmware",
                  "pykexec.efi", "pykexec.trust.verify", "pykexec.trust.store",
                  "pykexec.trust.authenticode", "pykexec.backends.linux.file",
                  "pykexec.backends.linux.user", "pykexec.cli.emulate", "pykexec.cli.kexec",
                  # the registry stops at bzimage: no later format's module is imported
                  "pykexec.formats.arm64_image", "pykexec.formats.riscv_image",
                  "pykexec.formats.uki_addon", "pykexec.formats.loongarch_image",
                  "pykexec.formats.arm_zimage", "pykexec.formats.uefi_fv", "pykexec.formats.cpio",
                  "pykexec.formats.elf", "pykexec.formats.multiboot2", "pykexec.formats.multiboot",
                  "pykexec.formats.compression",
                  # no signature list is read, no device tree, no crash header
                  "uuid", "pykexec.trust.esl", "libfdt", "pykexec.machine.fdt",
                  "pykexec.boot.elfcore", "pykexec.machine.text")

# Never needed for `--version`: it builds no verb's options, so it imports no verb's module.
HEAVY_FOR_VERSION = (*HEAVY, "zstandard", "uuid", "pykexec.images", "pykexec.formats",
                     "pykexec.cli.plan", "pykexec.cli.verify", "pykexec.cli.emulate",
                     "pykexec.limits")

CHILD = """
import json, sys
from pykexec.cli import main
try:
    rc = main(sys.argv[1:]) if len(sys.argv) > 1 else None
except SystemExit as e:  # --version, --help
    rc = e.code
modules = sorted(sys.modules)
import resource
print(json.dumps({"rc": rc, "modules": modules,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), file=sys.stderr)
"""

QEMU_GUEST = Path(__file__).parents[2] / "data" / "machines" / "qemu-pc-1g-debian6.1.iomem"


def run_cli(*argv) -> dict:
    """Run ``pykexec.cli.main(argv)`` in a fresh interpreter: its exit code (``rc``), the
    modules it imported, its peak RSS in KiB (``maxrss_kib``) and its ``stdout``."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, argv)], capture_output=True,
                          text=True, timeout=120)
    return {**json.loads(proc.stderr.strip().splitlines()[-1]), "stdout": proc.stdout}


def imported(*argv) -> tuple[int | None, set[str], str]:
    """Run ``pykexec.cli.main(argv)`` in a fresh interpreter: its exit code, the modules
    it imported, and its stdout."""
    report = run_cli(*argv)
    return report["rc"], set(report["modules"]), report["stdout"]


def dry_run(image, initrd, *extra) -> dict:
    """``load --dry-run`` on the described QEMU guest, with no signature required (hermetic)."""
    return run_cli("load", "--dry-run", image, "--initrd", initrd, "--machine", QEMU_GUEST,
                   "--no-require-signature", "--command-line", "console=ttyS0", *extra)


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no disk: reading it still costs memory."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def loaded(modules: set[str], names) -> list[str]:
    return sorted(m for m in modules for n in names if m == n or m.startswith(n + "."))


@pytest.fixture
def bzimage_zstd(image_file):
    """A bzImage with an EFI stub's PE header (as distributions ship them) and a zstd payload."""
    return image_file(b.bzimage(compression="zstd", pe=True, signed=True))


def test_importing_the_cli_loads_no_format(tmp_path):
    rc, modules, _ = imported()
    assert rc is None
    assert loaded(modules, ("pykexec.images", "pykexec.formats", *HEAVY)) == []


def test_version_loads_no_verb():
    """``pykexec --version`` builds no verb's options: no parser, planner, loader or
    signature code, and none of the libraries they use."""
    rc, modules, out = imported("--version")
    assert rc == 0 and out.startswith("pykexec ")
    assert loaded(modules, HEAVY_FOR_VERSION) == []


def test_extract_loads_only_the_parsers_it_uses(bzimage_zstd, tmp_path):
    rc, modules, out = imported("extract", bzimage_zstd, "-o", tmp_path / "out")
    assert rc == 0, out
    assert (tmp_path / "out" / "kernel").read_bytes() == bzimage_zstd.read_bytes()
    assert (tmp_path / "out" / "vmlinux").read_bytes() == b.elf64()
    assert loaded(modules, HEAVY) == []
    assert "zstandard" in modules


def test_inspect_parses_the_vmlinux_but_loads_nothing_else(bzimage_zstd):
    rc, modules, out = imported("inspect", bzimage_zstd, "--json")
    assert rc == 0, out
    assert [layer["format"] for layer in json.loads(out)["layers"]] == ["bzimage", "zstd", "elf"]
    assert "elftools" in modules and "hashlib" in modules  # the ELF layer, the sha256
    assert loaded(modules, set(HEAVY) - {"elftools", "hashlib"}) == []


def test_the_emulate_verbs_options_load_no_engine():
    """``pykexec --help`` builds every verb's options, the emulator's among them: that
    imports pykexec.efi, but neither its engine nor the formats its capture uses."""
    code = ("import json, sys; from pykexec.cli import build_parser; "
            "help = build_parser().format_help(); "
            "print(json.dumps({'help': help, 'modules': sorted(sys.modules)}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    report = json.loads(proc.stdout)
    modules = set(report["modules"])
    assert "emulate" in report["help"] and "pykexec.cli.emulate" in modules
    assert loaded(modules, ("unicorn", "ctypes", "pykexec.efi.machine", "pykexec.efi.cpu",
                            "pykexec.efi.capture", "pykexec.efi.services")) == []


def test_the_api_is_whole():
    """What the CLI imports piecemeal, :mod:`pykexec.api` and :mod:`pykexec` still offer."""
    import pykexec
    from pykexec import api, images
    from pykexec.backends.linux import syscalls as linux
    for name in ("read_image", "inspect", "prepare_file", "extract"):
        assert getattr(api, name) is getattr(images, name)
    for name in ("inspect", "prepare_file", "extract"):
        assert getattr(pykexec, name) is getattr(images, name)
    for name in api.BACKEND_NAMES:
        assert getattr(api, name) is getattr(linux, name)
    with pytest.raises(AttributeError):
        api.no_such_name  # noqa: B018


@pytest.mark.parametrize("pe", [False, True], ids=["plain", "signed-pe"])
def test_a_file_mode_dry_run_loads_only_what_it_uses(image_file, tmp_path, pe):
    """Neither pefile nor cryptography for a bzImage, with or without an EFI stub's signed
    PE header; no ctypes (no call is made) and no hashlib (the text view shows no hashes)."""
    image = image_file(b.bzimage(compression="zstd", pe=pe, signed=pe, init_size=0x800000))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"cpio" * 1024)
    report = dry_run(image, initrd, "--mode", "file")
    assert report["rc"] == 0, report["stdout"]
    assert "linux-file load for x86_64" in report["stdout"]
    assert "passed as original file" in report["stdout"]
    assert loaded(set(report["modules"]), HEAVY_FOR_LOAD) == []


@pytest.fixture(scope="module", params=["bookworm-cloud", "bookworm-signed", "sid-cloud"])
def debian_bzimage(request):
    """Debian's bzImages: 6.1 cloud (EFI stub, unsigned), 6.1 signed (Authenticode) and
    sid's 7.x cloud (zstd payload)."""
    return {"bookworm-cloud": material.bookworm_cloud_bzimage,
            "bookworm-signed": material.bookworm_signed_bzimage,
            "sid-cloud": material.sid_cloud_bzimage}[request.param]()


@pytest.mark.real
def test_a_file_mode_dry_run_of_a_debian_kernel_loads_only_what_it_uses(debian_bzimage, tmp_path):
    """A real kernel's dry run: no pefile, cryptography, unicorn or elftools, no decompressor
    (the kernel decompresses its own payload), and no parser after bzimage in the registry."""
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"07070" * 4096)
    report = dry_run(debian_bzimage, initrd, "--mode", "file")
    assert report["rc"] == 0, report["stdout"]
    assert "linux-file load for x86_64" in report["stdout"]
    assert "kernel: bzimage" in report["stdout"] and "passed as original file" in report["stdout"]
    assert loaded(set(report["modules"]), HEAVY_FOR_LOAD) == []


MiB = 1 << 20


def test_a_file_mode_dry_run_never_reads_the_initrd(image_file, tmp_path):
    """kexec_file_load reads the initrd itself: 256 MiB more of it costs no memory here."""
    image = image_file(b.bzimage(init_size=0x800000))
    small = dry_run(image, sparse(tmp_path / "small", 4096), "--mode", "file")
    large = dry_run(image, sparse(tmp_path / "large", 256 * MiB), "--mode", "file")
    assert small["rc"] == large["rc"] == 0, large["stdout"]
    assert "initrd: 268435456 bytes" in large["stdout"]
    assert (large["maxrss_kib"] - small["maxrss_kib"]) * 1024 < 32 * MiB


def test_plan_never_reads_the_initrd(image_file, tmp_path):
    """``plan`` maps its files as ``load`` does: the text view needs the initrd's size only."""
    image = image_file(b.bzimage(init_size=0x800000))
    small, large = (run_cli("plan", image, "--initrd", sparse(tmp_path / name, size),
                            "--machine", QEMU_GUEST)
                    for name, size in (("small", 4096), ("large", 256 * MiB)))
    assert small["rc"] == large["rc"] == 0, large["stdout"]
    assert "linux-file load for x86_64" in large["stdout"]
    assert (large["maxrss_kib"] - small["maxrss_kib"]) * 1024 < 32 * MiB


def test_a_user_mode_dry_run_reads_the_initrd_once(image_file, tmp_path):
    """User mode must hash every byte (the purgatory checks them), but it keeps one image of
    the initrd, the file's pages, and makes no copy of it."""
    image = image_file(b.bzimage(init_size=0x800000))
    small = dry_run(image, sparse(tmp_path / "small", 4096), "--mode", "user")
    large = dry_run(image, sparse(tmp_path / "large", 128 * MiB), "--mode", "user")
    assert small["rc"] == large["rc"] == 0, large["stdout"]
    assert "linux-user load for x86_64" in large["stdout"]
    assert (large["maxrss_kib"] - small["maxrss_kib"]) * 1024 < 1.5 * 128 * MiB
