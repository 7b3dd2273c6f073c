#!/usr/bin/env python3
"""Write the seed corpus for fuzzers: tiny synthetic images in tests/fuzz/corpus/<format>/.

Run from the repository root:  .venv/bin/python tests/fuzz/make_corpus.py
Each file is a few KB at most; the directory name is the format the registry reports for
the file's outermost layer.  Malformed seeds (the interesting edges) go under the format
they imitate, with names saying what is wrong.  The output is deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import builders as b  # noqa: E402

MAX_SIZE = 16 << 10


def seeds() -> dict[str, dict[str, bytes]]:
    small_elf = b.elf64(load=b"\x90" * 16)
    out: dict[str, dict[str, bytes]] = {name: {"valid.bin": data} for name, data in b.samples().items()}
    out["bzimage"].update({
        "v2.04-scan.bin": b.bzimage(version=0x204),
        "v2.15-pe-signed.bin": b.bzimage(pe=True, signed=True),
        "v2.15-zstd.bin": b.bzimage(compression="zstd", vmlinux=small_elf),
        "setup-sects-0.bin": b.bzimage(setup_sects=0),
        "payload-outside.bin": b.bzimage(payload_length=0xFFFFFF),
        "declared-size-wrong.bin": b.bzimage(compression="xz", payload=b.compress("xz", small_elf) + b.le32(3)),
    })
    out["arm64-image"].update({"no-pe.bin": b.arm64_image(pe=False),
                               "signed-padded.bin": b.arm64_image(signed=True) + bytes(512)})
    out["riscv-image"]["no-pe-v0.1.bin"] = b.riscv_image(pe=False, magic2=0, version=1)
    out["zboot"].update({f"{c}.bin": b.zboot(compression=c) for c in b.ZBOOT_COMPRESSIONS})
    out["zboot"].update({"negative-offset.bin": b.zboot(payload_offset=-64),
                         "huge-size.bin": b.zboot(payload_size=0x7FFFFFFF)})
    out["uki"].update({
        "profiles.bin": b.uki(b.arm64_image(), machine=0xAA64, initrd=b"base", ucode=b"uc",
                              profiles=[{"cmdline": "p0"}, {"cmdline": "p1", "initrd": b"p1"}]),
        "zboot-inside.bin": b.uki(b.zboot(), machine=0xAA64),
    })
    out["uki-addon"]["cmdline-ucode.bin"] = b.addon(cmdline="x=1", ucode=b"ucode")
    out["elf"].update({"elf32-be.bin": b.elf32(endian="big"), "xen-multiboot.bin": b.xen_like_elf(),
                       "phoff-outside.bin": b.elf64(e_phoff=0xFFFFFF)})
    out["multiboot"]["video.bin"] = b.multiboot_image(0x10007)
    out["multiboot2"]["relocatable.bin"] = b.multiboot2_image((b.mb2_tag(10, (0x200000, 0xFFFFFFFF, 0x1000, 1)),))
    for alg in b.ALGORITHMS:
        out[alg]["with-size-trailer.bin"] = b.compress_with_size(alg, small_elf)
        out[alg]["truncated.bin"] = b.compress(alg, small_elf)[:-9]
    return out


def main(root: Path = ROOT / "tests" / "fuzz" / "corpus") -> int:
    total = 0
    for fmt, files in sorted(seeds().items()):
        (root / fmt).mkdir(parents=True, exist_ok=True)
        for name, data in sorted(files.items()):
            if len(data) > MAX_SIZE:
                raise SystemExit(f"{fmt}/{name} is {len(data)} bytes; keep seeds under {MAX_SIZE}")
            (root / fmt / name).write_bytes(data)
            total += len(data)
    print(f"wrote {sum(map(len, seeds().values()))} seeds, {total} bytes, under {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
