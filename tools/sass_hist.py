#!/usr/bin/env python3
"""tools/sass_hist.py: a static SASS opcode histogram per kernel of an sm_90 cubin, for machines without
nvdisasm / cuobjdump (the build machine has nvcc and ptxas only).

    nvcc -cubin -arch=sm_90 -O3 ... file.cu -o file.cubin
    python3 tools/sass_hist.py file.cubin [SUBSTRING[,SUBSTRING...]]

Each kernel's code is the ELF section .text.<mangled name>, a run of 16-byte instructions; on sm_90 the low
9 bits of an instruction are its opcode (the next 3 bits the operand form). The names below were calibrated
by compiling kernels made of one known PTX instruction repeated (lop3, shr, fma/mul/sub.f16x2, prmt, add,
mad, fma.f32, mma.sync m16n8k16, ld.global, setp) and reading which code dominated; unknown codes print
in hex. The counts are static (instructions in the binary), so docs/CUDA.md gets per-step figures by
differencing kernels that unroll a different number of steps (tools/sass_count.sh).
"""
import collections
import struct
import sys

NAMES = {0x012: 'LOP3', 0x019: 'SHF', 0x031: 'HFMA2', 0x032: 'HMUL2', 0x030: 'HADD2', 0x035: 'HFMA2.MMA',
         0x016: 'PRMT', 0x024: 'IMAD', 0x025: 'IMAD.WIDE', 0x010: 'IADD3', 0x011: 'LEA', 0x023: 'FFMA',
         0x03c: 'HMMA', 0x181: 'LDG', 0x186: 'STG', 0x00c: 'ISETP', 0x118: 'NOP', 0x002: 'MOV', 0x182: 'LDC',
         0x0b9: 'ULDC', 0x119: 'S2R', 0x147: 'BRA', 0x14d: 'EXIT'}


def sections(path):
    """(kernel name, code bytes) for every .text.* section of an ELF64 cubin"""
    b = open(path, 'rb').read()
    if b[:4] != b'\x7fELF' or b[4] != 2:
        sys.exit('%s: not an ELF64 cubin' % path)
    shoff, = struct.unpack_from('<Q', b, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', b, 0x3a)
    hdrs = [struct.unpack_from('<IIQQQQIIQQ', b, shoff + i * shentsize) for i in range(shnum)]
    stro = hdrs[shstrndx][4]

    def name(o):
        return b[stro + o:b.index(b'\0', stro + o)].decode()

    for h in hdrs:
        n = name(h[0])
        if n.startswith('.text.'):
            yield n[6:], b[h[4]:h[4] + h[5]]


def hist(code):
    c = collections.Counter()
    for i in range(0, len(code), 16):
        lo, = struct.unpack_from('<Q', code, i)
        c[NAMES.get(lo & 0x1ff, '%03x' % (lo & 0x1ff))] += 1
    return c


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    want = sys.argv[2].split(',') if len(sys.argv) > 2 else []
    for name, code in sections(sys.argv[1]):
        if not all(w in name for w in want):
            continue
        h = hist(code)
        n = len(code) // 16 - h['NOP']
        print('%s\n  %d instructions (without NOP): %s' %
              (name, n, ' '.join('%s:%d' % kv for kv in h.most_common() if kv[0] != 'NOP')))


if __name__ == '__main__':
    main()
