"""The emulator runs in a child process: results, errors, callbacks and deaths come back."""

from __future__ import annotations

import os
import signal
import struct

import pytest

from pykexec.efi import isolation
from pykexec.errors import EmulationError, EmulationLimit
from pykexec.backends.linux.signals import Interrupted


def _work(value, *, trace, progress, fail=None):
    trace("[1] BS.AllocatePages(AnyPages) = EFI_SUCCESS")
    if progress is not None:
        progress("emulating", 5, None)
    if fail == "limit":
        raise EmulationLimit("instruction limit of 5 reached", pc=0x1000, calls=("X",),
                             instructions=5)
    if fail == "bug":
        raise ValueError("a bug")
    if fail == "abort":
        os.abort()
    if fail == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    if fail == "exit":
        os._exit(3)
    return {"value": value, "pid": os.getpid()}


def test_the_result_and_the_callbacks_come_back():
    lines, steps = [], []
    out = isolation.call(_work, b"x" * (1 << 20), trace=lines.append,
                         progress=lambda *a: steps.append(a))
    assert out["value"] == b"x" * (1 << 20) and out["pid"] != os.getpid()
    assert lines == ["[1] BS.AllocatePages(AnyPages) = EFI_SUCCESS"]
    assert steps == [("emulating", 5, None)]


def test_the_childs_error_is_raised_as_it_was():
    with pytest.raises(EmulationLimit) as e:
        isolation.call(_work, 1, fail="limit")
    assert e.value.pc == 0x1000 and e.value.instructions == 5 and e.value.calls == ("X",)
    assert str(e.value).startswith("instruction limit of 5 reached (pc 0x1000")


def test_a_bug_keeps_its_type_and_the_childs_traceback():
    with pytest.raises(ValueError, match="a bug") as e:
        isolation.call(_work, 1, fail="bug")
    assert "raised in the emulator's process" in e.value.__notes__[0]
    assert "_work" in e.value.__notes__[0]


def test_an_abort_is_an_emulation_error_with_the_last_calls():
    with pytest.raises(EmulationError) as e:
        isolation.call(_work, 1, fail="abort")
    assert "died of SIGABRT" in str(e.value)
    assert e.value.calls == ("BS.AllocatePages(AnyPages) = EFI_SUCCESS",)


def test_a_child_killed_by_sigterm_is_an_interruption():
    with pytest.raises(Interrupted) as e:
        isolation.call(_work, 1, fail="term")
    assert e.value.signum == signal.SIGTERM


def test_a_child_that_exits_without_a_result():
    with pytest.raises(EmulationError, match="exited with status 3 and no result"):
        isolation.call(_work, 1, fail="exit")


def test_unicorns_own_abort_on_guest_code_is_an_error_not_a_crash(capfd):
    """QEMU 5's AArch64 decoder asserts on this unallocated FP16 encoding (found by
    running random programs) and abort()s the process."""
    pytest.importorskip("unicorn")
    from pykexec import efi
    from .conftest import pe_image
    with pytest.raises(EmulationError, match="died of SIGABRT"):
        efi.emulate(pe_image(struct.pack("<I", 0x4EF90A1E), machine=0xAA64), memory=64 << 20)
    out, err = capfd.readouterr()
    assert out == "" and "should not be reached" in err


@pytest.mark.parametrize("machine", [0x8664, 0xAA64], ids=["x86_64", "arm64"])
def test_random_programs_end_in_pykexec_errors(machine):
    """Whatever an image's code does, emulate() returns or raises a PykexecError
    (derandomized, as test_fuzz_parsers is, so the suite gives the same answer every time)."""
    pytest.importorskip("unicorn")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from pykexec import efi
    from pykexec.errors import PykexecError
    from .conftest import pe_image

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.binary(min_size=4, max_size=512))
    def run(code):
        try:
            capture = efi.emulate(pe_image(code, machine=machine), memory=64 << 20,
                                  max_instructions=100_000, max_seconds=2)
        except PykexecError as e:  # an EmulationError says why, in words
            assert isinstance(e, EmulationError) and e.reason, e
        else:  # random code that reached a hand-over handed over something
            assert capture.arch == {0x8664: "x86_64", 0xAA64: "arm64"}[machine] and capture.kernel

    run()
