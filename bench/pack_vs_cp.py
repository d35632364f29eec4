#!/usr/bin/env python3
"""pack / unpack against cp -r of the same bytes, interleaved in one run.

usage: pack_vs_cp.py MOEPACK WORKDIR [--rounds N] [--sweep] [--only NAME,...] [--before MOEPACK2]... 
                     [--mpi N,...] [--cold] [--dequantize] [--shard-size SIZE]

WORKDIR/src must hold a per-expert checkpoint. Each round times every command once, in an
order that rotates from round to round, and deletes its output before the next; the page
cache is warmed first. Reported per command: median and minimum over the rounds, its median
CPU time (user + system of the command and its children; the kernel's own writeback threads,
which do cp + sync's flushing, are not counted), and the median of the per-round ratios against
the baseline timed in the same round (cp -r for the commands without fsync, cp -r + sync for
pack with its fsync). --sweep times pack --no-fsync with 1, 2, 4, 8 and 16 threads instead.
--before (repeatable) adds pack and pack --no-fsync (with --dequantize when given; unpack and unpack
--no-fsync without it) of a second build (an earlier commit, say, or `'MOEPACK --no-splice'`: the
same build with a measurement option before the command),
to compare the two in the same rounds. --mpi 1,2 adds pack under `mpirun -n 1` and
`mpirun -n 2` (durable; ratio against the one-process pack of the same round).
--cold drops the page cache (as root: sync, then 3 > /proc/sys/vm/drop_caches) before every
timed command instead of warming it, and adds pack without its read-ahead hints
(moepack --no-prefetch), to measure them. --dequantize (WORKDIR/src an FP8 checkpoint) times
`pack --dequantize` (durable, and --no-fsync) against cp -r (+ sync) of its BF16 result, made
once before the rounds: the bytes the command writes. --shard-size 1GB adds pack and pack
--no-fsync with --max-shard-size 1GB: several output shards, written by the threads in parallel
(a release of 100 GB and more has several at the default 50 GB; this source makes one).
--disk adds, per command, what the block device under WORKDIR did meanwhile (/proc/diskstats,
sampled every 50 ms): GB written to it (and read, with --cold), seconds it was busy (io_ticks), seconds during which
writes were in flight but none completed (stalls: on a VM, the host's storage holding them), and
the cache flushes it completed (each fsync of a file, and sync, sends one) with their summed time.

Right before each timed command, a file as large as what it writes (twice that with --cold, whose
reads fill the page cache too) is written into WORKDIR and deleted, untimed (skip with
--no-prefault). On a VM that hands free memory back to its host (virtio-balloon free page
reporting, as on our development VM), the first write to a returned page costs a host fault:
the same `dd` of 3.2 GB into a file took 0.86 s to 26.5 s; `pack --dequantize` run right after
such a write took 1.45-2.65 s in 5 of 5 rounds (it narrows the spread, it does not remove it).
(Touching anonymous memory instead, as this script first did, did not spare page-cache writes.)
"""
import argparse
import collections
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time


