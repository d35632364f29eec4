#!/usr/bin/env python3
"""What packing saves at load time: transformers' from_pretrained of a per-expert checkpoint
against moepack's packed one of the same model, interleaved in one run.

usage: load_time.py PER_EXPERT PACKED [--rounds N] [--device cuda|cpu] [--reader transformers|bytes]
                    [--json OUT]

Each round loads PER_EXPERT and PACKED once (the order alternating from round to round), with
the page cache warmed first, so that what is timed is the load, not the disk: transformers v5
converts a per-expert checkpoint into its packed modules as it loads (WeightConverter: every
expert tensor read, then merged and concatenated), and reads a packed one as it is. A load is
AutoModelForCausalLM.from_pretrained(DIR, dtype=torch.bfloat16, device_map=DEVICE), then
torch.cuda.synchronize(). After the rounds, both models (loaded once more) run the same input
and their logits must be equal: the packed checkpoint loads into the same model.
--reader bytes times reading every file of each checkpoint instead (no torch needed): the floor
a loader cannot go under, and what the script's own test runs.
Prints per round both times, then the median and spread of the per-round ratios
per-expert / packed (>1: the packed checkpoint loads faster).
"""
import argparse
import json
import os
import statistics
import sys
import time


def warm(path):
    for f in sorted(os.listdir(path)):
        p = os.path.join(path, f)
        if os.path.isfile(p):
            with open(p, "rb") as h:
                while h.read(1 << 24):
                    pass


def load_bytes(path):
    n = 0
    for f in sorted(os.listdir(path)):
        p = os.path.join(path, f)
        if os.path.isfile(p):
            with open(p, "rb") as h:
                while True:
                    b = h.read(1 << 24)
                    if not b:
                        break
                    n += len(b)
    return n


def transformers_loader(device):
    import torch
    from transformers import AutoModelForCausalLM

    def load(path):
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=device)
        if device == "cuda":
            torch.cuda.synchronize()
        return m
    return load


def same_logits(models, device):
    import torch
    torch.manual_seed(0)
    vocab = models[0].config.vocab_size
    ids = torch.randint(0, vocab, (1, 16), device=device)
    with torch.no_grad():
        a, b = (m(ids).logits.float() for m in models)
    return bool(torch.equal(a, b)), float((a - b).abs().max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("per_expert")
    ap.add_argument("packed")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reader", choices=["transformers", "bytes"], default="transformers")
    ap.add_argument("--json", help="write the times and ratios here")
    a = ap.parse_args()
    dirs = {"per-expert": a.per_expert, "packed": a.packed}
    for d in dirs.values():
        if not os.path.isfile(os.path.join(d, "config.json")):
            sys.exit(f"load_time: {d}: no config.json (a checkpoint directory is needed)")
        warm(d)
    load = load_bytes if a.reader == "bytes" else transformers_loader(a.device)
    times = {k: [] for k in dirs}
    for r in range(a.rounds):
        order = list(dirs) if r % 2 == 0 else list(dirs)[::-1]
        for k in order:
            t = time.perf_counter()
            m = load(dirs[k])
            times[k].append(time.perf_counter() - t)
            del m
        print(f"round {r + 1}: per-expert {times['per-expert'][-1]:.3f}s, packed {times['packed'][-1]:.3f}s",
              flush=True)
    ratios = [p / q for p, q in zip(times["per-expert"], times["packed"])]
    out = {"reader": a.reader, "device": a.device, "rounds": a.rounds, "times": times,
           "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    print(f"per-expert {statistics.median(times['per-expert']):.3f}s, packed "
          f"{statistics.median(times['packed']):.3f}s (medians); per-expert / packed: "
          f"{out['ratio_median']:.2f}x (rounds {out['ratio_min']:.2f}-{out['ratio_max']:.2f}x)")
    if a.reader == "transformers":
        models = [load(dirs["per-expert"]), load(dirs["packed"])]
        out["logits_equal"], out["logits_max_abs_diff"] = same_logits(models, a.device)
        print(f"logits of the two loads equal: {out['logits_equal']} (max |diff| {out['logits_max_abs_diff']:.3g})")
    if a.json:
        with open(a.json, "w") as h:
            json.dump(out, h, indent=2)
    return 0 if out.get("logits_equal", True) else 3


if __name__ == "__main__":
    sys.exit(main())
