#!/usr/bin/env python3
"""Markdown table from `moepack gpucheck --json` and `gpu/peer_torch.py --json` of one shape:
per token count, each CUDA backend's median time (and TFLOP/s), the peer's times, grouped's
speed relative to torch._grouped_mm (peer time / our time: > 1 means we are faster), batched's
weight bandwidth as a fraction of the device's HBM peak, the correctness of every run, and the
token count where grouped starts to beat batched.

usage: results_table.py GPUCHECK.json [PEER.json]
"""
import json
import sys

HBM_PEAK_GBS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H200": 4800}  # vendor datasheets


def peak(device):
    for k, v in HBM_PEAK_GBS.items():
        if k in device:
            return v
    return None


def main():
    ours = json.load(open(sys.argv[1]))
    peer = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else {"cases": []}
    hbm = peak(peer.get("device", ""))
    runs = [r for r in ours["runs"] if r["device"] == "cuda"]
    backs = [b for b in ("eager", "batched", "grouped", "grouped_cublas") if any(r["backend"] == b for r in runs)]
    pnames = [n for n in ("grouped_mm", "bmm", "eager_torch") if any(c["name"] == n for c in peer["cases"])]
    tokens = sorted({r["tokens"] for r in runs})
    print(f"E={ours['E']} H={ours['H']} I={ours['I']} top-{ours['topk']}"
          + (f", {peer['device']}, torch {peer['torch']}" if peer.get("device") else ""))
    print()
    head = ["T"] + [f"{b} ms (TFLOP/s)" for b in backs] + [f"torch {n} ms" for n in pnames]
    if "grouped" in backs and "grouped_mm" in pnames:
        head.append("grouped vs _grouped_mm")
    if "batched" in backs and hbm:
        head.append(f"batched GB/s (of {hbm})")
    head.append("all ok")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for T in tokens:
        row = [str(T)]
        rs = {r["backend"]: r for r in runs if r["tokens"] == T}
        ps = {c["name"]: c for c in peer["cases"] if c["tokens"] == T}
        for b in backs:
            r = rs.get(b)
            row.append(f"{r['median_ms']:.4f} ({r['tflops']:.1f})" if r and "median_ms" in r else "—")
        for n in pnames:
            row.append(f"{ps[n]['median_ms']:.4f}" if n in ps else "—")
        if "grouped" in backs and "grouped_mm" in pnames:
            r, p = rs.get("grouped"), ps.get("grouped_mm")
            row.append(f"{p['median_ms'] / r['median_ms']:.2f}x" if r and p and "median_ms" in r else "—")
        if "batched" in backs and hbm:
            r = rs.get("batched")
            row.append(f"{r['weight_gbs']:.0f} ({r['weight_gbs'] / hbm:.2f})" if r and "weight_gbs" in r else "—")
        row.append("yes" if all(r["ok"] for r in rs.values()) else "NO")
        print("| " + " | ".join(row) + " |")
    print()
    if "crossover_tokens" in ours:
        print(f"grouped beats batched from T={ours['crossover_tokens']}")
    worst = max((r.get("rel_err", float("inf")) for r in runs), default=None)
    if worst is not None:
        print(f"largest relative error against the fp64 reference: {worst:.3g}")


if __name__ == "__main__":
    main()
