"""Packet filters in tcpdump syntax for the trace and the capture: compile, check, show.

A filter expression (``ip host 10.2.0.2``, ``tcp[tcpflags] & tcp-syn != 0``)
is compiled by libpcap itself, loaded with ctypes, for Ethernet (DLT_EN10MB)
and with the optimizer on, into classic BPF: the language of tcpdump -d, of
SO_ATTACH_FILTER and of FreeBSD's bpf(4).  The program leaves this module as
packed ``struct sock_filter`` (alias ``struct bpf_insn``: u16 code, u8 jt,
u8 jf, u32 k; 8 bytes, host byte order), and the dataplane runs it in C
without the GIL (forwarder/net/bpf_filter.h, declared in bpf.pxd).

Design and trade-offs:

* libpcap does the parsing.  Its grammar is large (protocol keywords,
  ``tcp[tcpflags]``, ``portrange``, ``vlan``, IPv6 and fragments) and is
  the one operators know from tcpdump; a parser of our own would differ in
  corners.  The cost is a run-time dependency on libpcap.so (libpcap0.8 on
  Debian), loaded only when a filter is compiled: the router runs without it.
* The compiled program is checked here, in Python, once, with the kernel's
  rules for classic BPF (sk_chk_filter, now bpf_check_classic): a known
  opcode in every instruction, jumps forward and inside the program, a RET
  last, scratch-memory indexes below 16, no division or modulo by a constant
  0, no shift by a constant of 32 or more, and no scratch-memory read before
  a store on every path to it.  The C interpreter can then trust the control
  flow: per instruction it checks only the bounds of packet loads (and
  keeps two guards that cost nothing, see the header).  Programs from
  libpcap pass but for one construct: ``protochain`` walks the extension
  headers in a loop, a backward jump, which the kernel refuses too (there
  tcpdump falls back to filtering in userland); such an expression is a
  BpfError here.  The checks also cover any program that
  reaches the dataplane another way (a saved program, a test).
* Linux ancillary loads (offsets from SKF_AD_OFF = -4096: VLAN tag, ifindex)
  are not supported: libpcap emits them only for live Linux captures, never
  for a ``pcap_open_dead`` handle, and the interpreter treats them like any
  load beyond the frame (the packet is rejected).
* :func:`disassemble` prints in the format of ``tcpdump -d`` (libpcap's
  bpf_image), so what ``--explain`` shows can be read next to tcpdump's.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BpfError", "Insn", "compile", "validate", "disassemble", "unpack",
           "BPF_MAXINSNS", "BPF_MEMWORDS", "SNAPLEN_MAX"]

log = logging.getLogger(__name__)

DLT_EN10MB = 1                  # <pcap/dlt.h>: Ethernet
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
SNAPLEN_MAX = 262144            # libpcap's MAXIMUM_SNAPLEN, tcpdump's default
BPF_MAXINSNS = 4096             # <linux/bpf_common.h>
BPF_MEMWORDS = 16               # scratch memory words M[0..15]

_INSN = struct.Struct("=HBBI")  # struct sock_filter, host byte order
INSN_SIZE = _INSN.size          # 8

# Opcode fields (<linux/bpf_common.h>, <net/bpf.h>).
_CLASS = 0x07
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
_W, _H, _B = 0x00, 0x08, 0x10
_IMM, _ABS, _IND, _MEM, _LEN, _MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
_K, _X = 0x00, 0x08
_ADD, _SUB, _MUL, _DIV, _OR, _AND, _LSH, _RSH, _NEG, _MOD, _XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0)
_JA, _JEQ, _JGT, _JGE, _JSET = 0x00, 0x10, 0x20, 0x30, 0x40
_RET_A = 0x10
_TAX, _TXA = 0x00, 0x80


def _opcodes() -> dict[int, tuple[str, str]]:
    """Every opcode the interpreter knows (the kernel's list for classic BPF),
    with its mnemonic and operand as bpf_image prints them: {k} the operand
    unsigned, {s} signed, {t} a JA's target."""
    t = {LD | _IMM: ("ld", "#0x{k:x}"), LDX | _IMM: ("ldx", "#0x{k:x}"),
         LD | _W | _LEN: ("ld", "#pktlen"), LDX | _W | _LEN: ("ldx", "#pktlen"),
         LD | _MEM: ("ld", "M[{s}]"), LDX | _MEM: ("ldx", "M[{s}]"),
         ST: ("st", "M[{s}]"), STX: ("stx", "M[{s}]"),
         LDX | _B | _MSH: ("ldxb", "4*([{s}]&0xf)"),
         RET | _K: ("ret", "#{s}"), RET | _RET_A: ("ret", ""),
         MISC | _TAX: ("tax", ""), MISC | _TXA: ("txa", ""),
         ALU | _NEG: ("neg", ""), JMP | _JA: ("ja", "{t}")}
    for size, name in ((_W, "ld"), (_H, "ldh"), (_B, "ldb")):
        t[LD | size | _ABS] = (name, "[{s}]")
        t[LD | size | _IND] = (name, "[x + {s}]")
    for op, name in ((_ADD, "add"), (_SUB, "sub"), (_MUL, "mul"), (_DIV, "div"),
                     (_MOD, "mod"), (_LSH, "lsh"), (_RSH, "rsh"),
                     (_AND, "and"), (_OR, "or"), (_XOR, "xor")):
        t[ALU | op | _K] = (name, "#0x{k:x}" if op in (_AND, _OR, _XOR) else "#{s}")
        t[ALU | op | _X] = (name, "x")
    for op, name in ((_JEQ, "jeq"), (_JGT, "jgt"), (_JGE, "jge"), (_JSET, "jset")):
        t[JMP | op | _K] = (name, "#0x{k:x}")
        t[JMP | op | _X] = (name, "x")
    return t


OPCODES = _opcodes()


class BpfError(ValueError):
    """A filter that does not compile, or a program that fails validate()."""


@dataclass(frozen=True)
class Insn:
    """One instruction, as struct sock_filter holds it."""
    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    def conditional(self) -> bool:
        return self.code & _CLASS == JMP and self.code & 0xF0 != _JA


def unpack(prog: bytes) -> list[Insn]:
    """The instructions of a packed program."""
    if len(prog) % INSN_SIZE:
        raise BpfError(f"program of {len(prog)} bytes: not a whole number of "
                       f"{INSN_SIZE}-byte instructions")
    return [Insn(*f) for f in _INSN.iter_unpack(prog)]


# --- compiling with libpcap -----------------------------------------------------------

class _bpf_program(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


LIBPCAP_NAMES = ("libpcap.so.0.8", "libpcap.so.1", "libpcap.so")
_compile_lock = threading.Lock()    # libpcap before 1.8 compiled with global state


@functools.cache
def _libpcap(names: tuple[str, ...] = LIBPCAP_NAMES) -> ctypes.CDLL:
    """libpcap, loaded on first use; BpfError when it is not installed."""
    for name in names:                      # dlopen looks in the ld.so cache
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_bpf_program),
                                     ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.restype = None
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_bpf_program)]
        lib.pcap_close.restype = None
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        log.debug("filters compiled by %s", name)
        return lib
    raise BpfError(f"libpcap not found: install libpcap0.8 (Debian, Ubuntu) or libpcap "
                   f"(Fedora, Alpine) to use filters (tried {', '.join(names)})")


