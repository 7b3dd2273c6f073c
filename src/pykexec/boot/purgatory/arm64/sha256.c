// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * SHA-256 (FIPS 180-4) for the arm64 purgatory: the SHA-2 instructions when
 * ID_AA64ISAR0_EL1 offers them (sha256_ce.S), otherwise a portable block function
 * in plain integer code (built with -mgeneral-regs-only).
 *
 * The MMU is off, so every data access is Device-nGnRnE and uncached: unaligned
 * accesses fault (-mstrict-align) and each access costs a trip to memory.  The
 * portable code therefore reads aligned data as whole words and keeps the rounds
 * fully unrolled (-O3, build.sh), so that the state stays in registers.
 *
 * pg_sha256() hashes one contiguous region straight from memory: whole blocks
 * are fed without copying, only the tail and padding go through a buffer.
 */
#include "purgatory.h"

static const u32 K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const u32 H0[8] = {
	0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

#define ROR(x, n)	(((x) >> (n)) | ((x) << (32 - (n))))
#define BSIG0(x)	(ROR(x, 2) ^ ROR(x, 13) ^ ROR(x, 22))
#define BSIG1(x)	(ROR(x, 6) ^ ROR(x, 11) ^ ROR(x, 25))
#define SSIG0(x)	(ROR(x, 7) ^ ROR(x, 18) ^ ((x) >> 3))
#define SSIG1(x)	(ROR(x, 17) ^ ROR(x, 19) ^ ((x) >> 10))
#define CH(x, y, z)	((z) ^ ((x) & ((y) ^ (z))))
#define MAJ(x, y, z)	(((x) & (y)) | ((z) & ((x) | (y))))

/* Byte by byte: any alignment. */
static inline u32 load_be32(const u8 *p)
{
	return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3];
}

static inline void store_be32(u8 *p, u32 v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

#define ROUND(a, b, c, d, e, f, g, h, i) do {					\
		u32 t1 = h + BSIG1(e) + CH(e, f, g) + K[i] + W[(i) & 15];	\
		u32 t2 = BSIG0(a) + MAJ(a, b, c);				\
		d += t1;							\
		h = t1 + t2;							\
	} while (0)

#define SCHEDULE(i) (W[(i) & 15] += SSIG1(W[((i) - 2) & 15]) + W[((i) - 7) & 15] +	\
				     SSIG0(W[((i) - 15) & 15]))

#define ROUNDS8(i) do {					\
		ROUND(a, b, c, d, e, f, g, h, (i) + 0);	\
		ROUND(h, a, b, c, d, e, f, g, (i) + 1);	\
		ROUND(g, h, a, b, c, d, e, f, (i) + 2);	\
		ROUND(f, g, h, a, b, c, d, e, (i) + 3);	\
		ROUND(e, f, g, h, a, b, c, d, (i) + 4);	\
		ROUND(d, e, f, g, h, a, b, c, (i) + 5);	\
		ROUND(c, d, e, f, g, h, a, b, (i) + 6);	\
		ROUND(b, c, d, e, f, g, h, a, (i) + 7);	\
	} while (0)

#define SCHEDULE8_ROUNDS8(i) do {						\
		SCHEDULE((i) + 0); SCHEDULE((i) + 1); SCHEDULE((i) + 2); SCHEDULE((i) + 3);	\
		SCHEDULE((i) + 4); SCHEDULE((i) + 5); SCHEDULE((i) + 6); SCHEDULE((i) + 7);	\
		ROUNDS8(i);								\
	} while (0)

static void sha256_blocks_portable(u32 state[8], const u8 *p, u64 nblocks)
{
	u32 W[16];

	while (nblocks--) {
		u32 a = state[0], b = state[1], c = state[2], d = state[3];
		u32 e = state[4], f = state[5], g = state[6], h = state[7];
		int i;

		if (((unsigned long)p & 7) == 0) {
			/* 8 aligned loads instead of 64 byte loads */
			const u64 *q = (const u64 *)p;

			for (i = 0; i < 8; i++) {
				u64 v = q[i];

				W[2 * i] = __builtin_bswap32((u32)v);
				W[2 * i + 1] = __builtin_bswap32((u32)(v >> 32));
			}
		} else {
			for (i = 0; i < 16; i++)
				W[i] = load_be32(p + 4 * i);
		}
		ROUNDS8(0);
		ROUNDS8(8);
		SCHEDULE8_ROUNDS8(16);
		SCHEDULE8_ROUNDS8(24);
		SCHEDULE8_ROUNDS8(32);
		SCHEDULE8_ROUNDS8(40);
		SCHEDULE8_ROUNDS8(48);
		SCHEDULE8_ROUNDS8(56);
		state[0] += a; state[1] += b; state[2] += c; state[3] += d;
		state[4] += e; state[5] += f; state[6] += g; state[7] += h;
		p += 64;
	}
}

/* ID_AA64ISAR0_EL1.SHA2, bits [15:12]: 1 = SHA256H & co, 2 = also SHA-512. */
int pg_cpu_has_sha2(void)
{
	u64 isar0;

	asm volatile("mrs %0, id_aa64isar0_el1" : "=r"(isar0));
	return ((isar0 >> 12) & 0xf) != 0;
}

void pg_sha256(const void *data, u64 len, u8 out[32], u32 flags)
{
	void (*blocks)(u32 *, const u8 *, u64) = sha256_blocks_portable;
	const u8 *p = data;
	u64 full = len / 64, rest = len % 64, nblocks, i;
	u64 bits = len << 3;
	u8 tail[128] __attribute__((aligned(16)));
	u32 state[8] __attribute__((aligned(16)));

	if (!(flags & PG_NO_SHA2) && pg_cpu_has_sha2())
		blocks = pg_sha256_blocks_ce;
	for (i = 0; i < 8; i++)
		state[i] = H0[i];
	blocks(state, p, full);

	memset(tail, 0, sizeof(tail));
	memcpy(tail, p + full * 64, rest);
	tail[rest] = 0x80;
	nblocks = rest < 56 ? 1 : 2;
	store_be32(tail + nblocks * 64 - 8, (u32)(bits >> 32));
	store_be32(tail + nblocks * 64 - 4, (u32)bits);
	blocks(state, tail, nblocks);
	for (i = 0; i < 8; i++)
		store_be32(out + 4 * i, state[i]);
}
