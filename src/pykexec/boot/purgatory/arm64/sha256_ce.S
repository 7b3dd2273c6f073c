/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * SHA-256 block function with the ARMv8 Cryptographic Extension's SHA-2
 * instructions (ID_AA64ISAR0_EL1.SHA2 >= 1): sha256h/sha256h2 do four rounds on
 * the ABCD/EFGH halves of the state, sha256su0/sha256su1 form the next four
 * schedule words W[i+16..i+19] from W[i..i+15] (Arm ARM, "SHA256H", "SHA256SU1").
 *
 *	void pg_sha256_blocks_ce(u32 state[8], const u8 *data, u64 nblocks)
 *
 * AAPCS64.  The round constants stay in v16-v31, the message in v0-v3, the state in
 * v4/v5 (v6 a copy of ABCD for sha256h2, v7 W+K) and the block's input state in
 * v8/v9, whose low halves are callee-saved.  The data is read with byte-element
 * loads, which have no alignment requirement even in Device memory (MMU off).
 */
	.arch	armv8-a+crypto

/* Rounds 4g..4g+3 with K[4g..4g+3] in v\k.  v\m0 holds W[4g..4g+3] and v\m1..v\m3
 * the three groups after it; for g < 12, v\m0 then becomes W[4g+16..4g+19]. */
.macro	rounds4 g, k, m0, m1, m2, m3
	add		v7.4s, v\m0\().4s, v\k\().4s
.if \g < 12
	sha256su0	v\m0\().4s, v\m1\().4s
	sha256su1	v\m0\().4s, v\m2\().4s, v\m3\().4s
.endif
	mov		v6.16b, v4.16b
	sha256h		q4, q5, v7.4s
	sha256h2	q5, q6, v7.4s
.endm

	.text
	.globl	pg_sha256_blocks_ce
	.type	pg_sha256_blocks_ce, %function
pg_sha256_blocks_ce:
	cbz	x2, 9f
	stp	d8, d9, [sp, #-16]!
	adr	x8, pg_sha256_k
	ld1	{v16.4s-v19.4s}, [x8], #64
	ld1	{v20.4s-v23.4s}, [x8], #64
	ld1	{v24.4s-v27.4s}, [x8], #64
	ld1	{v28.4s-v31.4s}, [x8]
	ld1	{v4.4s, v5.4s}, [x0]
0:	ld1	{v0.16b-v3.16b}, [x1], #64
	rev32	v0.16b, v0.16b
	rev32	v1.16b, v1.16b
	rev32	v2.16b, v2.16b
	rev32	v3.16b, v3.16b
	mov	v8.16b, v4.16b
	mov	v9.16b, v5.16b
	rounds4	0, 16, 0, 1, 2, 3
	rounds4	1, 17, 1, 2, 3, 0
	rounds4	2, 18, 2, 3, 0, 1
	rounds4	3, 19, 3, 0, 1, 2
	rounds4	4, 20, 0, 1, 2, 3
	rounds4	5, 21, 1, 2, 3, 0
	rounds4	6, 22, 2, 3, 0, 1
	rounds4	7, 23, 3, 0, 1, 2
	rounds4	8, 24, 0, 1, 2, 3
	rounds4	9, 25, 1, 2, 3, 0
	rounds4	10, 26, 2, 3, 0, 1
	rounds4	11, 27, 3, 0, 1, 2
	rounds4	12, 28, 0, 1, 2, 3
	rounds4	13, 29, 1, 2, 3, 0
	rounds4	14, 30, 2, 3, 0, 1
	rounds4	15, 31, 3, 0, 1, 2
	add	v4.4s, v4.4s, v8.4s
	add	v5.4s, v5.4s, v9.4s
	subs	x2, x2, #1
	b.ne	0b
	st1	{v4.4s, v5.4s}, [x0]
	ldp	d8, d9, [sp], #16
9:	ret
	.size	pg_sha256_blocks_ce, . - pg_sha256_blocks_ce

	.section .rodata
	.balign	16
pg_sha256_k:
	.long	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5
	.long	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174
	.long	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da
	.long	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967
	.long	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85
	.long	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070
	.long	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3
	.long	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2

	.section .note.GNU-stack, "", @progbits
