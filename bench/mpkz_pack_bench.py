#!/usr/bin/env python3
"""mpkz_pack_bench.py BUILD [ROUNDS] [THREADS] — `pack` straight from a compressed checkpoint (A)
against `pack` of the plain checkpoint (B; issue 51's goal: A at least as fast, warm, same
threads) and against `decompress` followed by `pack` of the plain one (C; issue 15's goal),
interleaved rounds, the order turned round every other round (A B C, C B A, ...), --threads
THREADS (default 2) for every command. Reports the median of per-round speed ratios (B / A and
C / A, of wall time and of CPU time, user + sys of the children) with their spread (min..max).

Before each timed command, untimed: its output removed, every file it reads read once (warm:
this VM's kernel reclaims idle page cache, DAMON, so files read a minute before are partly gone
again), and `sync` (the writeback of the previous command's output and the freeing of removed
files done, so that no command pays for the one before it; until 2026-12-07 every round removed
all outputs at once just before A)."""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verify_scaling import timed as run  # noqa: E402  (wall seconds, child CPU seconds)


def warm(d):
    """Every file under d read once (into the page cache)."""
    for dirpath, _, files in os.walk(d):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


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
        a, b, plain, c = (os.path.join(root, n) for n in ("a", "b", "plain", "c"))

        def fresh(cmd, reads, out):
            shutil.rmtree(out, True)
            for d in reads:
                warm(d)
            os.sync()
            return run(cmd)

        def pack_z():
            return fresh([mpk, "pack", "-q"] + th + [z, a], [z], a)

        def pack_plain():
            return fresh([mpk, "pack", "-q"] + th + [src, b], [src], b)

        def two_steps():
            shutil.rmtree(c, True)
            w1, c1 = fresh([mpk, "decompress", "-q"] + th + [z, plain], [z], plain)
            w2, c2 = fresh([mpk, "pack", "-q"] + th + [plain, c], [plain], c)
            return w1 + w2, c1 + c2

        steps = [pack_z, pack_plain, two_steps]
        for r in range(rounds):
            t = {f: f() for f in (steps if r % 2 == 0 else steps[::-1])}
            (wa, ca), (wb, cb), (w2, c2) = t[pack_z], t[pack_plain], t[two_steps]
            vs_plain["wall"].append(wb / wa), vs_plain["cpu"].append(cb / ca)
            vs_two["wall"].append(w2 / wa), vs_two["cpu"].append(c2 / ca)
        print(f"source {size / 1e6:.0f} MB ({zsize / size:.3f} compressed), {rounds} rounds, {' '.join(th)}; "
              "speed of pack from .mpkz against:")
        for label, r in (("pack from the plain files", vs_plain), ("decompress + pack", vs_two)):
            print(f"  {label}: " + ", ".join(f"{k} {statistics.median(v):.2f}x ({min(v):.2f}..{max(v):.2f})"
                                            for k, v in r.items()))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