def compile(expr: str, snaplen: int = SNAPLEN_MAX) -> bytes:  # noqa: A001 (the word of pcap_compile)
    """The validated classic BPF program of the tcpdump expression ``expr``
    for Ethernet frames; an accepted frame gets ``snaplen`` bytes."""
    if not 1 <= snaplen <= SNAPLEN_MAX:
        raise BpfError(f"snaplen {snaplen}: not within 1..{SNAPLEN_MAX}")
    if "\0" in expr:
        raise BpfError(f"bad filter {expr!r}: NUL character")
    try:
        text = expr.encode("ascii")
    except UnicodeEncodeError:
        raise BpfError(f"bad filter {expr!r}: not ASCII") from None
    lib = _libpcap()
    with _compile_lock:
        pcap = lib.pcap_open_dead(DLT_EN10MB, snaplen)
        if not pcap:
            raise BpfError("pcap_open_dead failed: out of memory")
        try:
            fp = _bpf_program()
            if lib.pcap_compile(pcap, ctypes.byref(fp), text, 1, PCAP_NETMASK_UNKNOWN) != 0:
                why = (lib.pcap_geterr(pcap) or b"").decode(errors="replace")
                raise BpfError(f"bad filter {expr!r}: {why}")
            try:
                prog = ctypes.string_at(fp.bf_insns, fp.bf_len * INSN_SIZE)
            finally:
                lib.pcap_freecode(ctypes.byref(fp))
        finally:
            lib.pcap_close(pcap)
    try:
        validate(prog)
    except BpfError as e:       # libpcap's loops: protochain jumps backwards
        raise BpfError(f"bad filter {expr!r}: the program fails the kernel's checks: {e}") from None
    log.debug("filter %r: %d instructions", expr, len(prog) // INSN_SIZE)
    return prog


# --- the kernel's checks --------------------------------------------------------------

def validate(prog: bytes) -> None:
    """BpfError unless ``prog`` passes the kernel's checks of a classic BPF
    program (see the module docstring); the dataplane runs only such programs."""
    insns = unpack(prog)
    n = len(insns)
    if not 1 <= n <= BPF_MAXINSNS:
        raise BpfError(f"program of {n} instructions: not within 1..{BPF_MAXINSNS}")
    for pc, i in enumerate(insns):
        def bad(why: str) -> BpfError:
            return BpfError(f"instruction {pc} ({i.code:#06x}, jt {i.jt}, jf {i.jf}, "
                            f"k {i.k:#x}): {why}")
        if i.code not in OPCODES:
            raise bad("unknown opcode")
        cls, op = i.code & _CLASS, i.code & 0xF0
        if i.code in (ST, STX, LD | _MEM, LDX | _MEM) and i.k >= BPF_MEMWORDS:
            raise bad(f"scratch memory index beyond M[{BPF_MEMWORDS - 1}]")
        if cls == ALU and i.code & _X == _K:
            if op in (_DIV, _MOD) and i.k == 0:
                raise bad("division by a constant 0")
            if op in (_LSH, _RSH) and i.k >= 32:
                raise bad("shift by a constant of 32 or more")
        if cls == JMP:
            if not i.conditional() and i.k & 0x80000000:
                raise bad("backward jump (a loop)")
            targets = (i.jt, i.jf) if i.conditional() else (i.k,)
            if any(pc + 1 + t >= n for t in targets):
                raise bad("jump beyond the last instruction")
    if insns[-1].code & _CLASS != RET:
        raise BpfError(f"instruction {n - 1}: the last is not a RET")
    _check_memory(insns)


def _check_memory(insns: Sequence[Insn]) -> None:
    """Every LD/LDX M[k] comes after a ST/STX M[k] on every path to it.

    One bit per scratch word: ``known`` is what the fall-through path has
    stored; ``incoming[pc]`` is what every jump to pc has (all bits until a
    jump to pc is seen).  Jumps only go forward, so one pass in order sees
    every edge into pc before pc."""
    every = (1 << BPF_MEMWORDS) - 1
    incoming = [every] * len(insns)
    known = 0
    for pc, i in enumerate(insns):
        known &= incoming[pc]
        if i.code in (ST, STX):
            known |= 1 << i.k
        elif i.code in (LD | _MEM, LDX | _MEM) and not known >> i.k & 1:
            raise BpfError(f"instruction {pc}: reads M[{i.k}] before any store to it")
        elif i.code & _CLASS == JMP:
            for t in (i.jt, i.jf) if i.conditional() else (i.k,):
                incoming[pc + 1 + t] &= known
            known = every           # nothing falls through a jump
        elif i.code & _CLASS == RET:
            known = every


# --- tcpdump -d -----------------------------------------------------------------------

def disassemble(prog: bytes) -> list[str]:
    """One line per instruction, as ``tcpdump -d`` prints them (trailing
    blanks stripped).  Not validated: an unknown opcode reads ``unimp``."""
    out = []
    for n, i in enumerate(unpack(prog)):
        s = i.k - (1 << 32) if i.k & 0x80000000 else i.k
        t = (n + 1 + i.k + 0x80000000) % (1 << 32) - 0x80000000
        op, fmt = OPCODES.get(i.code, ("unimp", f"{i.code:#x}"))
        operand = fmt.format(k=i.k, s=s, t=t)
        if i.conditional() and i.code in OPCODES:
            line = f"({n:03d}) {op:<8} {operand:<16} jt {n + 1 + i.jt}\tjf {n + 1 + i.jf}"
        else:
            line = f"({n:03d}) {op:<8} {operand}"
        out.append(line.rstrip())
    return out
