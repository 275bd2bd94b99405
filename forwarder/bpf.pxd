# cython: language_level=3
#
# bpf.pxd -- the classic BPF interpreter of net/bpf_filter.h, for the
# dataplane's packet trace and capture.
#
# forwarder/bpf.py compiles a tcpdump expression and validates the program;
# the dataplane keeps its own copy of the instructions (an array of
# dp_bpf_insn, 4-byte aligned) and calls dp_bpf_run on each frame, without
# the GIL: p the Ethernet header, buflen the bytes of it at hand (the first
# mbuf's), wirelen the frame's length.  The result is the number of bytes
# to keep, 0 to reject.  Declarations only: the C compiler checks them
# against the header.

from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef extern from "net/bpf_filter.h" nogil:
    enum:
        DP_BPF_MAXINSNS         # 4096 instructions at most (BPF_MAXINSNS)
        DP_BPF_MEMWORDS         # scratch memory M[0..15]

    struct dp_bpf_insn:         # struct sock_filter, host byte order
        uint16_t code
        uint8_t jt
        uint8_t jf
        uint32_t k

    uint32_t dp_bpf_run(const dp_bpf_insn *pc, const uint8_t *p, uint32_t wirelen,
                        uint32_t buflen)
