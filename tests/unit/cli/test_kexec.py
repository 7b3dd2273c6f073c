"""The kexec-tools compatible front end maps flags to the same actions."""

from __future__ import annotations

import pytest

from pykexec import api
from pykexec.cli import kexec as kexec_compat
from pykexec.errors import UsageError


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(api, "load", lambda opts, **kw: (seen.append(("load", opts)), None, None))
    monkeypatch.setattr(api, "execute", lambda **kw: seen.append(("exec", kw)))
    monkeypatch.setattr(api, "unload", lambda **kw: seen.append(("unload", kw)))
    return seen


def test_systemctl_style_load(calls):
    assert kexec_compat.main(["-s", "-l", "/boot/vmlinuz", "--initrd=/boot/initrd",
                              "--reuse-cmdline", "--append=quiet"]) == 0
    (action, opts), = calls
    assert action == "load" and opts.mode == "file" and opts.reuse_cmdline
    assert opts.initrds == ("/boot/initrd",) and opts.append == "quiet" and not opts.crash


def test_command_line_is_a_synonym_of_append(calls):
    kexec_compat.main(["-l", "k", "--command-line", "a=b"])
    assert calls[0][1].append == "a=b" and calls[0][1].mode == "auto"


def test_panic_load_and_unload(calls):
    kexec_compat.main(["-p", "k", "-c"])
    kexec_compat.main(["-p", "-u"])
    assert calls[0][1].crash and calls[0][1].mode == "user"
    assert calls[1] == ("unload", {"crash": True})


def test_exec_and_no_sync(calls):
    kexec_compat.main(["-e", "-y", "-x"])
    assert calls == [("exec", {"sync": False})]


def test_bare_kernel_loads_then_executes(calls):
    kexec_compat.main(["-f", "k"])
    assert [c[0] for c in calls] == ["load", "exec"]


def test_status_exit_codes(monkeypatch):
    monkeypatch.setattr(api, "status", lambda: api.Status(True, False, 0))
    assert kexec_compat.main(["-S"]) == 0
    assert kexec_compat.main(["-S", "-p"]) == 1


def test_nothing_to_do_is_a_usage_error():
    with pytest.raises(UsageError):
        kexec_compat.main([])


def test_entry_flags_ask_for_the_entry(calls, caplog):
    """kexec-tools' bzImage64_load: --real-mode wins over --entry-32bit; neither is ignored."""
    for flags, entry in (([], None), (["--entry-32bit"], 32), (["--real-mode"], 16),
                         (["--entry-32bit", "--real-mode"], 16)):
        calls.clear()
        kexec_compat.main(["-l", "k", *flags])
        assert calls[0][1].entry == entry, flags
    assert "ignored" not in caplog.text
    kexec_compat.main(["-l", "k", "--console-vga"])
    assert "--console-vga is accepted for compatibility and ignored" in caplog.text


def test_debug_shows_the_segments_and_the_call(monkeypatch, capsys):
    """As kexec-tools -d: what was handed to the kernel (segments, entry, notes) and through which call."""
    from pykexec.backends import LoadReport
    from pykexec.plan import plan
    from tests.unit.plan.conftest import debian61_bzimage, qemu_machine
    planned = plan(debian61_bzimage(), machine=qemu_machine("qemu-pc-1g-debian6.1.iomem"), entry=32)
    monkeypatch.setattr(api, "load", lambda opts, **kw: (None, LoadReport(syscall="kexec_load"), planned))
    assert kexec_compat.main(["-d", "-l", "k", "--entry-32bit"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "kexec: loaded k with kexec_load" in err
    assert any(line.startswith("kexec: ") and "32-bit boot protocol" in line for line in err), err
    kernel = next(s for s in planned.segments if s.role == "kernel")
    assert any(f"{kernel.mem:#018x}" in line and "kernel" in line for line in err), err


def test_ignored_options_take_what_kexec_tools_gives_them(calls, caplog):
    """kexec-tools' option tables: --elf64-core-headers and --pass-memmap-cmdline take no value, so the
    kernel after them is still the kernel; --type (-t) and --mem-min take one."""
    kexec_compat.main(["-p", "--elf64-core-headers", "--pass-memmap-cmdline", "/boot/vmlinuz", "--reset-vga"])
    kexec_compat.main(["-l", "-t", "bzImage", "--mem-min=0x1000000", "/boot/vmlinuz"])
    assert [(c[1].image, c[1].crash) for c in calls] == [("/boot/vmlinuz", True), ("/boot/vmlinuz", False)]
    for flag in ("--elf64-core-headers", "--pass-memmap-cmdline", "--reset-vga", "--type", "--mem-min"):
        assert f"{flag} is accepted for compatibility and ignored" in caplog.text


def test_print_ckr_size(monkeypatch, capsys):
    """kexec --print-ckr-size: the crash kernel region's size in bytes, 0 without one."""
    for size, said in ((256 << 20, "268435456"), (None, "0")):
        monkeypatch.setattr(api, "status", lambda: api.Status(False, False, size))
        assert kexec_compat.main(["--print-ckr-size"]) == 0
        assert capsys.readouterr().out == said + "\n"


@pytest.mark.parametrize("option", ["--load-preserve-context", "--load-live-update", "--entry=0x100000"])
def test_what_would_change_the_boot_is_refused_not_ignored(calls, option):
    with pytest.raises(UsageError, match=f"unrecognized arguments: {option}"):
        kexec_compat.main(["-l", option, "/boot/vmlinuz"])
    assert calls == []
