"""Scenarios under kernel lockdown (``lockdown=integrity``), all in one boot of three stages.

The guest boots Debian's signed cloud kernel with UEFI (OVMF) whose ``db`` holds
Debian's Secure Boot CA (see tests/vm/uefi.py for why UEFI: Debian's builtin
keyring trusts no Debian key; the kernel trusts Debian's kernels through the
platform keyring, which it fills from ``db``).  Secure Boot itself is off;
lockdown comes from the command line.  Every load runs under ``strace`` (only
the kexec calls and memfd_create are traced), which shows which refusals
happened before any kexec system call and which came from the kernel.

* Stage 1, lockdown on (scenarios 1-4): /sys/kernel/security/lockdown and
  ``pykexec machine --json`` say ``integrity``; the platform keyring holds the
  CA loaded from ``UEFI:db``; an unsigned kernel (Debian's, with its signature
  removed by ``sbattach --remove``) is refused by pykexec's policy, and with
  ``--no-require-signature`` by the kernel, both with pykexec's sentence and
  exit 2; ``--mode user`` and ``kexec -c`` are refused before any call; nothing
  is loaded after all that; then Debian's signed kernel is loaded with no flag
  at all (pykexec verifies it against ``db``, read through efivarfs, and the
  kernel against its platform keyring) and executed with a command line and an
  initrd carrying a token.
* Stage 2, lockdown on (scenario 5): a UKI around Debian's signed kernel,
  signed by sbsign with a throwaway key and trusted with ``--trust CERT``.  The
  same UKI with one byte of ``.cmdline`` changed is refused by pykexec before any
  call; a UKI (signed the same way) around the *unsigned* kernel passes
  pykexec's check and is refused by the kernel, with the sentence naming the
  UKI's inner kernel; nothing is loaded after both; then the good UKI is loaded
  and executed.
* Stage 3 reports the UKI's command line and the token in its ``.initrd`` (a small
  busybox initramfs, so that the UKI stays small).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pefile
import pytest

from . import harness as h
from . import uefi

pytestmark = pytest.mark.vm

MEMORY = 2048
LOCKDOWN = "lockdown=integrity"
DB_VAR = "db-d719b2cb-3d3a-4596-a3bc-dad00e67656f"
DEBIAN_CA = "CN=Debian Secure Boot CA"
DEBIAN_SIGNER = "CN=Debian Secure Boot Signer 2022 - linux"
UKI_SIGNER = "pykexec VM test UKI signer"
TRACED = "kexec_file_load,kexec_load,memfd_create"
KEXEC_CALLS = ("kexec_file_load(", "kexec_load(")

STAGE1 = """
mount -t securityfs securityfs /sys/kernel/security
insmod /vm/efivarfs.ko && mount -t efivarfs efivarfs /sys/firmware/efi/efivars
mark lockdown1 "$(cat /sys/kernel/security/lockdown)"
mark cmdline1 "$(cat /proc/cmdline)"
mark db-var "$(ls /sys/firmware/efi/efivars 2>/dev/null | grep -c '^{db_var}$')"
grep -E 'asymmetri|keyring   \\.(builtin_trusted_keys|secondary_trusted_keys|platform|machine):' /proc/keys >/tmp/keys
show keys /tmp/keys
dmesg | grep -E "X.509|UEFI:db" >/tmp/x509
show x509 /tmp/x509
run machine pykexec machine --json
T="strace -f --seccomp-bpf -e trace={traced} -o"
OTHER="console=ttyS0 stage=9"
run unsigned $T /tmp/t.unsigned pykexec load /vm/unsigned.bzimage --initrd /vm/small.cpio --command-line "$OTHER"
show unsigned.trace /tmp/t.unsigned
run unsigned-kernel $T /tmp/t.unsigned-kernel pykexec load /vm/unsigned.bzimage --no-require-signature --initrd /vm/small.cpio --command-line "$OTHER"
show unsigned-kernel.trace /tmp/t.unsigned-kernel
run user $T /tmp/t.user pykexec load /vm/vmlinuz --mode user --initrd /vm/small.cpio --command-line "$OTHER"
show user.trace /tmp/t.user
run kexec-c $T /tmp/t.kexec-c kexec -c -l /vm/vmlinuz --initrd=/vm/small.cpio --command-line="$OTHER"
show kexec-c.trace /tmp/t.kexec-c
run status0 pykexec status --json
mark sysfs0 "$(cat /sys/kernel/kexec_loaded)"
cat /vm/initrd.img /vm/token2.cpio /vm/uki.cpio >/tmp/stage2.img
run signed $T /tmp/t.signed pykexec load /vm/vmlinuz --initrd /tmp/stage2.img --command-line "{cmdline2}" --json
show signed.trace /tmp/t.signed
run status1 pykexec status --json
run exec1 pykexec exec
mark exec1-returned
"""

STAGE2 = """
mount -t securityfs securityfs /sys/kernel/security
mark lockdown2 "$(cat /sys/kernel/security/lockdown)"
mark cmdline2 "$(cat /proc/cmdline)"
mark token2 "$(cat /vm/token 2>/dev/null || echo MISSING)"
T="strace -f --seccomp-bpf -e trace={traced} -o"
cp /vm/uki/signed.efi /tmp/tampered.efi
printf '%s' "$(cat /vm/uki/tamper-byte)" | dd of=/tmp/tampered.efi bs=1 seek="$(cat /vm/uki/tamper-offset)" conv=notrunc 2>/dev/null
mark tamper-cmp "$(cmp -l /vm/uki/signed.efi /tmp/tampered.efi | wc -l)"
run uki-tampered $T /tmp/t.tampered pykexec load /tmp/tampered.efi --trust /vm/uki/cert.pem
show uki-tampered.trace /tmp/t.tampered
run uki-inner $T /tmp/t.inner pykexec load /vm/uki/inner-unsigned.efi --trust /vm/uki/cert.pem
show uki-inner.trace /tmp/t.inner
run status2 pykexec status --json
mark sysfs2 "$(cat /sys/kernel/kexec_loaded)"
run uki $T /tmp/t.uki pykexec load /vm/uki/signed.efi --trust /vm/uki/cert.pem --json
show uki.trace /tmp/t.uki
run exec2 pykexec exec
mark exec2-returned
"""

STAGE3 = """
mount -t securityfs securityfs /sys/kernel/security
mark lockdown3 "$(cat /sys/kernel/security/lockdown)"
mark cmdline3 "$(cat /proc/cmdline)"
mark token3 "$(cat /vm/token3 2>/dev/null || echo MISSING)"
mark token2-in-stage3 "$(cat /vm/token 2>/dev/null || echo absent)"
"""


def _material(what, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except h.VmError:
        raise
    except Exception as e:  # material and pki raise RuntimeError with the reason
        raise h.VmError(f"cannot get {what}: {e}") from e


def _debian_ca():
    from tests.real.test_trust_real import _debian_file
    return _material("Debian's Secure Boot CA (shim-unsigned)", _debian_file, "shim-unsigned",
                     "usr/share/shim/debian-uefi-ca.der")


def _unsigned_copy(signed, out):
    from tests.unit.trust.pki import sbsign_path
    _material("sbsigntool", sbsign_path)
    shutil.copyfile(signed, out)
    subprocess.run([shutil.which("sbattach"), "--remove", str(out)], check=True,
                   capture_output=True)
    return out


def _cmdline_offset(uki, needle: bytes) -> int:
    """File offset of ``needle`` inside the UKI's .cmdline section."""
    pe = pefile.PE(str(uki), fast_load=True)
    try:
        (sec,) = [s for s in pe.sections if s.Name.rstrip(b"\0") == b".cmdline"]
        at = sec.get_data().find(needle)
        assert at >= 0, f".cmdline {sec.get_data()!r} lacks {needle!r}"
        return sec.PointerToRawData + at
    finally:
        pe.close()


