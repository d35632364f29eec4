#!/usr/bin/env python3
"""mpkz_pack_bench.py BUILD [ROUNDS] [THREADS] — `pack` straight from a compressed checkpoint (A)
against `pack` of the plain checkpoint (B; issue 51's goal: A at least as fast, warm, same
threads) and against `decompress` followed by `pack` of the plain one (C; issue 15's goal),
interleaved rounds (A B C A B C ...), warm page cache, --threads THREADS (default 2) for every
command. Reports the median of per-round speed ratios (B / A and C / A, of wall time and of CPU
time, user + sys of the children) with their spread (min..max)."""
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
    th = ["--threads", sys.argv[3] if len(sys.argv) > 3 else "2"]
    mpk = os.path.join(build, "moepack")
    root = tempfile.mkdtemp(prefix="mpk-zpack-")
    try:
        src, z = os.path.join(root, "src"), os.path.join(root, "z")
        subprocess.run([mpk, "synth", "--arch", "qwen3_moe", "--experts", "32", "--hidden", "1024",
                        "--intermediate", "512", "--layers", "2", src], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([mpk, "compress", "-q", src, z], check=True, stdout=subprocess.DEVNULL)
        size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
        zsize = sum(os.path.getsize(os.path.join(z, f)) for f in os.listdir(z))
        vs_plain = {"wall": [], "cpu": []}
        vs_two = {"wall": [], "cpu": []}
        for _ in range(rounds):
            a, b, plain, c = (os.path.join(root, n) for n in ("a", "b", "plain", "c"))
            for d in (a, b, plain, c):
                shutil.rmtree(d, True)
            wa, ca = run([mpk, "pack", "-q"] + th + [z, a])
            wb, cb = run([mpk, "pack", "-q"] + th + [src, b])
            w1, c1 = run([mpk, "decompress", "-q"] + th + [z, plain])
            w2, c2 = run([mpk, "pack", "-q"] + th + [plain, c])
            vs_plain["wall"].append(wb / wa), vs_plain["cpu"].append(cb / ca)
            vs_two["wall"].append((w1 + w2) / wa), vs_two["cpu"].append((c1 + c2) / ca)
        print(f"source {size / 1e6:.0f} MB ({zsize / size:.3f} compressed), {rounds} rounds, {' '.join(th)}; "
              "speed of pack from .mpkz against:")
        for label, r in (("pack from the plain files", vs_plain), ("decompress + pack", vs_two)):
            print(f"  {label}: " + ", ".join(f"{k} {statistics.median(v):.2f}x ({min(v):.2f}..{max(v):.2f})"
                                            for k, v in r.items()))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
