#!/usr/bin/env python3
"""pack / unpack against cp -r of the same bytes, timed in the same run (for machines without
bench/run.sh's tools). usage: pack_bench.py MOEPACK WORKDIR (WORKDIR/src: a per-expert checkpoint)"""
import os
import shutil
import subprocess
import sys
import time


def timed(*cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    m, w = sys.argv[1], sys.argv[2]
    src = os.path.join(w, "src")
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    for f in os.listdir(src):  # warm the page cache
        with open(os.path.join(src, f), "rb") as h:
            while h.read(1 << 24):
                pass
    print(f"source {size / 2**30:.2f} GiB, {os.cpu_count()} cores")
    for rep in range(2):
        cp = timed("cp", "-r", src, os.path.join(w, "cp"))
        shutil.rmtree(os.path.join(w, "cp"))
        cps = timed("sh", "-c", f"cp -r {src} {w}/cp && sync")  # cp with pack's durability
        shutil.rmtree(os.path.join(w, "cp"))
        pk = timed(m, "pack", "-q", src, os.path.join(w, "pk"))  # fsyncs before the rename
        shutil.rmtree(os.path.join(w, "pk"))
        nf = timed(m, "pack", "-q", "--no-fsync", src, os.path.join(w, "pk"))
        up = timed(m, "unpack", "-q", "--no-fsync", os.path.join(w, "pk"), os.path.join(w, "up"))
        shutil.rmtree(os.path.join(w, "pk"))
        shutil.rmtree(os.path.join(w, "up"))
        print(f"run {rep + 1}: cp -r {cp:.2f}s, cp -r + sync {cps:.2f}s | pack {pk:.2f}s ({cps / pk:.2f}x cp+sync) | "
              f"pack --no-fsync {nf:.2f}s ({cp / nf:.2f}x cp) | unpack --no-fsync {up:.2f}s ({cp / up:.2f}x cp)",
              flush=True)


if __name__ == "__main__":
    main()
