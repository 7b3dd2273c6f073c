"""The kdump pattern both kdump scenarios plant and look for.

1024 unique pages (a magic, the seed and the page index, then SHAKE-256
bytes) held in an anonymous mmap by a guest process; after the crash, each
page is looked for on its own in /proc/vmcore.
"""

from __future__ import annotations

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
