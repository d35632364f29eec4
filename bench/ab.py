#!/usr/bin/env python3
"""ab.py ROUNDS NAME=PROGRAM [NAME=PROGRAM ...] -- ARG... — the same command run by two or more
programs (builds of moepack, or scripts that set a switch and exec one), interleaved: each round
runs every program once, in the opposite order every other round (A B C, C B A, ...).

ARG "{out}" is replaced by an output path of the program's own (under the system's temporary
directory); before each timed run, untimed: that output is removed, every ARG that names an
existing file or folder is read once (warm: this VM's kernel reclaims idle page cache, DAMON),
and `sync` (no run pays for the writeback of the one before it). Reports per program the median
wall and CPU time (user + sys of the child) and the median of the per-round ratios of its speed
to the first program's, with their spread (min..max).

  python3 bench/ab.py 9 before=/tmp/moepack-old after=build/moepack -- decompress -q --threads 1 z {out}
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def warm(path):
    """Every file under path (or path itself) read once."""
    files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def timed(cmd):
    """Wall seconds and CPU seconds (user + sys) of cmd, which must succeed."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"ab.py: {' '.join(cmd)} failed (status {status})")
    return wall, ru.ru_utime + ru.ru_stime


def spread(v):
    return f"{statistics.median(v):.2f}x ({min(v):.2f}..{max(v):.2f})"


def main():
    if "--" not in sys.argv or len(sys.argv) < 5:
        sys.exit(__doc__)
    cut = sys.argv.index("--")
    rounds, progs, args = int(sys.argv[1]), [a.split("=", 1) for a in sys.argv[2:cut]], sys.argv[cut + 1:]
    root = tempfile.mkdtemp(prefix="mpk-ab-")
    try:
        res = {name: [] for name, _ in progs}
        reads = [a for a in args if a != "{out}" and os.path.exists(a)]
        for r in range(rounds):
            for name, prog in progs if r % 2 == 0 else progs[::-1]:
                out = os.path.join(root, name)
                remove(out)
                for a in reads:
                    warm(a)
                os.sync()
                res[name].append(timed([prog] + [out if a == "{out}" else a for a in args]))
        first = progs[0][0]
        print(f"{rounds} rounds: {' '.join(args)}")
        for name, _ in progs:
            wall = [b[0] / x[0] for b, x in zip(res[first], res[name])]
            cpu = [b[1] / x[1] for b, x in zip(res[first], res[name])]
            print(f"  {name}: wall {statistics.median([x[0] for x in res[name]]):.3f} s, "
                  f"CPU {statistics.median([x[1] for x in res[name]]):.3f} s; speed against {first}: "
                  f"wall {spread(wall)}, CPU {spread(cpu)}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