@pytest.fixture(scope="module")
def run(vm_material):
    """Build everything, boot once, return (serial, expectations)."""
    from tests import material
    from tests.unit.trust.pki import make_identity, sbsign_file

    m2, m3, tok2, tok3 = h.token(), h.token(), h.token(), h.token()
    cmdline2 = f"console=ttyS0 panic=-1 {LOCKDOWN} stage=2 marker={m2}"
    cmdline3 = f"console=ttyS0 panic=-1 {LOCKDOWN} stage=3 marker={m3}"
    g = h.Guest("lockdown")
    stub = _material("sid's linuxx64.efi.stub", material.systemd_stub, "sid", "x64", "linux")
    strace = uefi.strace()
    ca = _debian_ca()
    vars_file = uefi.vars_with_db(g.dir / "OVMF_VARS.fd", [ca.read_bytes()])
    efivarfs = _material("efivarfs.ko", uefi.efivarfs_module, g.kernel)
    unsigned = _unsigned_copy(g.kernel, g.dir / "unsigned.bzimage")

    uefi.host_binary(g, strace)
    g.archive("/vm/small.cpio", {"/vm/small": "small initrd\n"})
    h.add_token_archive(g, tok2, "/vm/token2.cpio")
    g.stage(1, h.sh_script(STAGE1.format(db_var=DB_VAR, traced=TRACED, cmdline2=cmdline2)))
    g.stage(2, h.sh_script(STAGE2.format(traced=TRACED)))
    g.initrd()

    # the UKIs: .initrd = a busybox initramfs for stage 3 with a token only it has
    uki_initrd = h.busybox_initramfs(g, 3, h.sh_script(STAGE3), files={"/vm/token3": tok3 + "\n"},
                                     applets=("sh", "mount", "mkdir", "cat", "cut", "poweroff",
                                              "sleep", "sync", "awk", "grep"))
    token3 = g.build_archive("token3.cpio", {"/vm/token3": tok3 + "\n"})
    signer = _material("a throwaway signing key", make_identity, g.dir, UKI_SIGNER)
    try:
        raw = material.build_uki(g.dir / "uki.efi", linux=g.kernel, stub=stub, cmdline=cmdline3,
                                 initrd=uki_initrd)
        raw_inner = material.build_uki(g.dir / "inner-unsigned-raw.efi", linux=unsigned, stub=stub,
                                       cmdline="console=ttyS0 stage=9", initrd=token3)
    except Exception as e:
        raise h.VmError(f"cannot build the UKIs with ukify: {e}") from e
    signed_uki, inner_uki = g.dir / "signed.efi", g.dir / "inner-unsigned.efi"
    _material("sbsign", sbsign_file, raw, signed_uki, signer)
    _material("sbsign", sbsign_file, raw_inner, inner_uki, signer)
    offset = _cmdline_offset(signed_uki, b"stage=3") + len("stage=")
    uki_cpio = h.Cpio()
    uki_cpio.file("/vm/uki/signed.efi", signed_uki)
    uki_cpio.file("/vm/uki/inner-unsigned.efi", inner_uki)
    uki_cpio.file("/vm/uki/cert.pem", signer.cert_path)
    uki_cpio.data("/vm/uki/tamper-offset", f"{offset}\n")
    uki_cpio.data("/vm/uki/tamper-byte", "4")  # stage=3 -> stage=4
    g.embed("/vm/uki.cpio", uki_cpio.write_file(g.dir / "uki.cpio", compress=False))
    g.embed("/vm/unsigned.bzimage", unsigned)
    g.embed("/vm/efivarfs.ko", efivarfs)

    serial = g.boot(LOCKDOWN, memory=MEMORY, timeout=600, extra_args=uefi.qemu_args(vars_file))
    return serial, {"cmdline2": cmdline2, "cmdline3": cmdline3, "token2": tok2, "token3": tok3}


