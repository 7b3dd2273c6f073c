"""What a kernel refusal says: EPERM's causes (CAP_SYS_BOOT, the sysctls, a signature under
lockdown), signature errnos, a UKI's inner kernel; exit status 2; no fd left open on errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pykexec import api
from pykexec.backends.linux import policy
from pykexec.errors import KernelRefused, SyscallError
from pykexec.machine.model import Machine

from .fakes import FakeSyscalls, open_fds
from .test_loader import arm64_image, run_load, write

CAPS_ROOT = "CapEff:\t000001ffffffffff\n"
CAPS_NONE = "CapEff:\t0000000000000000\n"


def fake_proc(tmp_path: Path, *, caps: str = CAPS_ROOT, disabled: str = "0",
              limit: str = "-1") -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "self" / "status").write_text("Name:\tpykexec\n" + caps)
    (proc / "sys" / "kernel" / "kexec_load_disabled").write_text(disabled + "\n")
    (proc / "sys" / "kernel" / "kexec_load_limit_reboot").write_text(limit + "\n")
    (proc / "sys" / "kernel" / "kexec_load_limit_panic").write_text("-1\n")
    return proc


def eperm(call: str = "kexec_file_load") -> SyscallError:
    return SyscallError(call, errno.EPERM, os.strerror(errno.EPERM))


def test_eperm_under_lockdown_is_a_signature_refusal_with_what_to_do(tmp_path):
    e = policy.explain(eperm(), lockdown="integrity", proc=fake_proc(tmp_path))
    assert isinstance(e, KernelRefused) and e.exit_code == 2 and e.errno_value == errno.EPERM
    text = str(e)
    assert text.startswith("the running kernel refused this kernel: kernel lockdown is 'integrity'")
    assert "platform (the UEFI db and MOK" in text and "mokutil --import" in text
    assert text.endswith("(kexec_file_load: EPERM)")
    assert "Operation not permitted" not in text


def test_eperm_without_cap_sys_boot_says_run_as_root(tmp_path):
    e = policy.explain(eperm(), lockdown="integrity", proc=fake_proc(tmp_path, caps=CAPS_NONE))
    assert isinstance(e, KernelRefused) and "CAP_SYS_BOOT: run pykexec as root" in str(e)


@pytest.mark.parametrize("kw, words", [({"disabled": "1"}, "kexec_load_disabled is 1"),
                                       ({"limit": "0"}, "kexec_load_limit_reboot is 0")])
def test_eperm_from_the_sysctls(tmp_path, kw, words):
    e = policy.explain(eperm(), lockdown="none", proc=fake_proc(tmp_path, **kw))
    assert isinstance(e, KernelRefused) and words in str(e)


def test_eperm_without_lockdown_or_known_cause_keeps_the_generic_advice(tmp_path):
    e = policy.explain(eperm(), lockdown="none", proc=fake_proc(tmp_path))
    assert type(e) is SyscallError and e.exit_code == 1 and e.advice == policy.ADVICE[errno.EPERM]


def test_kexec_load_eperm_under_lockdown_names_the_call(tmp_path):
    e = policy.explain(eperm("kexec_load"), lockdown="confidentiality", proc=fake_proc(tmp_path))
    assert "the kernel refuses kexec_load" in str(e) and "--mode file" in str(e)


@pytest.mark.parametrize("err", sorted(policy.SIGNATURE_ERRNOS))
def test_signature_errnos_are_refusals(tmp_path, err):
    e = policy.explain(SyscallError("kexec_file_load", err, os.strerror(err)), lockdown=None,
                       proc=fake_proc(tmp_path))
    assert isinstance(e, KernelRefused) and e.exit_code == 2
    assert f"(kexec_file_load: {errno.errorcode[err]})" in str(e)


def test_uki_refusal_names_the_inner_kernel(tmp_path):
    from types import SimpleNamespace
    prepared = SimpleNamespace(layers=(SimpleNamespace(format="uki"),
                                       SimpleNamespace(format="bzimage")))
    e = policy.explain(eperm(), lockdown="integrity", prepared=prepared, proc=fake_proc(tmp_path))
    assert "refused the kernel inside this UKI (its .linux section)" in str(e)
    assert "build the UKI around a kernel signed" in str(e)


def test_load_turns_eperm_into_a_refusal(tmp_path):
    sysfs = tmp_path / "sys"
    (sysfs / "kernel" / "security").mkdir(parents=True)
    (sysfs / "kernel" / "security" / "lockdown").write_text("none [integrity] confidentiality\n")
    fake = FakeSyscalls(fail={"kexec_file_load": errno.EPERM})
    with pytest.raises(KernelRefused, match="kernel lockdown is 'integrity'"):
        run_load(api.LoadOptions(image=write(tmp_path, "I", arm64_image()),
                                 require_signature=False), fake, sysfs)
    assert [c[0] for c in fake.calls] == ["kexec_file_load"]


def test_failed_opens_leave_no_fd_open(tmp_path):
    image = write(tmp_path, "I", arm64_image())
    initrd = write(tmp_path, "initrd", b"x" * 100)
    before = open_fds()
    for _ in range(5):
        with pytest.raises(FileNotFoundError):
            api.load(api.LoadOptions(image=image, initrds=(initrd, tmp_path / "missing")),
                     syscalls=FakeSyscalls(), sysfs=tmp_path, machine=Machine(arch="arm64"),
                     efivars=tmp_path / "no-efivars")
    assert open_fds() <= before
