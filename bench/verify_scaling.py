#!/usr/bin/env python3
"""verify_scaling.py NEW_MOEPACK [--old OLD_MOEPACK] [--rounds N]

`moepack verify DST` against its own manifest on checkpoints of 25k, 50k and 100k tiny tensors
(written under $TMPDIR/mpk_vscale). New and old binaries run interleaved (A B A B ...); prints
per size the median seconds (min-max), t(N)/t(25k) (2 and 4 when linear) and the median of the
per-round old/new ratios, with CPU time (user+sys) of the new binary."""
import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import tempfile
import time

SIZES = [25000, 50000, 100000]


def make(n, d):
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return
    os.makedirs(d, exist_ok=True)
    h = {f"t.{i}.w": {"dtype": "U8", "shape": [4], "data_offsets": [4 * i, 4 * i + 4]} for i in range(n)}
    b = json.dumps(h, separators=(",", ":")).encode()
    b += b" " * (-len(b) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(b)) + b + os.urandom(4 * n))


def timed(cmd):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    t = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return t, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def span(v):
    return "%.3f (%.3f-%.3f)" % (statistics.median(v), min(v), max(v))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("new")
    ap.add_argument("--old")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    w = os.path.join(os.environ.get("TMPDIR", tempfile.gettempdir()), "mpk_vscale")
    for n in SIZES:
        d = os.path.join(w, f"c{n}")
        make(n, d)
        subprocess.run([a.new, "hash", d, "--write"], check=True, stdout=subprocess.DEVNULL)
    new = {n: [] for n in SIZES}
    cpu = {n: [] for n in SIZES}
    old = {n: [] for n in SIZES}
    for _ in range(a.rounds):
        for n in SIZES:
            d = os.path.join(w, f"c{n}")
            t, c = timed([a.new, "verify", d])
            new[n].append(t)
            cpu[n].append(c)
            if a.old:
                old[n].append(timed([a.old, "verify", d])[0])
    base = statistics.median(new[SIZES[0]])
    for n in SIZES:
        line = f"{n} tensors: new {span(new[n])} s, cpu {statistics.median(cpu[n]):.3f} s, " \
               f"t/t(25k) {statistics.median(new[n]) / base:.2f}"
        if a.old:
            line += f"; old {span(old[n])} s, old/new per round {span([o / x for o, x in zip(old[n], new[n])])}x"
        print(line)


if __name__ == "__main__":
    main()