def _refused(serial, name: str) -> str:
    """``run NAME`` exited 2 with exactly one ``pykexec: error:`` line; returns that line."""
    err = serial.values(name + ".err")
    if serial.values(name + ".rc") != ["2"] or len(err) != 1 or not err[0].startswith("pykexec: error: "):
        serial.fail(f"expected exit 2 and one 'pykexec: error:' line:\n{serial.command(name)}")
    if "Traceback" in serial.text or "Operation not permitted" in err[0]:
        serial.fail(f"a traceback or a raw errno text:\n{serial.command(name)}")
    return err[0]


def _kexec_calls(serial, name: str) -> list[str]:
    """The kexec system calls strace saw during ``run NAME``."""
    return [line for line in serial.values(name + ".trace") if any(c in line for c in KEXEC_CALLS)]


def _no_call_made(serial, name: str) -> None:
    trace = serial.values(name + ".trace")
    if not any("+++ exited with 2 +++" in line for line in trace):
        serial.fail(f"strace did not trace {name} to its exit: {trace}")
    calls = [line for line in trace if "(" in line and "+++" not in line and "---" not in line]
    if calls:
        serial.fail(f"{name} made kexec calls or memfds before refusing: {calls}")


def test_stage1_runs_under_lockdown_integrity(run):
    serial, _ = run
    for stage in ("1", "2", "3"):
        if serial.value(f"lockdown{stage}") != "none [integrity] confidentiality":
            serial.fail(f"stage {stage}: lockdown is {serial.value(f'lockdown{stage}')!r}")
    if LOCKDOWN not in serial.value("cmdline1").split():
        serial.fail(f"stage 1 command line lacks {LOCKDOWN}: {serial.value('cmdline1')!r}")
    h.expect_ok(serial, "machine")
    state = json.loads(serial.lines("machine.out"))["state"]
    if state.get("lockdown") != "integrity" or state.get("efi") is not True:
        serial.fail(f"`pykexec machine --json` state: {state}")


