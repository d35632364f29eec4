#!/usr/bin/env python3
"""reorder_e2e.py MOEPACK -- the reordering ops (interleave, permute_for_rope, concat_list)
through the whole program: a checkpoint written here, converted with a spec that uses
them the way transformers' mappings do (Kimi K2.5's vision wqkv, Inkling's w13 tensors,
Qwen4-Exp's n-gram shards, the q/k/v conv1d of glm5_next / kimi_linear), every output compared
with a plain reshape/transpose (written here) of transformers' own formulas (core_model_loading.py: Interleave,
PermuteForRope, Chunk, Concatenate), then converted back (--reverse) byte for byte. Also: a
shard count config.json contradicts, and a head count it does not give, fail with exit 1
naming the key, and nothing is written."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from array import array
from itertools import product

MOEPACK = sys.argv[1]
L, HEADS, HD, C = 2, 2, 6, 5          # vision: 2 heads of 6 rows, 5 columns
E, I, H = 3, 4, 5                     # experts, intermediate, hidden
SHARDS, ROWS = 4, 3                   # n-gram shards of ROWS x H
SEED = [7]


class T:
    """A tensor: shape and flat row-major uint16 values."""
    def __init__(self, shape, flat):
        self.shape, self.flat = tuple(shape), array("H", flat)

    def __eq__(self, o):
        return isinstance(o, T) and self.shape == o.shape and self.flat == o.flat

    def tobytes(self):
        return self.flat.tobytes()


def bf16(*shape):
    n = 1
    for d in shape:
        n *= d
    out = []
    for _ in range(n):  # a 64-bit LCG: any 16-bit patterns, reproducible
        SEED[0] = (SEED[0] * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append(SEED[0] >> 48)
    return T(shape, out)


def swap_view(t, view, a, b):
    """t viewed as shape view, axes a and b swapped (torch .view().transpose(a, b)), made
    contiguous and viewed back as t's shape."""
    strides = [1] * len(view)
    for i in range(len(view) - 2, -1, -1):
        strides[i] = strides[i + 1] * view[i + 1]
    oshape = list(view)
    oshape[a], oshape[b] = oshape[b], oshape[a]
    out = []
    for idx in product(*[range(d) for d in oshape]):
        src = list(idx)
        src[a], src[b] = src[b], src[a]
        out.append(t.flat[sum(i * s for i, s in zip(src, strides))])
    return T(t.shape, out)


