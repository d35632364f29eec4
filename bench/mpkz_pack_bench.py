#!/usr/bin/env python3
"""mpkz_pack_bench.py BUILD [ROUNDS] — `pack` straight from a compressed checkpoint against
`decompress` followed by `pack` of the plain one (issue 15's goal: no slower), interleaved rounds
(A B A B ...), warm page cache. Reports the median of per-round ratios (A / B) of wall time and
of CPU time (user + sys of the children), with their spread."""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verify_scaling import timed as run  # noqa: E402  (wall seconds, child CPU seconds)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    mpk = os.path.join(build, "moepack")
    root = tempfile.mkdtemp(prefix="mpk-zpack-")
    try:
        src, z = os.path.join(root, "src"), os.path.join(root, "z")
        subprocess.run([mpk, "synth", "--arch", "qwen3_moe", "--experts", "32", "--hidden", "1024",
                        "--intermediate", "512", "--layers", "2", src], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([mpk, "compress", src, z], check=True, stdout=subprocess.DEVNULL)
        size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
        wall, cpu = [], []
        for _ in range(rounds):
            a, plain, b = (os.path.join(root, n) for n in ("a", "plain", "b"))
            for d in (a, plain, b):
                shutil.rmtree(d, True)
            wa, ca = run([mpk, "pack", "-q", z, a])
            w1, c1 = run([mpk, "decompress", z, plain])
            w2, c2 = run([mpk, "pack", "-q", plain, b])
            wall.append(wa / (w1 + w2))
            cpu.append(ca / (c1 + c2))
        print(f"source {size / 1e6:.0f} MB, {rounds} rounds; pack from .mpkz / (decompress + pack):")
        for name, v in (("wall", wall), ("cpu", cpu)):
            print(f"  {name}: median {statistics.median(v):.2f}x ({min(v):.2f}..{max(v):.2f})")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