def test_unsigned_kernel_is_refused_with_our_sentence(run):
    serial, _ = run
    line = _refused(serial, "unsigned")
    want = ("pykexec: error: /vm/unsigned.bzimage: signature check failed: the image is not signed "
            "(no certificate table) (required: kernel lockdown is 'integrity'); sign it")
    if not line.startswith(want):
        serial.fail(f"policy refusal reads {line!r}")
    _no_call_made(serial, "unsigned")
    # with pykexec's check off, the kernel refuses it: the sentence, not the errno text
    line = _refused(serial, "unsigned-kernel")
    want = ("pykexec: error: the running kernel refused this kernel: kernel lockdown is "
            "'integrity', so kexec_file_load accepts only a kernel whose own signature verifies")
    if not line.startswith(want) or not line.endswith("(kexec_file_load: EPERM)"):
        serial.fail(f"kernel refusal reads {line!r}")
    calls = _kexec_calls(serial, "unsigned-kernel")
    if len(calls) != 1 or "= -1 EPERM" not in calls[0]:
        serial.fail(f"expected one kexec_file_load that failed with EPERM: {calls}")


def test_debian_signed_kernel_is_trusted_through_uefi_db_and_boots(run):
    serial, want = run
    keys = serial.lines("keys")
    x509 = serial.lines("x509")
    if serial.value("db-var") != "1":
        serial.fail("efivarfs shows no db variable")
    if "integrity: Loaded X.509 cert 'Debian Secure Boot CA:" not in x509 or "UEFI:db" not in x509:
        serial.fail(f"the kernel did not load Debian's CA from UEFI:db:\n{x509}")
    if "keyring   .platform: 1" not in keys or "asymmetri Debian Secure Boot CA:" not in keys:
        serial.fail(f"the platform keyring does not hold Debian's CA:\n{keys}")
    h.expect_ok(serial, "signed")
    result = json.loads(serial.lines("signed.out"))
    sig = result.get("signature") or ""
    if not (result.get("loaded") and DEBIAN_SIGNER in sig and DEBIAN_CA in sig and DB_VAR in sig):
        serial.fail(f"pykexec did not verify the kernel against db: {result.get('signature')!r}")
    calls = _kexec_calls(serial, "signed")
    if len(calls) != 1 or not calls[0].rstrip().endswith("= 0"):
        serial.fail(f"expected one successful kexec_file_load: {calls}")
    if h.status_json(serial, "status1").get("loaded") is not True:
        serial.fail("status does not show the signed kernel loaded")
    serial.expect_in_order("stage-begin 1", "stage-begin 2")
    if serial.has("exec1-returned"):
        serial.fail(f"`pykexec exec` returned:\n{serial.command('exec1')}")
    if serial.value("cmdline2").strip() != want["cmdline2"]:
        serial.fail(f"stage 2 command line {serial.value('cmdline2')!r}, expected {want['cmdline2']!r}")
    if serial.value("token2") != want["token2"]:
        serial.fail(f"stage 2 token {serial.value('token2')!r}, expected {want['token2']!r}")