def split0(t, n):  # torch.chunk(t, n, dim=0)
    step = len(t.flat) // n
    return [T((t.shape[0] // n,) + t.shape[1:], t.flat[k * step:(k + 1) * step]) for k in range(n)]


def cat0(ts):  # torch.cat(ts, dim=0)
    return T((sum(t.shape[0] for t in ts),) + ts[0].shape[1:], [x for t in ts for x in t.flat])


def write_st(path, tensors):
    header, off, blobs = {}, 0, []
    for name, a in tensors.items():
        b = a.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_st(d):
    out = {}
    for fn in sorted(os.listdir(d)):
        if not fn.endswith(".safetensors"):
            continue
        b = open(os.path.join(d, fn), "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        for name, m in json.loads(b[8:8 + n]).items():
            if name == "__metadata__":
                continue
            s, e = m["data_offsets"]
            out[name] = T(m["shape"], array("H", b[8 + n + s:8 + n + e]))
    return out


# transformers' formulas (core_model_loading.py)
def permute_for_rope(t, heads):            # PermuteForRope._apply: view(n, rows/n/2, 2, ..).transpose(1, 2)
    rows = t.shape[0]
    return swap_view(t, [heads, rows // heads // 2, 2, *t.shape[1:]], 1, 2)


def interleave(t, dim):                    # Interleave(dim): shape[dim] -> [n/2, 2], transpose(dim, dim + 1)
    s = list(t.shape)
    s[dim:dim + 1] = [s[dim] // 2, 2]
    return swap_view(t, s, dim, dim + 1)


SPEC = {
    "name": "reorder-e2e",
    "converters": [
        {"sources": ["vision.blocks.{layer}.wqkv"],
         "targets": ["vision.layers.{layer}.attn.q_proj", "vision.layers.{layer}.attn.k_proj",
                     "vision.layers.{layer}.attn.v_proj"],
         "ops": [{"op": "chunk", "dim": 0},
                 {"op": "permute_for_rope", "heads": ["vision_config.num_attention_heads",
                                                      "vision_config.vt_num_attention_heads"], "groups": [0, 1]}]},
        {"sources": ["layers.{layer}.mlp.experts.w13_weight"], "target": "layers.{layer}.mlp.experts.gate_up_proj",
         "ops": [{"op": "interleave", "dim": 1}]},
        {"sources": ["layers.{layer}.mlp.w13_dn.weight"],
         "targets": ["layers.{layer}.mlp.gate_proj.weight", "layers.{layer}.mlp.up_proj.weight"],
         "ops": [{"op": "interleave", "dim": 0}, {"op": "chunk", "dim": 0}]},
        {"sources": ["ple.ngram_embedding.shard_{shard}.weight"], "target": "ple.ngram_embedding.weight",
         "ops": [{"op": "concat_list", "dim": 0, "items": "split_ngram_parts"}]},
        {"sources": ["self_attn.q_conv1d.weight", "self_attn.k_conv1d.weight", "self_attn.v_conv1d.weight"],
         "target": "self_attn.conv1d.weight", "ops": [{"op": "concat", "dim": 0}]},
    ],
}


def build(d, cfg):
    os.makedirs(d)
    t = {}
    for layer in range(L):
        t[f"vision.blocks.{layer}.wqkv.weight"] = bf16(3 * HEADS * HD, C)
        t[f"vision.blocks.{layer}.wqkv.bias"] = bf16(3 * HEADS * HD)
        t[f"model.layers.{layer}.mlp.experts.w13_weight"] = bf16(E, 2 * I, H)
        t[f"model.layers.{layer}.mlp.w13_dn.weight"] = bf16(2 * I, H)
        for p in "qkv":
            t[f"model.layers.{layer}.self_attn.{p}_conv1d.weight"] = bf16(HEADS * HD, 1, 4)
    for s in range(SHARDS):
        t[f"model.ple.ngram_embedding.shard_{s}.weight"] = bf16(ROWS, H)
    t["model.norm.weight"] = bf16(H)
    write_st(os.path.join(d, "model.safetensors"), t)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    return t


def run(*args):
    return subprocess.run([MOEPACK, *args], capture_output=True, text=True)


def expected(src):
    want = {"model.norm.weight": src["model.norm.weight"]}
    for layer in range(L):
        for suf in ("weight", "bias"):
            q, k, v = split0(src[f"vision.blocks.{layer}.wqkv.{suf}"], 3)   # Chunk(dim=0)
            want[f"vision.layers.{layer}.attn.q_proj.{suf}"] = permute_for_rope(q, HEADS)
            want[f"vision.layers.{layer}.attn.k_proj.{suf}"] = permute_for_rope(k, HEADS)
            want[f"vision.layers.{layer}.attn.v_proj.{suf}"] = v
        p = f"model.layers.{layer}."
        want[p + "mlp.experts.gate_up_proj"] = interleave(src[p + "mlp.experts.w13_weight"], 1)
        gate, up = split0(interleave(src[p + "mlp.w13_dn.weight"], 0), 2)
        want[p + "mlp.gate_proj.weight"], want[p + "mlp.up_proj.weight"] = gate, up
        want[p + "self_attn.conv1d.weight"] = cat0([src[p + f"self_attn.{x}_conv1d.weight"] for x in "qkv"])
    want["model.ple.ngram_embedding.weight"] = cat0(
        [src[f"model.ple.ngram_embedding.shard_{s}.weight"] for s in range(SHARDS)])
    return want


def split(t, dim, n):  # torch.chunk(t, n, dim)
    outer = 1
    for d in t.shape[:dim]:
        outer *= d
    inner = len(t.flat) // outer
    step = inner // n
    shape = list(t.shape)
    shape[dim] //= n
    return [T(shape, [x for o in range(outer) for x in t.flat[o * inner + k * step:o * inner + (k + 1) * step]])
            for k in range(n)]


def check_presets(tmp):
    """Each of issue 48's presets: moepack synth, pack (preset from config.json), the converted
    tensors against transformers' formulas applied to the synth's own tensors; unpack gives the
    shards back (tests/cli.sh checks every preset's round trip)."""
    fails = 0
    checks = {
        # kimi_k25: vision_config.vt_num_attention_heads = 2 in its synth config
        "kimi_k25": lambda s, l: {
            f"model.vision_tower.layers.{l}.attn.{p}_proj.{suf}":
                (lambda q: permute_for_rope(q, 2) if p != "v" else q)(split0(s[f"vision_tower.encoder.blocks.{l}.wqkv.{suf}"], 3)[i])
            for i, p in enumerate("qkv") for suf in ("weight", "bias")},
        "inkling_mm_model": lambda s, l: {
            f"model.language_model.layers.{l}.mlp.experts.gate_up_proj":
                interleave(s[f"model.llm.layers.{l}.mlp.experts.w13_weight"], 1),
            f"model.language_model.layers.{l}.mlp.shared_experts.gate_proj":
                split(interleave(s[f"model.llm.layers.{l}.mlp.shared_experts.shared_w13_weight"], 1), 1, 2)[0],
            f"model.language_model.layers.{l}.mlp.shared_experts.up_proj":
                split(interleave(s[f"model.llm.layers.{l}.mlp.shared_experts.shared_w13_weight"], 1), 1, 2)[1],
            **({"model.language_model.layers.0.mlp.up_proj.weight":
                split0(interleave(s["model.llm.layers.0.mlp.w13_dn.weight"], 0), 2)[1]} if l == 0 else {})},
        "qwen4_exp_text": lambda s, l: {} if l else {
            "model.layers.0.ple.ple_embedding.ngram_embedding.weight": cat0(
                [s[f"model.language_model.layers.0.ple.ple_embedding.ngram_embedding.shard_{k}.weight"] for k in range(4)])},
    }
    for preset, want_of in checks.items():
        d = os.path.join(tmp, preset)
        r = run("synth", "--arch", preset, "--layers", "2", d + "-src")
        r = r if r.returncode else run("pack", "-q", d + "-src", d + "-pk")
        if r.returncode:
            print("FAIL: %s: synth/pack: %s" % (preset, r.stderr))
            fails += 1
            continue
        src, got = read_st(d + "-src"), read_st(d + "-pk")
        want = {k: v for l in range(2) for k, v in want_of(src, l).items()}
        bad = [k for k in want if got.get(k) != want[k]]
        if bad:
            print("FAIL: %s: %s differ from transformers' formulas" % (preset, bad))
            fails += 1
        else:
            print("ok: %s: %d converted tensors equal transformers' formulas" % (preset, len(want)))
    return fails


def main():
    fails = 0
    tmp = tempfile.mkdtemp(prefix="mpk_reorder_")
    try:
        spec = os.path.join(tmp, "spec.json")
        json.dump(SPEC, open(spec, "w"))
        cfg = {"vision_config": {"vt_num_attention_heads": HEADS}, "text_config": {"split_ngram_parts": SHARDS}}
        src = build(os.path.join(tmp, "src"), cfg)
        r = run("convert", "-q", os.path.join(tmp, "src"), os.path.join(tmp, "out"), "--spec", spec)
        if r.returncode:
            sys.exit("convert failed: " + r.stderr)
        got, want = read_st(os.path.join(tmp, "out")), expected(src)
        before = fails
        if sorted(got) != sorted(want):
            print("FAIL: names", sorted(set(got) ^ set(want)))
            fails += 1
        for name in sorted(want):
            if name in got and got[name] != want[name]:
                print("FAIL: %s differs from transformers' formula" % name)
                fails += 1
        if fails == before:
            print("ok: %d tensors equal to transformers' formulas" % len(want))
        r = run("convert", "-q", os.path.join(tmp, "out"), os.path.join(tmp, "back"), "--spec", spec, "--reverse")
        back = read_st(os.path.join(tmp, "back")) if r.returncode == 0 else {}
        if r.returncode or sorted(back) != sorted(src) or any(back[n] != src[n] for n in src):
            print("FAIL: --reverse does not give the source back: " + r.stderr)
            fails += 1
        else:
            print("ok: --reverse gives the source back, byte for byte")
        # config.json contradicts the shard count; gives no head count: exit 1, naming the key, no DST
        for bad, key in (({"vision_config": {"vt_num_attention_heads": HEADS}, "split_ngram_parts": SHARDS + 1},
                          "split_ngram_parts"),
                         ({"text_config": {"split_ngram_parts": SHARDS}}, "vision_config.num_attention_heads")):
            d = os.path.join(tmp, "bad-" + key)
            shutil.copytree(os.path.join(tmp, "src"), d)
            json.dump(bad, open(os.path.join(d, "config.json"), "w"))
            r = run("convert", "-q", d, d + "-out", "--spec", spec)
            if r.returncode != 1 or key not in r.stderr or os.path.exists(d + "-out"):
                print("FAIL: config.json without a good %s: exit %d: %s" % (key, r.returncode, r.stderr))
                fails += 1
            else:
                print("ok: config.json without a good %s: exit 1 naming it" % key)
        fails += check_presets(tmp)
    finally:
        shutil.rmtree(tmp)
    sys.exit(1 if fails else 0)


main()
