"""Shared by the quantized-format tests (nvfp4.py, mxfp4_v4.py): the number formats from their
bit fields, F32 and BF16 rounding, a safetensors writer and reader, running moepack, checks.
Standard library only."""
import json
import os
import struct
import shutil
import subprocess
import sys
import tempfile

failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures += 1


def e2m1(code):
    """E2M1: sign bit 3, exponent bits 2-1 (bias 1), mantissa bit 0; exponent 0 is subnormal."""
    s, e, m = code >> 3 & 1, code >> 1 & 3, code & 1
    v = m * 0.5 if e == 0 else (1 + m / 2) * 2.0 ** (e - 1)
    return -v if s else v


def e4m3(code):
    """E4M3 (fn): sign bit 7, exponent bits 6-3 (bias 7), mantissa bits 2-0; S.1111.111 is NaN."""
    s, e, m = code >> 7 & 1, code >> 3 & 15, code & 7
    if e == 15 and m == 7:
        return float("nan")
    v = m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return -v if s else v


def e8m0(code):
    """E8M0: 2^(code - 127); 0xFF is NaN."""
    return float("nan") if code == 255 else 2.0 ** (code - 127)


FLT_MAX = 3.4028234663852886e38


def f32(x):
    """Rounded to the nearest F32 (ties to even), as Python's struct does; beyond the largest
    finite F32 (after rounding) infinity."""
    if x != x or abs(x) == float("inf"):
        return x
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return float("inf") if x > 0 else float("-inf")


def bf16_bits(x):
    """The F32 value x rounded to BF16, nearest even, as bits (NaN: 0x7FC0, any sign)."""
    if x != x:
        return 0x7FC0
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


def bf16_same(a, b):
    """Two BF16 byte strings equal, any NaN equal to any NaN."""
    if len(a) != len(b):
        return False
    for i in range(0, len(a), 2):
        x, y = struct.unpack_from("<H", a, i)[0], struct.unpack_from("<H", b, i)[0]
        nx, ny = (x & 0x7F80) == 0x7F80 and x & 0x7F, (y & 0x7F80) == 0x7F80 and y & 0x7F
        if x != y and not (nx and ny):
            return False
    return True


def write_st(path, tensors):
    header, blobs, off = {}, [], 0
    for name, (dt, shape, data) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    t = json.dumps(header, separators=(",", ":")).encode()
    t += b" " * (-len(t) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(t)) + t + b"".join(blobs))


def read_dir(d):
    out = {}
    for fn in sorted(os.listdir(d)):
        if not fn.endswith(".safetensors"):
            continue
        b = open(os.path.join(d, fn), "rb").read()
        hl = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + hl])
        h.pop("__metadata__", None)
        for name, t in h.items():
            a, z = t["data_offsets"]
            out[name] = (t["dtype"], t["shape"], b[8 + hl + a:8 + hl + z])
    return out


def flip(d, name, at, mask):
    """XORs byte at of tensor name in checkpoint folder d with mask."""
    for fn in os.listdir(d):
        if fn.endswith(".safetensors"):
            p = os.path.join(d, fn)
            b = bytearray(open(p, "rb").read())
            hl = struct.unpack("<Q", b[:8])[0]
            h = json.loads(b[8:8 + hl])
            if name in h:
                b[8 + hl + h[name]["data_offsets"][0] + at] ^= mask
                open(p, "wb").write(bytes(b))


def run(moepack, *args):
    r = subprocess.run([moepack, *args], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def main(prefix, body):
    """Runs body(tmp) in a scratch folder, removes it, prints the count and exits 1 on failures."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        body(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{failures} failure(s)")
    sys.exit(1 if failures else 0)