def prefault(nbytes, workdir):
    """Writes nbytes into a file in workdir and deletes it (its dirty pages are dropped)."""
    path = os.path.join(workdir, ".prefault")
    chunk = b"\1" * (16 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for off in range(0, nbytes, len(chunk)):
            os.write(fd, chunk[:min(len(chunk), nbytes - off)])
    finally:
        os.close(fd)
        os.unlink(path)


def disk_of(path):
    """The /proc/diskstats name of the whole device holding path (None when not found)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if not os.path.exists(f"/sys/dev/block/{dev}"):  # tmpfs, overlay: no block device
        return None
    real = os.path.realpath(f"/sys/dev/block/{dev}")
    if os.path.exists(os.path.join(real, "partition")):  # a partition's parent is the disk
        real = os.path.dirname(real)
    return os.path.basename(real)


DiskStat = collections.namedtuple("DiskStat", "read written in_flight busy_ms flushes flush_ms")  # sectors, sectors, I/Os, ms, -, ms


def diskstat(name):
    """A device's counters from /proc/diskstats (zeros when it is not listed)."""
    with open("/proc/diskstats") as f:
        for line in f:
            v = line.split()
            if v[2] == name:
                fl = (int(v[18]), int(v[19])) if len(v) > 19 else (0, 0)  # (kernels before 5.5: none)
                return DiskStat(int(v[5]), int(v[9]), int(v[11]), int(v[12]), *fl)
    return DiskStat(0, 0, 0, 0, 0, 0)


class DiskWatch:
    """Samples a device every 50 ms while a command runs: GB written and read, busy seconds, and
    the seconds in which writes were in flight at both ends of a sample but none completed."""

    def __init__(self, name):
        self.name, self.stop, self.stall = name, threading.Event(), 0.0

    def __enter__(self):
        self.s0, self.t0 = diskstat(self.name), time.perf_counter()
        self.th = threading.Thread(target=self.run)
        self.th.start()
        return self

    def run(self):
        prev, pt = self.s0, self.t0
        while not self.stop.wait(0.05):
            cur, ct = diskstat(self.name), time.perf_counter()
            if cur.written == prev.written and prev.in_flight > 0 and cur.in_flight > 0:
                self.stall += ct - pt
            prev, pt = cur, ct

    def __exit__(self, *exc):
        self.stop.set()
        self.th.join()
        s1 = diskstat(self.name)
        self.gb = (s1.written - self.s0.written) * 512 / 1e9
        self.rgb = (s1.read - self.s0.read) * 512 / 1e9
        self.busy = (s1.busy_ms - self.s0.busy_ms) / 1e3
        self.flushes, self.flush_s = s1.flushes - self.s0.flushes, (s1.flush_ms - self.s0.flush_ms) / 1e3


def timed(cmd, out, disk=None):
    """(wall seconds, user + system CPU seconds of the command and its children, and with disk
    a DiskWatch of that device over the command)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    watch = DiskWatch(disk) if disk else None
    t = time.perf_counter()
    with watch or contextlib.nullcontext():
        subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(out, ignore_errors=True)
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), watch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("moepack")
    ap.add_argument("workdir")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--only", help="comma-separated subset of the command names")
    ap.add_argument("--no-prefault", action="store_true")
    ap.add_argument("--before", action="append", default=[],
                    help="another moepack binary (or env VAR=... binary) to time alongside; repeatable")
    ap.add_argument("--mpi", help="comma-separated rank counts to time pack under mpirun with")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every command")
    ap.add_argument("--dequantize", action="store_true", help="pack --dequantize against cp of its result")
    ap.add_argument("--shard-size", help="also time pack with this --max-shard-size")
    ap.add_argument("--disk", action="store_true", help="report the block device's writes, busy time and stalls")
    a = ap.parse_args()
    m, w = a.moepack, a.workdir
    src, out = os.path.join(w, "src"), os.path.join(w, "out")
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    for f in os.listdir(src) if not a.cold else []:  # warm the page cache
        with open(os.path.join(src, f), "rb") as h:
            while h.read(1 << 24):
                pass
    # name -> (command, baseline name)
    base = src
    if a.dequantize:  # the baseline copies what pack --dequantize writes
        base = os.path.join(w, "bf16")
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(f"{m} pack -q --dequantize {src} {base}", shell=True, check=True)
        size = sum(os.path.getsize(os.path.join(base, f)) for f in os.listdir(base))
        for f in os.listdir(base) if not a.cold else []:
            with open(os.path.join(base, f), "rb") as h:
                while h.read(1 << 24):
                    pass
    cmds = {"cp": (f"cp -r {base} {out}", None),
            "cp+sync": (f"cp -r {base} {out} && sync", None)}
    if a.sweep:
        for th in (1, 2, 4, 8, 16):
            cmds[f"pack-nofsync-{th}t"] = (f"{m} pack -q --no-fsync --threads {th} {src} {out}", "cp")
        del cmds["cp+sync"]
    else:
        cmds["pack"] = (f"{m} pack -q {src} {out}", "cp+sync")
        cmds["pack-nofsync"] = (f"{m} pack -q --no-fsync {src} {out}", "cp")
        cmds["pack-nofsync-nomanifest"] = (f"{m} pack -q --no-fsync --no-manifest {src} {out}", "cp")
        cmds["unpack-nofsync"] = (f"{m} unpack -q --no-fsync {w}/pk {out}", "cp")  # of a fresh pack
        cmds["unpack"] = (f"{m} unpack -q {w}/pk {out}", "cp+sync")
    if a.dequantize:
        cmds = {k: v for k, v in cmds.items() if k in ("cp", "cp+sync")}
        cmds["pack-dequantize"] = (f"{m} pack -q --dequantize {src} {out}", "cp+sync")
        cmds["pack-dequantize-nofsync"] = (f"{m} pack -q --no-fsync --dequantize {src} {out}", "cp")
    for k, b in enumerate(a.before):  # named before:, before2:, before3: ...
        dq, n = ("--dequantize ", "-dequantize") if a.dequantize else ("", "")
        t = "before" + (str(k + 1) if k else "") + ":"
        cmds[f"{t}pack{n}"] = (f"{b} pack -q {dq}{src} {out}", "cp+sync")
        cmds[f"{t}pack{n}-nofsync"] = (f"{b} pack -q --no-fsync {dq}{src} {out}", "cp")
        if not a.dequantize:
            cmds[f"{t}unpack"] = (f"{b} unpack -q {w}/pk {out}", "cp+sync")
            cmds[f"{t}unpack-nofsync"] = (f"{b} unpack -q --no-fsync {w}/pk {out}", "cp")
    if a.shard_size:
        sz = f"--max-shard-size {a.shard_size}"
        cmds[f"pack-{a.shard_size}"] = (f"{m} pack -q {sz} {src} {out}", "cp+sync")
        cmds[f"pack-nofsync-{a.shard_size}"] = (f"{m} pack -q --no-fsync {sz} {src} {out}", "cp")
    if a.cold:
        cmds["pack-noprefetch"] = (f"{m} --no-prefetch pack -q {src} {out}", "cp+sync")
    for n in (a.mpi.split(",") if a.mpi else []):
        cmds[f"pack-mpi{n}"] = (f"mpirun --allow-run-as-root --oversubscribe --bind-to none -n {n} {m} pack -q {src} {out}", "pack")
    if a.only:
        keep = set(a.only.split(","))
        cmds = {k: v for k, v in cmds.items() if k in keep or k in ("cp", "cp+sync") or
                (k == "pack" and (a.mpi or a.cold))}
    print(f"source {size / 2**30:.2f} GiB, {os.cpu_count()} cores, {a.rounds} rounds", flush=True)
    names = list(cmds)
    times = {n: [] for n in names}
    cpu = {n: [] for n in names}
    disk = disk_of(w) if a.disk else None
    if a.disk and not disk:
        print(f"--disk: no block device under {w}; no disk figures", file=sys.stderr)
    dw = {n: [] for n in names}
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            if "unpack" in n:  # the pack it reads is made first (and flushed), not timed
                subprocess.run(f"{m} pack -q --no-fsync {src} {w}/pk && sync", shell=True, check=True)
            if a.cold:
                subprocess.run("sync && echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
            if not a.no_prefault:
                prefault(size * (2 if a.cold else 1), w)
            wall, c, watch = timed(cmds[n][0], out, disk)
            dw[n].append(watch)
            times[n].append(wall)
            cpu[n].append(c)
            shutil.rmtree(f"{w}/pk", ignore_errors=True)
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names), flush=True)
    print(f"{'command':26} {'median':>8} {'min':>8} {'cpu':>7}  ratio vs baseline (median of rounds; >1 = "
          "faster), CPU (user + sys) as a multiple of the baseline's")
    for n in names:
        base = cmds[n][1]
        ratio = ""
        if base:
            rs = [b / t for b, t in zip(times[base], times[n])]
            cs = [c / b for b, c in zip(cpu[base], cpu[n]) if b > 0]
            ratio = f"{statistics.median(rs):.2f}x {base} (rounds {min(rs):.2f}-{max(rs):.2f}x)"
            if cs:
                ratio += f", CPU {statistics.median(cs):.2f}x {base}'s ({min(cs):.2f}-{max(cs):.2f}x)"
        print(f"{n:26} {statistics.median(times[n]):7.2f}s {min(times[n]):7.2f}s {statistics.median(cpu[n]):6.2f}s  "
              f"{ratio}")
    if disk:
        print(f"\nthe disk ({disk}) over each command, medians over the rounds: GB written to it (read, with --cold), seconds "
              "busy, seconds stalled (writes in flight, none completing), cache flushes the device completed "
              "(fsync, sync) and their summed time; the ratio of wall time less stalls against the baseline's")
        for n in names:
            g = statistics.median(x.gb for x in dw[n])
            rg = statistics.median(x.rgb for x in dw[n])
            busy = statistics.median(x.busy for x in dw[n])
            st = [x.stall for x in dw[n]]
            fl, fs = statistics.median(x.flushes for x in dw[n]), statistics.median(x.flush_s for x in dw[n])
            line = f"{n:26} {g:6.2f} GB{f' (read {rg:.2f})' if a.cold else ''}  busy {busy:6.2f}s  " \
                   f"stalled {statistics.median(st):6.2f}s (rounds {min(st):.2f}-{max(st):.2f}s)  " \
                   f"flushes {fl:3.0f} ({fs:.2f}s)"
            base = cmds[n][1]
            if base:
                rs = [(tb - b.stall) / (t - x.stall) for tb, b, t, x in
                      zip(times[base], dw[base], times[n], dw[n]) if t > x.stall]
                if rs:
                    line += f"  less stalls {statistics.median(rs):.2f}x {base} ({min(rs):.2f}-{max(rs):.2f}x)"
            print(line)


if __name__ == "__main__":
    main()
