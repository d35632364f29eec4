#!/usr/bin/env python3
"""MXFP4 experts with E8M0 scales per 32, as DeepSeek-V4 ships them (issue 49, item 3): an
independent generator writes routed experts `ffn.experts.E.w1.weight` I8 [out, in/2] (two E2M1
codes a byte, the even element low) with `ffn.experts.E.w1.scale` F8_E8M0 [out, in/32] (every
scale code 0-255 used, NaN and the overflowing ones included), and attention linears FP8 with
F8_E8M0 128x128 `.scale` grids; config.json quantization_config fp8 / ue8m0 / [128, 128] with
expert_dtype fp4. A spec of this test's own (the deepseek_v4 preset of issue 48 has its names)
with "scale_name": "scale" converts it, and so does the deepseek_v4 preset (which carries it):
  - convert: codes and scales merged and gate/up concatenated byte for byte
    (`ffn.experts.gate_up_proj` + `gate_up_proj_scale_inv`, transformers' names after its
    `.scale` -> `.weight_scale_inv` rename); --reverse gives every tensor back byte for byte;
  - verify passes; a flipped scale byte exits 3;
  - --dequantize: experts = e2m1 x 2^(s-127) and attention = e4m3 x 2^(s-127), rounded to BF16,
    against values computed here; no scale left, quantization_config dropped; verify passes;
  - the same checkpoint under a spec without "scale_name" is refused, naming a `.scale`.
Usage: mxfp4_v4.py MOEPACK"""
import json
import os
import random
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qformats as q  # noqa: E402
from qformats import bf16_bits, bf16_same, check, e2m1, e4m3, e8m0, f32, read_dir, write_st  # noqa: E402

M = sys.argv[1]
E, H, I, L = 4, 256, 128, 1
rng = random.Random(4)

SPEC = {
    "name": "v4_mxfp4_test", "model_types": ["deepseek_v4"], "scale_name": "scale", "renames": [],
    "converters": [
        {"sources": ["ffn.experts.{expert}.w1.weight", "ffn.experts.{expert}.w3.weight"],
         "target": "ffn.experts.gate_up_proj", "ops": [{"op": "merge", "dim": 0}, {"op": "concat", "dim": 1}]},
        {"sources": ["ffn.experts.{expert}.w2.weight"], "target": "ffn.experts.down_proj",
         "ops": [{"op": "merge", "dim": 0}]},
    ],
}


def run(*args):
    return q.run(M, *args)