def test_user_mode_is_refused_before_any_call(run):
    serial, _ = run
    for name in ("user", "kexec-c"):
        line = _refused(serial, name)
        if "kernel lockdown is 'integrity': the kernel refuses kexec_load" not in line:
            serial.fail(f"{name} refusal reads {line!r}")
        _no_call_made(serial, name)
    if h.status_json(serial, "status0").get("loaded") is not False or serial.value("sysfs0") != "0":
        serial.fail("something is loaded after the refused loads of stage 1")


def test_signed_uki_verified_by_pykexec_and_tampered_one_refused_before_any_call(run):
    serial, want = run
    if serial.value("tamper-cmp") != "1":
        serial.fail(f"the tampered UKI differs in {serial.value('tamper-cmp')} bytes, not 1")
    line = _refused(serial, "uki-tampered")
    if not line.startswith("pykexec: error: /tmp/tampered.efi: signature check failed: ") \
            or "digest" not in line:
        serial.fail(f"tampered UKI refusal reads {line!r}")
    _no_call_made(serial, "uki-tampered")
    # verified by pykexec, refused by the kernel: its .linux is unsigned
    line = _refused(serial, "uki-inner")
    if not line.startswith("pykexec: error: the running kernel refused the kernel inside this UKI "
                           "(its .linux section): kernel lockdown is 'integrity'"):
        serial.fail(f"inner-kernel refusal reads {line!r}")
    calls = _kexec_calls(serial, "uki-inner")
    if len(calls) != 1 or "= -1 EPERM" not in calls[0]:
        serial.fail(f"expected one kexec_file_load that failed with EPERM: {calls}")
    if h.status_json(serial, "status2").get("loaded") is not False or serial.value("sysfs2") != "0":
        serial.fail("something is loaded after the refused UKIs")
    h.expect_ok(serial, "uki")
    result = json.loads(serial.lines("uki.out"))
    if not result.get("loaded") or f"CN={UKI_SIGNER}" not in (result.get("signature") or ""):
        serial.fail(f"the UKI was not verified with the throwaway key: {result.get('signature')!r}")
    serial.expect_in_order("stage-begin 1", "stage-begin 2", "stage-begin 3", "stage-end 3 rc=0")
    if serial.value("cmdline3").strip() != want["cmdline3"]:
        serial.fail(f"stage 3 command line {serial.value('cmdline3')!r}, expected {want['cmdline3']!r}")
    if serial.value("token3") != want["token3"] or serial.value("token2-in-stage3") != "absent":
        serial.fail(f"stage 3 initrd is not the UKI's: token3 {serial.value('token3')!r}, "
                    f"stage 2 token {serial.value('token2-in-stage3')!r}")
