"""The kdump pattern both kdump scenarios plant and look for.

1024 unique pages (a magic, the seed and the page index, then SHAKE-256
bytes) held in an anonymous mmap by a guest process; after the crash, each
page is looked for on its own in /proc/vmcore.
"""

from __future__ import annotations

from . import harness as h

PAGES = 1024

PATTERN = '''
import hashlib
PAGE, PAGES = 4096, {pages}
MAGIC = b"PYKXPAT1" + bytes.fromhex("{seed}")
def page(i):
    head = MAGIC + i.to_bytes(4, "little")
    return head + hashlib.shake_256(MAGIC + i.to_bytes(4, "little")).digest(PAGE - len(head))
'''

HOLDER = '''
import mmap, os, time
m = mmap.mmap(-1, PAGE * PAGES)
for i in range(PAGES):
    m[i * PAGE:(i + 1) * PAGE] = page(i)
assert m[:len(MAGIC)] == MAGIC
with open("/tmp/holder.ready", "w") as f:
    f.write(str(os.getpid()))
while True:
    time.sleep(3600)
'''

SCANNER = '''
found = set()
CHUNK = 16 << 20
total = 0
with open("/proc/vmcore", "rb", buffering=0) as f:
    tail = b""
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        buf = tail + chunk
        pos = buf.find(MAGIC)
        while pos >= 0 and pos + PAGE <= len(buf):
            i = int.from_bytes(buf[pos + len(MAGIC):pos + len(MAGIC) + 4], "little")
            if i < PAGES and i not in found and buf[pos:pos + PAGE] == page(i):
                found.add(i)
            pos = buf.find(MAGIC, pos + 1)
        tail = buf[-PAGE:]
mark("vmcore-bytes", total)
mark("pages-found", len(found), PAGES)
mark("pattern", "FOUND" if len(found) == PAGES else "NOT FOUND")
'''


def pattern_code(seed: str, pages: int = PAGES) -> str:
    return PATTERN.format(pages=pages, seed=seed)


#: stage-1 shell lines after the crash load: start the holder, wait until it is ready, panic
PANIC = """
/vm/holder.py &
i=0
while [ ! -f /tmp/holder.ready ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done
[ -f /tmp/holder.ready ] || { mark holder-not-ready; exit 1; }
mark holder-ready "$(cat /tmp/holder.ready)"
echo 1 > /proc/sys/kernel/sysrq
mark crashing
echo c > /proc/sysrq-trigger
mark still-alive
"""


def add_holder(g: "h.Guest", seed: str, python: str = h.GUEST_PYTHON) -> str:
    """Put /vm/holder.py (the pattern of ``seed``, run by ``python``) in ``g``; returns the pattern code."""
    pattern = pattern_code(seed)
    g.file("/vm/holder.py", f"#!{python}\n" + pattern + HOLDER, mode=0o755)
    return pattern


def kdump_guest(scenario: str, seed: str, load_args: str, capture_cmdline: str) -> "h.Guest":
    """A Guest whose stage 1 loads a crash kernel with ``pykexec load <load_args> --crash``,
    starts the pattern holder and panics; stage 2 (the capture kernel) scans /proc/vmcore."""
    g = h.Guest(scenario)
    pattern = add_holder(g, seed)
    g.stage(1, h.sh_script(f"""
mark crash-size "$(cat /sys/kernel/kexec_crash_size)"
run load pykexec load {load_args}--crash /vm/vmlinuz --initrd /vm/initrd.img --command-line "{capture_cmdline}" || exit 1
mark crash-loaded "$(cat /sys/kernel/kexec_crash_loaded)"
""" + PANIC))
    g.stage(2, h.py_script(pattern + """
mark("cmdline", open("/proc/cmdline").read().strip())
""" + SCANNER))
    return g


def expect_dump(serial: "h.Serial", capture_cmdline: str, who_adds: str) -> None:
    """The crash happened, the capture kernel ran with ``capture_cmdline`` plus exactly
    one ``elfcorehdr=`` (added by ``who_adds``), and /proc/vmcore holds the pattern."""
    serial.expect_in_order("stage-begin 1", "holder-ready", "crashing", "stage-begin 2", "pattern",
                           "stage-end 2 rc=0")
    if serial.has("still-alive"):
        serial.fail("the first kernel survived sysrq-c")
    cmdline = serial.value("cmdline")
    words = cmdline.split()
    rest = [w for w in words if not w.startswith("elfcorehdr=")]
    if rest != capture_cmdline.split() or len(words) != len(rest) + 1:
        serial.fail(f"capture kernel cmdline {cmdline!r}: expected {capture_cmdline!r} plus one "
                    f"elfcorehdr= ({who_adds} adds it)")
    if serial.value("pattern") != "FOUND":
        serial.fail(f"the pattern is not in /proc/vmcore: pages found {serial.value('pages-found')}")


def iomem_ranges(text: str, kind: str) -> list:
    """Top-level ``kind`` ranges of a /proc/iomem text, as (start, end) inclusive."""
    out = []
    for line in text.splitlines():
        if line.startswith(" "):
            continue
        span, _, name = line.partition(" : ")
        if name.strip() == kind:
            lo, _, hi = span.partition("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def crash_regions(iomem: str) -> list:
    """The "Crash kernel" entries (children of System RAM) of a /proc/iomem text."""
    out = []
    for line in iomem.splitlines():
        span, _, name = line.strip().partition(" : ")
        if name.strip() == "Crash kernel":
            lo, _, hi = span.partition("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def expect_capture(serial: h.Serial, capture_cmdline: str, cmdline_mark: str) -> None:
    """The capture kernel of an arm64 kdump: sysrq-c stopped the first kernel, the capture
    kernel got exactly ``capture_cmdline`` (reported as ``cmdline_mark``), found the whole
    pattern in /proc/vmcore, and its System RAM (``iomem2``) lies inside the first kernel's
    crash region(s) (``iomem1``)."""
    if serial.has("still-alive"):
        serial.fail("the first kernel survived sysrq-c")
    if serial.value(cmdline_mark) != capture_cmdline:
        serial.fail(f"the capture kernel's cmdline is {serial.value(cmdline_mark)!r}, not {capture_cmdline!r}")
    if serial.value("pattern") != "FOUND":
        serial.fail(f"the pattern is not in /proc/vmcore: pages found {serial.value('pages-found')}")
    crash = crash_regions(serial.lines("iomem1"))
    ram2 = iomem_ranges(serial.lines("iomem2"), "System RAM")
    if not crash or not ram2 or not all(any(a <= lo and hi <= b for a, b in crash) for lo, hi in ram2):
        serial.fail(f"the capture kernel's System RAM {[(hex(a), hex(b)) for a, b in ram2]} is not inside "
                    f"the crash region {[(hex(a), hex(b)) for a, b in crash]}")
