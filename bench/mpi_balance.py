#!/usr/bin/env python3
"""How the MPI executor shares a real release's pack between ranks, computed from moepack's plan.

usage: mpi_balance.py MOEPACK MATERIAL_DIR WORKDIR [--ranks 1,2,4,...] [--cores 16]
                      [--client-gbs 2] [--mem 1GiB]

For each release (a real model.safetensors.index.json + config.json from MATERIAL_DIR), writes a
checkpoint with the index's names and shards and the shapes config.json gives, as sparse files
(headers only: no data blocks), runs `moepack plan --json` on it (the plan pack would run: its
output tensors, their dtypes, shapes and output shards), then cuts the outputs into units and
shares them between N ranks the way exec/share.c does (assign_units): units of
min(64 MiB, --mem / threads / 3, max(1 MiB, total / (16 N))) bytes of one output tensor, queued
per output shard in file order (dtype, then name: the safetensors writer's order), each unit the
rank's in whose byte share (total / N + 1) its middle byte falls. Prints per N the bytes of the
largest and smallest share, the imbalance (largest / mean), the output shards touched by more than
one rank, and the expected wall time of a 1 TB pack of the same shape when each rank's host
reads and writes its share at --client-gbs GB/s (read + write: 2 bytes moved per byte of
output) and the filesystem's aggregate bandwidth is not the limit.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys

DT_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32", "U32",
            "F32", "F64", "I64", "U64"]  # moepack.h's mpk_dtype order (F4 types are not in these plans)
DT_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "I64": 8}


def shapes_deepseek(name, c):
    """Shapes of the DeepSeek-V2/V3-family names these indexes use (GQA-style attention)."""
    H, V = c["hidden_size"], c["vocab_size"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    hd = c.get("head_dim") or H // heads
    I, Im = c["intermediate_size"], c["moe_intermediate_size"]
    E, S = c["n_routed_experts"], c.get("n_shared_experts") or 0
    rules = [
        (r"(lm_head|model\.embed_tokens)\.weight$", ("BF16", [V, H])),
        (r"norm\.weight$", ("BF16", [H])),
        (r"self_attn\.[qk]_layernorm\.weight$", ("BF16", [hd])),
        (r"self_attn\.q_proj\.weight$", ("BF16", [heads * hd, H])),
        (r"self_attn\.[kv]_proj\.weight$", ("BF16", [kv * hd, H])),
        (r"self_attn\.o_proj\.weight$", ("BF16", [H, heads * hd])),
        (r"self_attn\.rotary_emb\.inv_freq$", ("F32", [hd // 2])),
        (r"experts\.\d+\.(gate|up)_proj\.weight$", ("BF16", [Im, H])),
        (r"experts\.\d+\.down_proj\.weight$", ("BF16", [H, Im])),
        (r"shared_experts\.(gate|up)_proj\.weight$", ("BF16", [Im * S, H])),
        (r"shared_experts\.down_proj\.weight$", ("BF16", [H, Im * S])),
        (r"mlp\.(gate|up)_proj\.weight$", ("BF16", [I, H])),
        (r"mlp\.down_proj\.weight$", ("BF16", [H, I])),
        (r"mlp\.gate\.weight$", ("BF16", [E, H])),
        (r"mlp\.gate\.e_score_correction_bias$", ("F32", [E])),
    ]
    for pat, v in rules:
        if re.search(pat, name):
            return v
    raise SystemExit(f"mpi_balance: no shape rule for {name}")


def shapes_mixtral(name, c):
    H, V, I, heads = c["hidden_size"], c["vocab_size"], c["intermediate_size"], c["num_attention_heads"]
    kv, hd, E = c["num_key_value_heads"], c["hidden_size"] // c["num_attention_heads"], c["num_local_experts"]
    rules = [
        (r"(lm_head|model\.embed_tokens)\.weight$", [V, H]), (r"norm\.weight$", [H]),
        (r"q_proj\.weight$", [heads * hd, H]), (r"[kv]_proj\.weight$", [kv * hd, H]),
        (r"o_proj\.weight$", [H, heads * hd]), (r"experts\.\d+\.w[13]\.weight$", [I, H]),
        (r"experts\.\d+\.w2\.weight$", [H, I]), (r"gate\.weight$", [E, H]),
    ]
    for pat, v in rules:
        if re.search(pat, name):
            return "BF16", v
    raise SystemExit(f"mpi_balance: no shape rule for {name}")


RELEASES = [  # (name, material folder, index file, shape rules, config.json rewritten for moepack)
    ("Kimi-K2-class (DeepSeek-V3 derivative, 2.06 TB)", "kimi2-pcl-deepseek_v3-derivative",
     "model.safetensors.index.json", shapes_deepseek, {"model_type": "deepseek_v3"}),
    ("Mixtral 8x22B (WizardLM-2, 281 GB)", "wizardlm-2-8x22b-mixtral", "model.safetensors.index.json",
     shapes_mixtral, {}),
]


def write_sparse(out, index, cfg, rules, cfg_over):
    os.makedirs(out, exist_ok=True)
    wm = json.load(open(index))["weight_map"]
    by = {}
    for n, f in wm.items():
        by.setdefault(f, []).append(n)
    for f, names in by.items():
        hdr, off = {}, 0
        for n in sorted(names):
            dt, shape = rules(n, cfg)
            nb = DT_BYTES[dt]
            for d in shape:
                nb *= d
            hdr[n] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nb]}
            off += nb
        b = json.dumps(hdr, separators=(",", ":")).encode()
        b += b" " * ((8 - len(b) % 8) % 8)
        with open(os.path.join(out, f), "wb") as h:
            h.write(struct.pack("<Q", len(b)) + b)
            h.truncate(8 + len(b) + off)  # sparse: no data blocks
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as h:
        json.dump({"metadata": {}, "weight_map": wm}, h)
    c = dict(cfg)
    c.update(cfg_over)
    with open(os.path.join(out, "config.json"), "w") as h:
        json.dump(c, h)


def share(outs, ranks, unit):
    """outs: [(file, dtype, name, nbytes)] -> bytes per rank, shards written by > 1 rank."""
    order = sorted(outs, key=lambda o: (o[0], -DT_ORDER.index(o[1]), o[2]))
    units = []
    for f, _, _, nb in order:
        units += [(f, min(unit, nb - off)) for off in range(0, nb, unit)]
    total = sum(u[1] for u in units)
    per = total // ranks + 1
    got, writers, at = [0] * ranks, {}, 0
    for f, ln in units:
        r = (at + ln // 2) // per
        at += ln
        got[r] += ln
        writers.setdefault(f, set()).add(r)
    return got, sum(1 for w in writers.values() if len(w) > 1), len(writers)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("moepack")
    ap.add_argument("material")
    ap.add_argument("workdir")
    ap.add_argument("--ranks", default="1,2,4,8,16,32,64")
    ap.add_argument("--cores", type=int, default=16, help="cores per host (one rank per host)")
    ap.add_argument("--mem", type=float, default=2**30, help="--mem of each rank, bytes")
    ap.add_argument("--client-gbs", type=float, default=2.0)
    a = ap.parse_args()
    for title, folder, idx, rules, over in RELEASES:
        d = os.path.join(a.material, folder)
        cfg = json.load(open(os.path.join(d, "config.json")))
        out = os.path.join(a.workdir, folder)
        write_sparse(out, os.path.join(d, idx), cfg, rules, over)
        p = subprocess.run([a.moepack, "plan", out, "--json"], capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"mpi_balance: plan of {out} failed: {p.stderr}")
        plan = json.loads(p.stdout)
        outs = []
        for o in plan["outputs"]:
            nb = DT_BYTES[o["dtype"]]
            for s in o["shape"]:
                nb *= s
            outs.append((o["file"], o["dtype"], o["name"], nb))
        total = sum(o[3] for o in outs)
        print(f"== {title}: plan (preset {plan['preset']}): {len(outs)} output tensors, "
              f"{plan['shards']} output shards, {total / 1e9:.1f} GB; largest tensor "
              f"{max(o[3] for o in outs) / 1e9:.2f} GB")
        print(f"{'ranks':>5} {'unit':>9} {'largest share':>14} {'smallest':>10} {'imbalance':>9} "
              f"{'shared shards':>13} {'1 TB pack':>10} {'speed-up':>8}")
        t1 = None
        for n in map(int, a.ranks.split(",")):
            unit = int(min(64 << 20, a.mem / a.cores / 3, max(1 << 20, total // (16 * n))))
            got, shared, files = share(outs, n, unit)
            mean = total / n
            t = (max(got) / total) * 1e12 * 2 / (a.client_gbs * 1e9)  # seconds for 1 TB of this shape
            t1 = t if t1 is None else t1
            print(f"{n:5d} {unit / 2**20:7.1f}Mi {max(got) / 1e9:11.2f} GB {min(got) / 1e9:7.2f} GB "
                  f"{max(got) / mean:9.4f} {shared:6d} of {files:<4d} {t / 60:8.1f} m {t1 / t:7.2f}x")


if __name__ == "__main__":
    main()
