#!/usr/bin/env python3
"""Writes a checkpoint whose tensors have the names and shard layout of a real index (or a
synthetic 8 x 2000 layout) with one BF16 element each: fast to write, real-sized headers.
usage: headers.py INDEX CONFIG OUT | headers.py --synthetic SHARDS PER_SHARD OUT"""
import json, os, struct, sys

def write(path, names):
    hdr, off = {}, 0
    for n in sorted(names):
        hdr[n] = {"dtype": "BF16", "shape": [1], "data_offsets": [off, off + 2]}
        off += 2
    b = json.dumps(hdr, separators=(",", ":")).encode()
    b += b" " * ((8 - len(b) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(b)) + b + bytes(off))

if sys.argv[1] == "--synthetic":
    shards, per, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    os.makedirs(out)
    wm = {}
    for s in range(shards):
        fn = f"model-{s+1:05d}-of-{shards:05d}.safetensors"
        names = [f"model.layers.{s}.mlp.experts.{i}.weight" for i in range(per)]
        write(os.path.join(out, fn), names)
        wm.update({n: fn for n in names})
else:
    index, config, out = sys.argv[1:4]
    os.makedirs(out)
    wm = json.load(open(index))["weight_map"]
    by = {}
    for n, f in wm.items():
        by.setdefault(f, []).append(n)
    for f, names in by.items():
        write(os.path.join(out, f), names)
    open(os.path.join(out, "config.json"), "w").write(open(config).read())
with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 2 * len(wm)}, "weight_map": wm}, f, indent=2, sort_keys=True)
    f.write("\n")
