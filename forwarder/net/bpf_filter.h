/*
 * bpf_filter.h -- run a classic BPF program over a frame: the filter of the
 * packet trace and the capture.
 *
 * The programs are those of tcpdump -d and SO_ATTACH_FILTER: compiled from a
 * tcpdump expression by libpcap, for Ethernet, in forwarder/bpf.py.  The
 * semantics are those of libpcap's bpf_filter() (documented in bpf(4) of
 * FreeBSD and in Linux's Documentation/networking/filter.rst):
 *
 *   - registers A and X and the scratch memory M[0..15] start at 0;
 *   - loads from the frame are big-endian (network order); a load not wholly
 *     inside the first `buflen' bytes ends the program with 0 (reject), as
 *     does a division or modulo by X = 0;
 *   - BPF_IND adds X and k without wrapping at 32 bits;
 *   - a shift by 32 or more gives 0 (libpcap's result for a shift by X);
 *   - BPF_LEN loads `wirelen', the frame's length on the wire, which may
 *     exceed buflen (the bytes at hand);
 *   - the value returned by RET is how many bytes of the frame to keep:
 *     0 rejects it; it may exceed buflen, the caller clamps.
 *
 * The program must have passed forwarder.bpf.validate() (the kernel's checks):
 * every jump lands inside it, the last instruction is a RET, so the loop ends
 * within as many steps as there are instructions.  Nothing here checks that.
 * What it does check costs next to nothing and keeps a bad program from
 * crashing the router or writing outside M: a division by a constant 0
 * rejects, a scratch index is taken modulo 16.  Linux's ancillary loads
 * (k from SKF_AD_OFF) are out-of-bounds loads here: libpcap emits them only
 * for live captures.
 *
 * An interpreter, not a JIT: a filter runs only while a trace or a capture
 * is armed, on the frames of the interfaces it watches, and a switch over a
 * dozen instructions is tens of nanoseconds.  No allocation, no globals:
 * safe to call without the GIL, from any thread.  forwarder/bpf.pxd
 * declares it to Cython.
 */
#ifndef FORWARDER_NET_BPF_FILTER_H
#define FORWARDER_NET_BPF_FILTER_H

#include <stdint.h>

#define DP_BPF_MAXINSNS 4096
#define DP_BPF_MEMWORDS 16

/* struct sock_filter (struct bpf_insn): 8 bytes in host byte order */
struct dp_bpf_insn {
  uint16_t code;
  uint8_t jt;       /* conditional jumps: skip this many if true */
  uint8_t jf;       /* ... if false */
  uint32_t k;
};
typedef char dp_bpf_insn_is_8_bytes[sizeof(struct dp_bpf_insn) == 8 ? 1 : -1];

/* The fields of `code' (<linux/bpf_common.h>, <net/bpf.h>). */
enum {
  DP_BPF_LD = 0x00, DP_BPF_LDX = 0x01, DP_BPF_ST = 0x02, DP_BPF_STX = 0x03,
  DP_BPF_ALU = 0x04, DP_BPF_JMP = 0x05, DP_BPF_RET = 0x06, DP_BPF_MISC = 0x07,
  /* sizes */
  DP_BPF_W = 0x00, DP_BPF_H = 0x08, DP_BPF_B = 0x10,
  /* modes */
  DP_BPF_IMM = 0x00, DP_BPF_ABS = 0x20, DP_BPF_IND = 0x40, DP_BPF_MEM = 0x60,
  DP_BPF_LEN = 0x80, DP_BPF_MSH = 0xa0,
  /* ALU operations */
  DP_BPF_ADD = 0x00, DP_BPF_SUB = 0x10, DP_BPF_MUL = 0x20, DP_BPF_DIV = 0x30,
  DP_BPF_OR = 0x40, DP_BPF_AND = 0x50, DP_BPF_LSH = 0x60, DP_BPF_RSH = 0x70,
  DP_BPF_NEG = 0x80, DP_BPF_MOD = 0x90, DP_BPF_XOR = 0xa0,
  /* jumps */
  DP_BPF_JA = 0x00, DP_BPF_JEQ = 0x10, DP_BPF_JGT = 0x20, DP_BPF_JGE = 0x30,
  DP_BPF_JSET = 0x40,
  /* operand: the constant k or X; RET's A */
  DP_BPF_K = 0x00, DP_BPF_X = 0x08, DP_BPF_A = 0x10,
  /* MISC */
  DP_BPF_TAX = 0x00, DP_BPF_TXA = 0x80,
};

