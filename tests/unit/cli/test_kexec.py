"""The kexec-tools compatible front end maps flags to the same actions."""

from __future__ import annotations

import pytest

from pykexec import api
from pykexec.cli import kexec as kexec_compat
from pykexec.errors import UsageError


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(api, "load", lambda opts, **kw: seen.append(("load", opts)))
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
