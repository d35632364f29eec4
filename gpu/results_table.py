#!/usr/bin/env python3
"""Markdown table from `moepack gpucheck --json` and `gpu/peer_torch.py --json` of one shape:
per token count, each CUDA backend's median time (and TFLOP/s), the peer's times, grouped's
speed relative to torch._grouped_mm (peer time / our time: > 1 means we are faster), batched's
and decode's weight bandwidth (bytes of the experts that received tokens / time) as a fraction
of the device's HBM peak, the correctness of every run, and the token count where grouped starts
to beat batched, our wgmma kernel against torch._grouped_mm, and the FP8 backend's speed relative
to our BF16 grouped kernel (grouped time / fp8 time: the issue 52 goal is >= 1.5). The device comes from PEER.json, or --device NAME (nvidia-smi's name) when the
peer was not run.

usage: results_table.py GPUCHECK.json [PEER.json] [--device NAME]
"""
import json
import sys

HBM_PEAK_GBS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H200": 4800}  # vendor datasheets


def peak(device):
    for k, v in HBM_PEAK_GBS.items():
        if k in device:
            return v
    return None


def bandwidth(r, hbm):
    if not r or "weight_gbs" not in r:
        return "—"
    return f"{r['weight_gbs']:.0f} ({r['weight_gbs'] / hbm:.2f})" if hbm else f"{r['weight_gbs']:.0f}"


def main():
    args = sys.argv[1:]
    device = None
    if "--device" in args:
        i = args.index("--device")
        device = args[i + 1]
        del args[i:i + 2]
    ours = json.load(open(args[0]))
    peer = json.load(open(args[1])) if len(args) > 1 else {"cases": []}
    device = peer.get("device") or device or ""
    hbm = peak(device)
    runs = [r for r in ours["runs"] if r["device"] == "cuda"]
    backs = [b for b in ("eager", "batched", "grouped", "grouped_cublas", "grouped_wgmma", "grouped_tma", "decode",
                                 "fp8")
             if any(r["backend"] == b for r in runs)]
    pnames = [n for n in ("grouped_mm", "bmm", "eager_torch") if any(c["name"] == n for c in peer["cases"])]
    tokens = sorted({r["tokens"] for r in runs})
    print(f"E={ours['E']} H={ours['H']} I={ours['I']} top-{ours['topk']}"
          + (f", {peer['device']}, torch {peer['torch']}" if peer.get("device") else f", {device}" if device else ""))
    print()
    head = ["T"] + [f"{b} ms (TFLOP/s)" for b in backs] + [f"torch {n} ms" for n in pnames]
    ratios = [(a, "grouped_mm", f"{a} vs _grouped_mm") for a in ("grouped", "grouped_wgmma", "grouped_tma")
              if a in backs and "grouped_mm" in pnames]
    head += [r[2] for r in ratios]
    if "fp8" in backs and "grouped" in backs:
        head.append("fp8 vs grouped")
    of = f" (of {hbm})" if hbm else ""
    bw = [b for b in ("batched", "decode") if b in backs]
    head += [f"{b} GB/s{of}" for b in bw]
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
        for a, n, _ in ratios:
            r, p = rs.get(a), ps.get(n)
            row.append(f"{p['median_ms'] / r['median_ms']:.2f}x" if r and p and "median_ms" in r else "—")
        if "fp8" in backs and "grouped" in backs:
            r, g = rs.get("fp8"), rs.get("grouped")
            row.append(f"{g['median_ms'] / r['median_ms']:.2f}x" if r and g and "median_ms" in r and "median_ms" in g
                       else "—")
        row += [bandwidth(rs.get(b), hbm) for b in bw]
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