/* `size' (1, 2 or 4) bytes at `off', big-endian, into *v; 0 when they are
 * not all within the first buflen bytes. */
static inline int
dp_bpf_load(const uint8_t *p, uint32_t buflen, uint64_t off, unsigned size, uint32_t *v)
{
  const uint8_t *q;

  if (off + size > buflen)
    return 0;
  q = p + off;
  if (size == 4)
    *v = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
  else if (size == 2)
    *v = (uint32_t)q[0] << 8 | q[1];
  else
    *v = q[0];
  return 1;
}

static inline uint32_t
dp_bpf_shl(uint32_t a, uint32_t n)
{
  return n < 32 ? a << n : 0;
}

static inline uint32_t
dp_bpf_shr(uint32_t a, uint32_t n)
{
  return n < 32 ? a >> n : 0;
}

/* Run the program at pc over the frame p (buflen bytes at hand of wirelen on
 * the wire): the number of bytes to keep, 0 to reject. */
static inline uint32_t
dp_bpf_run(const struct dp_bpf_insn *pc, const uint8_t *p, uint32_t wirelen, uint32_t buflen)
{
  uint32_t A = 0, X = 0;
  uint32_t M[DP_BPF_MEMWORDS] = { 0 };

#define DP_BPF_LOAD(off, size, reg)                         \
  do {                                                      \
    if (!dp_bpf_load(p, buflen, (off), (size), &(reg)))     \
      return 0;                                             \
  } while (0)
#define DP_BPF_JUMP_IF(cond) (pc += (cond) ? pc->jt : pc->jf)

  for (;; pc++) {
    const uint32_t k = pc->k;

    switch (pc->code) {
    case DP_BPF_LD | DP_BPF_W | DP_BPF_ABS: DP_BPF_LOAD(k, 4, A); break;
    case DP_BPF_LD | DP_BPF_H | DP_BPF_ABS: DP_BPF_LOAD(k, 2, A); break;
    case DP_BPF_LD | DP_BPF_B | DP_BPF_ABS: DP_BPF_LOAD(k, 1, A); break;
    case DP_BPF_LD | DP_BPF_W | DP_BPF_IND: DP_BPF_LOAD((uint64_t)X + k, 4, A); break;
    case DP_BPF_LD | DP_BPF_H | DP_BPF_IND: DP_BPF_LOAD((uint64_t)X + k, 2, A); break;
    case DP_BPF_LD | DP_BPF_B | DP_BPF_IND: DP_BPF_LOAD((uint64_t)X + k, 1, A); break;
    case DP_BPF_LDX | DP_BPF_B | DP_BPF_MSH: DP_BPF_LOAD(k, 1, X); X = (X & 0xf) << 2; break;
    case DP_BPF_LD | DP_BPF_W | DP_BPF_LEN: A = wirelen; break;
    case DP_BPF_LDX | DP_BPF_W | DP_BPF_LEN: X = wirelen; break;
    case DP_BPF_LD | DP_BPF_IMM: A = k; break;
    case DP_BPF_LDX | DP_BPF_IMM: X = k; break;
    case DP_BPF_LD | DP_BPF_MEM: A = M[k % DP_BPF_MEMWORDS]; break;
    case DP_BPF_LDX | DP_BPF_MEM: X = M[k % DP_BPF_MEMWORDS]; break;
    case DP_BPF_ST: M[k % DP_BPF_MEMWORDS] = A; break;
    case DP_BPF_STX: M[k % DP_BPF_MEMWORDS] = X; break;

    case DP_BPF_ALU | DP_BPF_ADD | DP_BPF_K: A += k; break;
    case DP_BPF_ALU | DP_BPF_ADD | DP_BPF_X: A += X; break;
    case DP_BPF_ALU | DP_BPF_SUB | DP_BPF_K: A -= k; break;
    case DP_BPF_ALU | DP_BPF_SUB | DP_BPF_X: A -= X; break;
    case DP_BPF_ALU | DP_BPF_MUL | DP_BPF_K: A *= k; break;
    case DP_BPF_ALU | DP_BPF_MUL | DP_BPF_X: A *= X; break;
    case DP_BPF_ALU | DP_BPF_DIV | DP_BPF_K: if (k == 0) return 0; A /= k; break;
    case DP_BPF_ALU | DP_BPF_DIV | DP_BPF_X: if (X == 0) return 0; A /= X; break;
    case DP_BPF_ALU | DP_BPF_MOD | DP_BPF_K: if (k == 0) return 0; A %= k; break;
    case DP_BPF_ALU | DP_BPF_MOD | DP_BPF_X: if (X == 0) return 0; A %= X; break;
    case DP_BPF_ALU | DP_BPF_AND | DP_BPF_K: A &= k; break;
    case DP_BPF_ALU | DP_BPF_AND | DP_BPF_X: A &= X; break;
    case DP_BPF_ALU | DP_BPF_OR | DP_BPF_K: A |= k; break;
    case DP_BPF_ALU | DP_BPF_OR | DP_BPF_X: A |= X; break;
    case DP_BPF_ALU | DP_BPF_XOR | DP_BPF_K: A ^= k; break;
    case DP_BPF_ALU | DP_BPF_XOR | DP_BPF_X: A ^= X; break;
    case DP_BPF_ALU | DP_BPF_LSH | DP_BPF_K: A = dp_bpf_shl(A, k); break;
    case DP_BPF_ALU | DP_BPF_LSH | DP_BPF_X: A = dp_bpf_shl(A, X); break;
    case DP_BPF_ALU | DP_BPF_RSH | DP_BPF_K: A = dp_bpf_shr(A, k); break;
    case DP_BPF_ALU | DP_BPF_RSH | DP_BPF_X: A = dp_bpf_shr(A, X); break;
    case DP_BPF_ALU | DP_BPF_NEG: A = 0u - A; break;

    case DP_BPF_JMP | DP_BPF_JA: pc += k; break;
    case DP_BPF_JMP | DP_BPF_JEQ | DP_BPF_K: DP_BPF_JUMP_IF(A == k); break;
    case DP_BPF_JMP | DP_BPF_JEQ | DP_BPF_X: DP_BPF_JUMP_IF(A == X); break;
    case DP_BPF_JMP | DP_BPF_JGT | DP_BPF_K: DP_BPF_JUMP_IF(A > k); break;
    case DP_BPF_JMP | DP_BPF_JGT | DP_BPF_X: DP_BPF_JUMP_IF(A > X); break;
    case DP_BPF_JMP | DP_BPF_JGE | DP_BPF_K: DP_BPF_JUMP_IF(A >= k); break;
    case DP_BPF_JMP | DP_BPF_JGE | DP_BPF_X: DP_BPF_JUMP_IF(A >= X); break;
    case DP_BPF_JMP | DP_BPF_JSET | DP_BPF_K: DP_BPF_JUMP_IF((A & k) != 0); break;
    case DP_BPF_JMP | DP_BPF_JSET | DP_BPF_X: DP_BPF_JUMP_IF((A & X) != 0); break;

    case DP_BPF_RET | DP_BPF_K: return k;
    case DP_BPF_RET | DP_BPF_A: return A;

    case DP_BPF_MISC | DP_BPF_TAX: X = A; break;
    case DP_BPF_MISC | DP_BPF_TXA: A = X; break;

    default: return 0;          /* validate() lets no other opcode through */
    }
  }
#undef DP_BPF_LOAD
#undef DP_BPF_JUMP_IF
}

#endif