def mx_dequant(codes, scales, rows, cols):
    out = bytearray()
    for i in range(rows * cols):
        nib = codes[i // 2] >> 4 if i % 2 else codes[i // 2] & 15
        out += struct.pack("<H", bf16_bits(f32(e2m1(nib) * e8m0(scales[i // 32]))))
    return bytes(out)


def fp8_dequant(w, grid, rows, cols):
    sc = (cols + 127) // 128
    out = bytearray()
    for r in range(rows):
        for c in range(cols):
            out += struct.pack("<H", bf16_bits(f32(e4m3(w[r * cols + c]) * e8m0(grid[(r // 128) * sc + c // 128]))))
    return bytes(out)


def make_source(d):
    os.makedirs(d)
    t, ref = {}, {}
    n_scale = 0
    for l in range(L):
        p = f"layers.{l}."
        for a, (o, i) in (("attn.wq_a", (192, H)), ("attn.wo_b", (H, 192))):
            w = bytes(rng.choice([c for c in range(256) if c & 0x7F != 0x7F]) for _ in range(o * i))
            g = bytes(rng.randrange(110, 140) for _ in range(((o + 127) // 128) * ((i + 127) // 128)))
            t[p + a + ".weight"] = ("F8_E4M3", [o, i], w)
            t[p + a + ".scale"] = ("F8_E8M0", [(o + 127) // 128, (i + 127) // 128], g)
            ref[p + a] = (w, g, o, i)
        t[p + "attn_norm.weight"] = ("BF16", [H], bytes(2 * H))
        t[p + "ffn.gate.weight"] = ("BF16", [E, H], bytes(2 * E * H))
        for e in range(E):
            for wn, (o, i) in (("w1", (I, H)), ("w3", (I, H)), ("w2", (H, I))):
                n = f"{p}ffn.experts.{e}.{wn}"
                codes = bytes(rng.randrange(256) for _ in range(o * i // 2))
                scales = bytes((n_scale + k) % 256 for k in range(o * i // 32))  # every code in turn
                n_scale += o * i // 32
                t[n + ".weight"] = ("I8", [o, i // 2], codes)
                t[n + ".scale"] = ("F8_E8M0", [o, i // 32], scales)
                ref[n] = (codes, scales, o, i)
    write_st(os.path.join(d, "model.safetensors"), t)
    cfg = {"architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "hidden_size": H,
           "num_hidden_layers": L, "n_routed_experts": E, "moe_intermediate_size": I, "expert_dtype": "fp4",
           "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0",
                                   "activation_scheme": "dynamic", "weight_block_size": [128, 128]}}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    return t, ref


def body(tmp):
    src_dir, packed, back, deq = (os.path.join(tmp, n) for n in ("src", "packed", "back", "deq"))
    spec = os.path.join(tmp, "spec.json")
    json.dump(SPEC, open(spec, "w"))
    src, ref = make_source(src_dir)
    rc, out = run("convert", "-q", src_dir, packed, "--spec", spec)
    check(rc == 0, "convert V4 MXFP4 experts with their .scale" + ("" if rc == 0 else ": " + out))
    got = read_dir(packed)
    for l in range(L):
        p = f"layers.{l}.ffn.experts."
        x = lambda e, w, k: src[f"{p}{e}.{w}.{k}"][2]
        want = {
            p + "gate_up_proj": ("I8", [E, 2 * I, H // 2], b"".join(x(e, "w1", "weight") + x(e, "w3", "weight") for e in range(E))),
            p + "gate_up_proj_scale_inv": ("F8_E8M0", [E, 2 * I, H // 32],
                                           b"".join(x(e, "w1", "scale") + x(e, "w3", "scale") for e in range(E))),
            p + "down_proj": ("I8", [E, H, I // 2], b"".join(x(e, "w2", "weight") for e in range(E))),
            p + "down_proj_scale_inv": ("F8_E8M0", [E, H, I // 32], b"".join(x(e, "w2", "scale") for e in range(E))),
        }
        for n, w in want.items():
            check(got.get(n) == w, f"packed {n} {w[0]} {w[1]} byte for byte")
    check(all(got.get(n) == v for n, v in src.items() if ".experts." not in n),
          "attention FP8 with its E8M0 .scale grids passes through")
    check(not [n for n in got if ".experts." in n and n.endswith(".scale")], "no expert .scale left behind")
    rc, out = run("verify", "-q", src_dir, packed, "--spec", spec)
    check(rc == 0, "verify SRC PACKED" + ("" if rc == 0 else ": " + out))
    rc, out = run("convert", "-q", packed, back, "--spec", spec, "--reverse")
    check(rc == 0, "convert --reverse" + ("" if rc == 0 else ": " + out))
    got = read_dir(back)
    check(set(got) == set(src) and all(got[n] == v for n, v in src.items()),
          "--reverse gives back every tensor (codes and .scale) byte for byte")
    bad = os.path.join(tmp, "bad")
    shutil.copytree(packed, bad)
    q.flip(bad, "layers.0.ffn.experts.down_proj_scale_inv", 3, 0x01)
    rc, out = run("verify", "-q", src_dir, bad, "--spec", spec)
    check(rc == 3 and "down_proj_scale_inv" in out, "verify exits 3 on a flipped E8M0 scale byte, naming it")

    rc, out = run("convert", "-q", "--dequantize", src_dir, deq, "--spec", spec)
    check(rc == 0, "convert --dequantize" + ("" if rc == 0 else ": " + out))
    got = read_dir(deq)
    for l in range(L):
        p = f"layers.{l}."
        gu, dn = b"", b""
        for e in range(E):
            gu += mx_dequant(*ref[f"{p}ffn.experts.{e}.w1"]) + mx_dequant(*ref[f"{p}ffn.experts.{e}.w3"])
            dn += mx_dequant(*ref[f"{p}ffn.experts.{e}.w2"])
        g = got.get(p + "ffn.experts.gate_up_proj", ("", [], b""))
        check(g[:2] == ("BF16", [E, 2 * I, H]) and bf16_same(g[2], gu), f"{p}ffn.experts.gate_up_proj = reference BF16")
        g = got.get(p + "ffn.experts.down_proj", ("", [], b""))
        check(g[:2] == ("BF16", [E, H, I]) and bf16_same(g[2], dn), f"{p}ffn.experts.down_proj = reference BF16")
        for a in ("attn.wq_a", "attn.wo_b"):
            w, gr, o, i = ref[p + a]
            g = got.get(p + a + ".weight", ("", [], b""))
            check(g[:2] == ("BF16", [o, i]) and bf16_same(g[2], fp8_dequant(w, gr, o, i)),
                  f"{p}{a}.weight (FP8, E8M0 grid) = reference BF16")
    check(not [n for n in got if "scale" in n], "no scale left after --dequantize")
    check("quantization_config" not in json.load(open(os.path.join(deq, "config.json"))),
          "--dequantize drops quantization_config")
    rc, out = run("verify", "-q", "--dequantize", src_dir, deq, "--spec", spec)
    check(rc == 0, "verify SRC DEQUANTIZED" + ("" if rc == 0 else ": " + out))

    # the deepseek_v4 preset (preset auto: model_type deepseek_v4) renames as transformers does
    # (ffn -> mlp, attn.wq_a -> self_attn.q_a_proj, ...) and moves the scales the same way
    pk, bk, dq = (os.path.join(tmp, n) for n in ("preset-packed", "preset-back", "preset-deq"))
    rc, out = run("pack", "-q", src_dir, pk)
    check(rc == 0, "pack with the deepseek_v4 preset" + ("" if rc == 0 else ": " + out))
    got = read_dir(pk)
    p = "layers.0.ffn.experts."
    x = lambda e, w, k: src[f"{p}{e}.{w}.{k}"][2]
    check(got.get("layers.0.mlp.experts.gate_up_proj_scale_inv") ==
          ("F8_E8M0", [E, 2 * I, H // 32], b"".join(x(e, "w1", "scale") + x(e, "w3", "scale") for e in range(E))),
          "preset: layers.0.mlp.experts.gate_up_proj_scale_inv byte for byte")
    check(got.get("layers.0.self_attn.q_a_proj.scale") == src["layers.0.attn.wq_a.scale"],
          "preset: the FP8 linear's .scale renamed with its weight (layers.0.self_attn.q_a_proj.scale)")
    rc, out = run("unpack", "-q", pk, bk)
    got = read_dir(bk) if rc == 0 else {}
    check(rc == 0 and set(got) == set(src) and all(got[n] == v for n, v in src.items()),
          "preset: unpack gives back every published name and byte" + ("" if rc == 0 else ": " + out))
    rc, out = run("pack", "-q", "--dequantize", src_dir, dq)
    got = read_dir(dq) if rc == 0 else {}
    gu = b"".join(mx_dequant(*ref[f"{p}{e}.w1"]) + mx_dequant(*ref[f"{p}{e}.w3"]) for e in range(E))
    g = got.get("layers.0.mlp.experts.gate_up_proj", ("", [], b""))
    check(rc == 0 and g[:2] == ("BF16", [E, 2 * I, H]) and bf16_same(g[2], gu),
          "preset: pack --dequantize, experts = reference BF16" + ("" if rc == 0 else ": " + out))

    plain = dict(SPEC)
    del plain["scale_name"]
    json.dump(plain, open(spec, "w"))
    rc, out = run("convert", "-q", src_dir, os.path.join(tmp, "no"), "--spec", spec)
    check(rc == 1 and "w1.scale" in out and not os.path.exists(os.path.join(tmp, "no")),
          "without scale_name the .scale tensors are refused, named")

    # a rule that transposes (or concatenates columns) would cut the row blocks of the codes and
    # their per-32 scales: refused, naming the rule and the op
    merge = {"op": "merge", "dim": 0}
    for ops, opname in (([merge, {"op": "concat", "dim": 1}, {"op": "transpose", "dim": 1, "dim2": 2}], "transpose"),
                        ([merge, {"op": "concat", "dim": 2}], "concat")):
        cut = json.loads(json.dumps(SPEC))
        cut["converters"][0]["ops"] = ops
        json.dump(cut, open(spec, "w"))
        rc, out = run("convert", "-q", src_dir, os.path.join(tmp, "no"), "--spec", spec)
        check(rc == 1 and "MXFP4" in out and opname in out and not os.path.exists(os.path.join(tmp, "no")),
              f"a {opname} of the last dim on MXFP4 codes is refused, named, nothing written: {out.strip()[:160]}")
q.main("mpk-v4-", body)
