#!/usr/bin/env python3
"""pack / unpack against cp -r of the same bytes, timed in the same run (for machines without
bench/run.sh's tools). usage: pack_bench.py MOEPACK WORKDIR [sweep] (WORKDIR/src: a per-expert
checkpoint; sweep: pack --no-fsync with 1, 2, 4, 8, 16 threads instead)"""
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
    if len(sys.argv) > 3 and sys.argv[3] == "sweep":  # pack --no-fsync by thread count
        for rep in range(2):
            cp = timed("cp", "-r", src, os.path.join(w, "cp"))
            shutil.rmtree(os.path.join(w, "cp"))
            line = f"sweep {rep + 1}: cp -r {cp:.2f}s |"
            for th in (1, 2, 4, 8, 16):
                t = timed(m, "pack", "-q", "--no-fsync", "--threads", str(th), src, os.path.join(w, "pk"))
                shutil.rmtree(os.path.join(w, "pk"))
                line += f" {th}t {t:.2f}s ({cp / t:.2f}x)"
            print(line, flush=True)
        return
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
