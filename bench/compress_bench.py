#!/usr/bin/env python3
"""compress_bench.py BUILD [ROUNDS] [KINDS] — moepack compress/decompress against plain `zstd -3`
(one frame per file) and `zstd -d` of the same shard, interleaved rounds (moepack, zstd, moepack,
...), warm page cache, one thread each (--threads 1, zstd's default), each ending in sync (moepack
fsyncs its output; zstd's is synced by `sync FILE`).

Shards (normal_weights, 8 x [2048, 2048]): BF16 drawn from N(0, 0.02) ("bf16"); the same with
each row scaled by its own 2^u, u uniform in [-1, 1] ("bf16-rows": near-normal weights with
per-row scales); FP8 E4M3 scaled so that each tensor's largest maps to 448 ("fp8"). KINDS: a
comma-separated subset (default all three). Before each timed command, untimed: its output
removed, what it reads read once, and sync; the order of the two tools turns round every other
round (until 2026-12-07 neither: each command could pay for the previous one's writeback).

Per shard: the size ratio (output / input) of each, and per round the ratio of moepack's speed
to zstd's (zstd's CPU seconds / moepack's, user + sys of the child; and the same of wall time);
printed: the median of the per-round ratios and their spread (min..max), and each tool's median
throughput per core (bytes of the uncompressed side / CPU seconds)."""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verify_scaling import timed as run  # noqa: E402  (wall seconds, child CPU seconds)

KINDS = {"bf16": ["--bf16"], "bf16-rows": ["--bf16", "8", "2048", "2048", "0.02", "1", "1"], "fp8": ["--fp8"]}


def spread(v):
    return f"{statistics.median(v):.2f}x ({min(v):.2f}..{max(v):.2f})"


def fresh(cmd, reads, outs):
    """cmd timed after, untimed: its outputs removed, the files it reads read once (this VM's
    kernel reclaims idle page cache, DAMON), and sync (no command pays for the writeback of the
    one before it)."""
    for o in outs:
        if os.path.isdir(o):
            shutil.rmtree(o)
        elif os.path.exists(o):
            os.unlink(o)
    for f in reads:
        for p in ([os.path.join(f, n) for n in os.listdir(f)] if os.path.isdir(f) else [f]):
            with open(p, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    os.sync()
    return run(cmd)


def one_round(moepack, shard, src, root, rows, sizes, flip):
    """moepack's and zstd's compress, then their decompress; which of the two goes first turns
    round every other round."""
    z, back = os.path.join(root, "z"), os.path.join(root, "back")
    f, out = os.path.join(root, "f.zst"), os.path.join(root, "f.out")
    steps = {"mpk_c": ([moepack, "compress", "-q", "--threads", "1", src, z], [src], [z]),
             "zstd_c": (["sh", "-c", 'zstd -3 -q -f "$0" -o "$1" && sync "$1"', shard, f], [shard], [f]),
             "mpk_d": ([moepack, "decompress", "-q", "--threads", "1", z, back], [z], [back]),
             "zstd_d": (["sh", "-c", 'zstd -d -q -f "$0" -o "$1" && sync "$1"', f, out], [f], [out])}
    order = ["zstd_c", "mpk_c", "zstd_d", "mpk_d"] if flip else ["mpk_c", "zstd_c", "mpk_d", "zstd_d"]
    for k in order:
        rows[k].append(fresh(*steps[k]))
    sizes["mpk"] = os.path.getsize(os.path.join(z, "model.safetensors.mpkz"))
    sizes["zstd"] = os.path.getsize(f)
    with open(os.path.join(back, "model.safetensors"), "rb") as a, open(shard, "rb") as b:
        assert a.read() == b.read()
    os.unlink(out)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    kinds = sys.argv[3].split(",") if len(sys.argv) > 3 else list(KINDS)
    moepack = os.path.join(build, "moepack")
    gen = os.path.join(build, "bench", "normal_weights")
    root = tempfile.mkdtemp(prefix="mpk-zbench-")
    try:
        for kind in kinds:
            src = os.path.join(root, kind)
            args = KINDS[kind]
            subprocess.run([gen, args[0], src] + args[1:], check=True)
            shard = os.path.join(src, "model.safetensors")
            size = os.path.getsize(shard)
            rows = {k: [] for k in ("mpk_c", "mpk_d", "zstd_c", "zstd_d")}
            sizes = {}
            for r in range(rounds):
                one_round(moepack, shard, src, root, rows, sizes, r % 2 == 1)
            print(f"## {kind} shard, {size / 2**20:.1f} MiB, {rounds} rounds")
            print(f"size ratio: moepack {sizes['mpk'] / size:.4f}, zstd -3 {sizes['zstd'] / size:.4f}")
            for side, m, zs, label in (("compress", "mpk_c", "zstd_c", "zstd -3"), ("decompress", "mpk_d", "zstd_d",
                                                                                   "zstd -d")):
                cpu = [z[1] / a[1] for a, z in zip(rows[m], rows[zs])]
                wall = [z[0] / a[0] for a, z in zip(rows[m], rows[zs])]
                print(f"moepack {side} / {label}: speed per core {spread(cpu)}, wall {spread(wall)}; "
                      f"per core: moepack {statistics.median([size / c / 1e9 for _, c in rows[m]]):.2f} GB/s, "
                      f"{label} {statistics.median([size / c / 1e9 for _, c in rows[zs]]):.2f} GB/s")
            print()
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
