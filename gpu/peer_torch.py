#!/usr/bin/env python3
"""The peer for `moepack gpucheck`: the same MoE layer in PyTorch, timed the same way.

  grouped_mm   sort (token, slot) pairs by expert, torch._grouped_mm for gate_up and down with
               the expert offsets, silu(gate) * up between, weighted un-permute and sum
  bmm          per pair: gather its expert's weights, torch.bmm (the transformers "batched"
               path; skipped where the gathered weights would exceed --bmm-limit bytes)
  eager_torch  loop over experts with tokens, F.linear twice (the transformers eager loop)

Shapes from --E --H --I --topk; routing from DIR/inputs-T{T}.safetensors written by
`moepack gpucheck --save-inputs DIR` (the same x and routing), else softmax top-k of random
logits. Weights are random BF16 (timing does not depend on their values). Timing: CUDA events
around the whole layer, 3 warm-up runs, median of --runs. Correctness: each method's output on
three tokens against a float64 reference (relative error printed).

  python3 gpu/peer_torch.py --E 128 --H 2048 --I 768 --topk 8 --tokens 1,16,256,4096 \
      --inputs /tmp/inputs --json peer.json
and then: moepack gpucheck ... --peer peer.json prints our time / peer time per case.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F


def routing(T, E, k, H, g, inputs):
    path = os.path.join(inputs, f"inputs-T{T}.safetensors") if inputs else None
    if path and os.path.exists(path):
        from safetensors.torch import load_file
        d = load_file(path, device="cuda")
        return d["x"], d["top_k_index"].long(), d["top_k_weights"], "gpucheck inputs"
    x = (torch.rand(T, H, generator=g, device="cuda") * 2 - 1).bfloat16()
    logits = torch.rand(T, E, generator=g, device="cuda") * 4 - 2
    w, idx = torch.topk(logits, k, dim=-1)
    return x, idx, torch.softmax(w, dim=-1), "random"


def grouped_mm(x, idx, w, gu, dn):
    T, k = idx.shape
    E, I = gu.shape[0], dn.shape[2]
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    offs = torch.cumsum(torch.bincount(flat, minlength=E), 0).to(torch.int32)
    xs = x[order // k]
    h = torch._grouped_mm(xs, gu.transpose(-2, -1), offs=offs)
    a = F.silu(h[:, :I]) * h[:, I:]
    y = torch._grouped_mm(a, dn.transpose(-2, -1), offs=offs)
    out = torch.empty_like(y)
    out[order] = y
    return (out.view(T, k, -1).float() * w.unsqueeze(-1)).sum(1)


def bmm(x, idx, w, gu, dn):
    T, k = idx.shape
    I = dn.shape[2]
    flat = idx.reshape(-1)
    xs = x.repeat_interleave(k, 0).unsqueeze(-1)  # [P, H, 1]
    h = torch.bmm(gu[flat], xs).squeeze(-1)        # [P, 2I]
    a = (F.silu(h[:, :I]) * h[:, I:]).unsqueeze(-1)
    y = torch.bmm(dn[flat], a).squeeze(-1)          # [P, H]
    return (y.view(T, k, -1).float() * w.unsqueeze(-1)).sum(1)


def eager(x, idx, w, gu, dn):
    T, k = idx.shape
    I = dn.shape[2]
    out = torch.zeros(T, x.shape[1], device=x.device, dtype=torch.float32)
    for e in torch.unique(idx).tolist():  # host sync, as the transformers eager loop
        tok, slot = torch.where(idx == e)
        h = F.linear(x[tok], gu[e])
        y = F.linear(F.silu(h[:, :I]) * h[:, I:], dn[e])
        out.index_add_(0, tok, y.float() * w[tok, slot].unsqueeze(-1))
    return out


def reference_rows(x, idx, w, gu, dn, rows):
    """float64 reference for a few tokens (the same definition as moepack's CPU reference)."""
    I = dn.shape[2]
    out = []
    for t in rows:
        acc = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            h = gu[e].double() @ x[t].double()
            a = F.silu(h[:I]) * h[I:]
            acc += float(w[t, j]) * (dn[e].double() @ a)
        out.append(acc)
    return torch.stack(out)


def timed(fn, runs, *args):
    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(*args)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--E", type=int, required=True)
    ap.add_argument("--H", type=int, required=True)
    ap.add_argument("--I", type=int, required=True)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--tokens", default="1,4,16,64,256,1024,4096")
    ap.add_argument("--inputs", help="directory of gpucheck --save-inputs files")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bmm-limit", type=float, default=16e9, help="bytes of gathered weights bmm may use")
    ap.add_argument("--json", help="write the cases here")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("peer_torch: no CUDA device", file=sys.stderr)
        return 77
    g = torch.Generator(device="cuda").manual_seed(5)
    gu = ((torch.rand(a.E, 2 * a.I, a.H, generator=g, device="cuda") - 0.5) * 0.1).bfloat16()
    dn = ((torch.rand(a.E, a.H, a.I, generator=g, device="cuda") - 0.5) * 0.1).bfloat16()
    cases = []
    for T in [int(t) for t in a.tokens.split(",")]:
        x, idx, w, src = routing(T, a.E, a.topk, a.H, g, a.inputs)
        rows = sorted({0, T // 2, T - 1})
        ref = reference_rows(x, idx, w, gu, dn, rows)
        flops = 2.0 * T * a.topk * 3 * a.H * a.I
        fns = [("grouped_mm", grouped_mm), ("eager_torch", eager)]
        if T * a.topk * 3 * a.H * a.I * 2 <= a.bmm_limit:
            fns.insert(1, ("bmm", bmm))
        for name, fn in fns:
            out = fn(x, idx, w, gu, dn)[rows].double()
            rel = ((out - ref).norm() / ref.norm()).item()
            ms = timed(fn, a.runs, x, idx, w, gu, dn)
            cases.append({"tokens": T, "name": name, "median_ms": ms, "tflops": flops / ms / 1e9,
                          "rel_err": rel, "routing": src})
            print(f"peer {name:12s} T={T:<6d} {ms:9.4f} ms {flops / ms / 1e9:7.1f} TFLOP/s  rel_err {rel:.2e}",
                  flush=True)
        del x, idx, w
        torch.cuda.empty_cache()
    doc = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "E": a.E, "H": a.H, "I": a.I,
           "topk": a.topk, "cases": cases}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
