/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * pykexec purgatory: the code kexec_load runs between the old kernel and the new one.
 *
 * The layout below is shared by entry.S (through the PG_* offsets), the C code
 * (through the structs, checked with _Static_assert) and pykexec.boot.purgatory
 * (through its Layout, pinned in tests/unit/boot/test_purgatory.py).  Change all
 * three together and bump PG_VERSION.
 */
#ifndef PYKEXEC_PURGATORY_H
#define PYKEXEC_PURGATORY_H

#define PG_VERSION		2
#define PG_MAX_REGIONS		16
#define PG_HEADER_SIZE		0x40
#define PG_STACK_SIZE		0x4000

/* pg_params.flags */
#define PG_SKIP_CHECKS		0x01	/* kexec -i: do not hash the segments */
#define PG_ENTRY32		0x02	/* leave long mode: 32-bit protected mode, paging off */
#define PG_NO_SHANI		0x04	/* use the portable SHA-256 even if CPUID offers SHA-NI */
#define PG_VERBOSE		0x08	/* say what happens on the serial port, not only failures */
#define PG_RESET_ON_FAILURE	0x10	/* after refusing, reset the machine instead of halting */
#define PG_ENTRY16		0x20	/* on to real mode: the BIOS's interrupt table, then pg_params.real_mode */

/* Offsets in struct pg_params, for entry.S. */
#define PG_FLAGS		0x00
#define PG_SERIAL_PORT		0x04
#define PG_NR_REGIONS		0x06
#define PG_REGS			0x08
#define PG_BACKUP_SRC		0x90
#define PG_BACKUP_DST		0x98
#define PG_BACKUP_SIZE		0xa0
#define PG_REGIONS		0xa8
#define PG_REGION_SIZE		0x40
#define PG_REAL_MODE		0x4a8	/* after the regions */
#define PG_PARAMS_SIZE		(PG_REAL_MODE + 0x10)

/* Offsets in struct pg_real_mode: ip before cs, a far pointer (m16:16) for the jump. */
#define PG_RM_IP		0x00
#define PG_RM_CS		0x02
#define PG_RM_DS		0x04
#define PG_RM_ES		0x06
#define PG_RM_FS		0x08
#define PG_RM_GS		0x0a
#define PG_RM_SS		0x0c
#define PG_RM_SP		0x0e

/* Offsets in struct pg_regs. */
#define PG_RAX	0x00
#define PG_RBX	0x08
#define PG_RCX	0x10
#define PG_RDX	0x18
#define PG_RSI	0x20
#define PG_RDI	0x28
#define PG_RSP	0x30
#define PG_RBP	0x38
#define PG_R8	0x40
#define PG_R9	0x48
#define PG_R10	0x50
#define PG_R11	0x58
#define PG_R12	0x60
#define PG_R13	0x68
#define PG_R14	0x70
#define PG_R15	0x78
#define PG_RIP	0x80

/* GDT selectors.  0x10/0x18 are the Linux boot protocol's __BOOT_CS/__BOOT_DS
 * (Documentation/arch/x86/boot.rst, "32-bit Boot Protocol" and "64-bit Boot Protocol"):
 * 0x10 is 64-bit code until a 32-bit entry copies the 32-bit descriptor at PG_CS32 over it.
 * 0x20/0x28 are the 16-bit segments (64 KiB limits) a real-mode entry passes through; 0x20's base
 * is set at run time to the real-mode code's address. */
#define PG_CS32			0x08
#define PG_CS			0x10
#define PG_DS			0x18
#define PG_CS16			0x20
#define PG_DS16			0x28

#ifndef __ASSEMBLER__

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#pragma GCC visibility push(hidden)

struct pg_regs {
	u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
	u64 r8, r9, r10, r11, r12, r13, r14, r15;
	u64 rip;
};

/* [start, start + len) must hash to sha256; [start + len, start + len + zero_len) must be zero
 * (the padding the kernel zero-fills up to memsz: comparing it with zero is exact and much
 * cheaper than hashing it). */
struct pg_region {
	u64 start;
	u64 len;
	u64 zero_len;
	u64 reserved;
	u8 sha256[32];
};

/* PG_ENTRY16: the segments, sp and the far jump of a real-mode entry (boot.rst "Running the
 * Kernel": cs = seg + 0x20, ip = 0, the others seg, sp = the heap's end); the general registers
 * come from pg_regs. */
struct pg_real_mode {
	u16 ip, cs, ds, es, fs, gs, ss, sp;
};

struct pg_params {
	u32 flags;
	u16 serial_port;
	u16 nr_regions;
	struct pg_regs regs;
	u64 backup_src;
	u64 backup_dst;
	u64 backup_size;
	struct pg_region regions[PG_MAX_REGIONS];
	struct pg_real_mode real_mode;
};

_Static_assert(__builtin_offsetof(struct pg_params, regs) == PG_REGS, "PG_REGS");
_Static_assert(__builtin_offsetof(struct pg_params, backup_src) == PG_BACKUP_SRC, "PG_BACKUP_SRC");
_Static_assert(__builtin_offsetof(struct pg_params, regions) == PG_REGIONS, "PG_REGIONS");
_Static_assert(sizeof(struct pg_region) == PG_REGION_SIZE, "PG_REGION_SIZE");
_Static_assert(__builtin_offsetof(struct pg_params, real_mode) == PG_REAL_MODE, "PG_REAL_MODE");
_Static_assert(__builtin_offsetof(struct pg_real_mode, sp) == PG_RM_SP, "PG_RM_SP");
_Static_assert(sizeof(struct pg_params) == PG_PARAMS_SIZE, "PG_PARAMS_SIZE");
_Static_assert(__builtin_offsetof(struct pg_regs, rip) == PG_RIP, "PG_RIP");

extern struct pg_params pg_params;

/* sha256.c */
int pg_cpu_has_shani(void);
void pg_sha256(const void *data, u64 len, u8 out[32], u32 flags);

/* sha256_ni.S */
void pg_sha256_blocks_ni(u32 state[8], const u8 *data, u64 nblocks);

/* purgatory.c */
void *memcpy(void *dst, const void *src, unsigned long n);
void *memset(void *dst, int c, unsigned long n);
int memcmp(const void *a, const void *b, unsigned long n);
void pg_main(void);
void pg_refuse(void) __attribute__((noreturn));
void pg_reset(void) __attribute__((noreturn));

#pragma GCC visibility pop

#endif /* __ASSEMBLER__ */
#endif /* PYKEXEC_PURGATORY_H */
