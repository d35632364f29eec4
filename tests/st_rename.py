#!/usr/bin/env python3
"""st_rename.py DIR OLD NEW -- test helper: renames tensor OLD to NEW in the checkpoint
directory DIR: in the shard that holds it (header rewritten, data kept) and in
model.safetensors.index.json when there is one."""
import glob
import json
import os
import struct
import sys

d, old, new = sys.argv[1:4]
done = False
for path in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    if old not in h:
        continue
    h[new] = h.pop(old)
    t = json.dumps(h, separators=(",", ":")).encode()
    t += b" " * (-len(t) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(t)) + t + b[8 + n:])
    done = True
if not done:
    sys.exit("no tensor " + old + " in " + d)
ix_path = os.path.join(d, "model.safetensors.index.json")
if os.path.exists(ix_path):
    with open(ix_path) as f:
        ix = json.load(f)
    ix["weight_map"][new] = ix["weight_map"].pop(old)
    with open(ix_path, "w") as f:
        json.dump(ix, f, indent=2)
