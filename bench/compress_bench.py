#!/usr/bin/env python3
"""compress_bench.py BUILD [ROUNDS] — moepack compress/decompress against plain `zstd -3` (one
frame per file) of the same shard, interleaved rounds (A B A B ...), warm page cache.

Shards: normal_weights' BF16 N(0, 0.02) and FP8 E4M3 (scaled to 448) tensors, 8 x [2048, 2048].
Reports per shard type the size ratio (output / input) of each, and for each tool the
throughput per core: bytes of the uncompressed side / CPU seconds (user + sys of the child),
with the wall time; the median over rounds and the spread (min..max). Single-threaded runs
(--threads 1, zstd's default) so that per-core numbers compare."""
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
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    moepack = os.path.join(build, "moepack")
    gen = os.path.join(build, "bench", "normal_weights")
    root = tempfile.mkdtemp(prefix="mpk-zbench-")
    try:
        for kind in ("bf16", "fp8"):
            src = os.path.join(root, kind)
            subprocess.run([gen, "--" + kind, src], check=True)
            shard = os.path.join(src, "model.safetensors")
            size = os.path.getsize(shard)
            rows = {k: [] for k in ("mpk_c", "mpk_d", "zstd_c", "zstd_d")}
            sizes = {}
            for _ in range(rounds):
                for tool in ("mpk", "zstd"):
                    if tool == "mpk":
                        z, back = os.path.join(root, "z"), os.path.join(root, "back")
                        shutil.rmtree(z, True), shutil.rmtree(back, True)
                        rows["mpk_c"].append(run([moepack, "compress", "--threads", "1", src, z]))
                        rows["mpk_d"].append(run([moepack, "decompress", "--threads", "1", z, back]))
                        sizes["mpk"] = os.path.getsize(os.path.join(z, "model.safetensors.mpkz"))
                        assert open(os.path.join(back, "model.safetensors"), "rb").read() == open(shard, "rb").read()
                    else:
                        z = os.path.join(root, "f.zst")
                        rows["zstd_c"].append(run(["zstd", "-3", "-q", "-f", shard, "-o", z]))
                        rows["zstd_d"].append(run(["zstd", "-d", "-q", "-f", z, "-o", os.path.join(root, "f.out")]))
                        sizes["zstd"] = os.path.getsize(z)
            print(f"## {kind.upper()} shard, {size / 2**20:.1f} MiB, {rounds} rounds")
            print(f"size ratio: moepack {sizes['mpk'] / size:.3f}, zstd -3 {sizes['zstd'] / size:.3f}")
            for k, label in (("mpk_c", "moepack compress"), ("zstd_c", "zstd -3"), ("mpk_d", "moepack decompress"),
                             ("zstd_d", "zstd -d")):
                per_core = [size / cpu / 1e9 for _, cpu in rows[k]]
                wall = [size / w / 1e9 for w, _ in rows[k]]
                print(f"{label:20s} per core {statistics.median(per_core):.2f} GB/s "
                      f"({min(per_core):.2f}..{max(per_core):.2f}), wall {statistics.median(wall):.2f} GB/s")
            print()
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
