// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * pykexec purgatory, the part in C: check every segment's SHA-256 before the
 * jump, as kexec-tools' purgatory/purgatory.c does (verify_sha256_digest), then
 * copy the crash backup region (kexec-tools purgatory/arch/i386/crashdump_backup.c).
 *
 * Each region carries its own digest, so a mismatch names the segment.  The zero padding
 * after a segment's bytes (up to memsz) is compared with zero rather than hashed: exact,
 * and several times cheaper than SHA-256 over what is, for a bzImage, mostly padding
 * (init_size is several times the compressed kernel).  On a
 * mismatch we print to the serial port (8250 at pg_params.serial_port; the old
 * kernel has set the line up, we only poll LSR.THRE with a bound) and halt.
 */
#include "purgatory.h"

#define UART_THR	0
#define UART_LSR	5
#define UART_LSR_THRE	0x20

void *memcpy(void *dst, const void *src, unsigned long n)
{
	void *ret = dst;

	/* rep movsb: fast on every CPU since Ivy Bridge (ERMSB), and never a call to itself. */
	asm volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
	return ret;
}

void *memset(void *dst, int c, unsigned long n)
{
	void *ret = dst;

	asm volatile("rep stosb" : "+D"(dst), "+c"(n) : "a"(c) : "memory");
	return ret;
}

int memcmp(const void *a, const void *b, unsigned long n)
{
	const u8 *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

/* The first non-zero byte of [p, p + n), or 0 when all are zero. */
static const u8 *first_nonzero(const u8 *p, u64 n)
{
	const u8 *end = p + n;

	for (; p < end && ((unsigned long)p & 7); p++)
		if (*p)
			return p;
	for (; end - p >= 32; p += 32) {
		const u64 *q = (const u64 *)p;

		if (q[0] | q[1] | q[2] | q[3])
			break;
	}
	for (; p < end; p++)
		if (*p)
			return p;
	return 0;
}

static inline void outb(u16 port, u8 v)
{
	asm volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;

	asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;

	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (u64)hi << 32 | lo;
}

static void putc(char ch)
{
	u16 port = pg_params.serial_port;
	int spin;

	if (!port)
		return;
	for (spin = 0; spin < 100000; spin++)
		if (inb(port + UART_LSR) & UART_LSR_THRE)
			break;
	outb(port + UART_THR, ch);
}

static void puts(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			putc('\r');
		putc(*s);
	}
}

static void puthex(u64 v, int digits)
{
	static const char hex[] = "0123456789abcdef";

	while (digits--)
		putc(hex[(v >> (4 * digits)) & 15]);
}

static void putdigest(const u8 d[32])
{
	int i;

	for (i = 0; i < 32; i++)
		puthex(d[i], 2);
}

/* Refuse to boot: halt, or with PG_RESET_ON_FAILURE reset (0xcf9, the 8042, then a triple fault). */
static void __attribute__((noreturn)) fail(void)
{
	puts("pykexec purgatory: refusing to boot\n");
	if (pg_params.flags & PG_RESET_ON_FAILURE) {
		puts("pykexec purgatory: resetting\n");
		pg_reset();
	}
	pg_refuse();
}

void pg_main(void)
{
	struct pg_params *p = &pg_params;
	u32 nr = p->nr_regions, i, bad = 0;
	u64 bytes = 0, t0 = rdtsc();
	u8 digest[32];

	if (p->flags & PG_VERBOSE) {
		puts("pykexec purgatory: ");
		if (p->flags & PG_SKIP_CHECKS)
			puts("checks skipped\n");
		else
			puts(!(p->flags & PG_NO_SHANI) && pg_cpu_has_shani() ?
			     "sha256 with SHA-NI\n" : "sha256 portable\n");
	}
	if (nr > PG_MAX_REGIONS) {
		puts("pykexec purgatory: corrupt parameters\n");
		fail();
	}
	if (!(p->flags & PG_SKIP_CHECKS)) {
		for (i = 0; i < nr; i++) {
			const struct pg_region *r = &p->regions[i];
			const u8 *nonzero;

			pg_sha256((const void *)r->start, r->len, digest, p->flags);
			nonzero = first_nonzero((const u8 *)(r->start + r->len), r->zero_len);
			bytes += r->len + r->zero_len;
			if (memcmp(digest, r->sha256, 32) == 0 && !nonzero)
				continue;
			bad++;
			puts("pykexec purgatory: segment ");
			puthex(i, 2);
			puts(" [0x");
			puthex(r->start, 16);
			puts("+0x");
			puthex(r->len + r->zero_len, 16);
			if (nonzero) {
				puts(") non-zero padding at 0x");
				puthex((u64)nonzero, 16);
				puts("\n");
				continue;
			}
			puts(") SHA-256 mismatch\n  expected ");
			putdigest(r->sha256);
			puts("\n  found    ");
			putdigest(digest);
			puts("\n");
		}
		if (bad) {
			puts("pykexec purgatory: verification failed\n");
			fail();
		}
	}
	if (p->backup_size)
		memcpy((void *)p->backup_dst, (const void *)p->backup_src, p->backup_size);
	if (p->flags & PG_VERBOSE) {
		puts("pykexec purgatory: ");
		puthex(nr, 2);
		puts(" segments verified (0x");
		puthex(bytes, 16);
		puts(" bytes in 0x");
		puthex(rdtsc() - t0, 16);
		puts(" TSC cycles), entering 0x");
		puthex(p->regs.rip, 16);
		puts("\n");
	}
}
