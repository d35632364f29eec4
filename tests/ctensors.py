#!/usr/bin/env python3
"""compressed-tensors checkpoints (llm-compressor) through moepack --dequantize (issue 49, item 4):
an independent generator writes per-expert Qwen3-MoE checkpoints as compressed-tensors stores
them, and the values are checked against the formulas of compressed-tensors' _dequantize,
computed here:
  - nvfp4-pack-quantized: X.weight_packed U8 [out, in/2] (even element in the low nibble),
    X.weight_scale F8_E4M3 [out, in/16], X.weight_global_scale F32 [1] (a reciprocal),
    X.input_global_scale; value = bf16(f32(e2m1 * f32(e4m3 / global_scale)));
  - float-quantized: X.weight F8_E4M3 with X.weight_scale F32 per channel [out, 1] (experts)
    or per tensor [1] (attention), X.input_scale; value = bf16(f32(e4m3 * scale)).
pack --dequantize writes the experts packed in BF16 (the views are named X.weight) equal to the
reference, every attention linear too, no scale left, quantization_config dropped; verify passes.
Refused, naming the reason, nothing written: packing either without --dequantize, and a format
moepack does not read (pack-quantized). Usage: ctensors.py MOEPACK"""
import json
import os
import random
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qformats as q  # noqa: E402
from qformats import bf16_bits, bf16_same, check, e2m1, e4m3, f32, read_dir, write_st  # noqa: E402

M = sys.argv[1]
E, H, I, V = 4, 64, 32, 32
rng = random.Random(50)


def run(*args):
    return q.run(M, *args)


def f32b(x):
    return struct.pack("<f", x)


def nvfp4_linear(t, name, o, i):
    codes = bytes(rng.randrange(256) for _ in range(o * i // 2))
    scales = bytes(rng.choice([c for c in range(256) if c & 0x7F != 0x7F]) for _ in range(o * i // 16))
    gs = f32(rng.uniform(300.0, 3000.0))  # compressed-tensors stores 1 / ModelOpt's weight_scale_2
    t[name + ".weight_packed"] = ("U8", [o, i // 2], codes)
    t[name + ".weight_scale"] = ("F8_E4M3", [o, i // 16], scales)
    t[name + ".weight_global_scale"] = ("F32", [1], f32b(gs))
    t[name + ".input_global_scale"] = ("F32", [1], f32b(f32(rng.uniform(1.0, 9.0))))
    out = bytearray()
    for k in range(o * i):
        nib = codes[k // 2] >> 4 if k % 2 else codes[k // 2] & 15
        out += struct.pack("<H", bf16_bits(f32(e2m1(nib) * f32(e4m3(scales[k // 16]) / gs))))
    return bytes(out)


def fp8_linear(t, name, o, i, per_channel):
    w = bytes(rng.choice([c for c in range(256) if c & 0x7F != 0x7F]) for _ in range(o * i))
    sc = [f32(rng.uniform(1e-4, 1e-2)) for _ in range(o if per_channel else 1)]
    t[name + ".weight"] = ("F8_E4M3", [o, i], w)
    t[name + ".weight_scale"] = ("F32", [o, 1] if per_channel else [1], b"".join(map(f32b, sc)))
    t[name + ".input_scale"] = ("F32", [1], f32b(0.02))
    return b"".join(struct.pack("<H", bf16_bits(f32(e4m3(w[k]) * sc[k // i if per_channel else 0])))
                    for k in range(o * i))


def make(d, fmt):
    """A checkpoint in format fmt; the reference BF16 of every quantized linear."""
    os.makedirs(d)
    t, ref = {}, {}
    t["model.embed_tokens.weight"] = ("BF16", [V, H], bytes(2 * V * H))
    t["lm_head.weight"] = ("BF16", [V, H], bytes(2 * V * H))
    t["model.norm.weight"] = ("BF16", [H], bytes(2 * H))
    p = "model.layers.0."
    t[p + "mlp.gate.weight"] = ("BF16", [E, H], bytes(2 * E * H))
    for a in ("q_proj", "o_proj"):
        n = p + "self_attn." + a
        ref[n] = nvfp4_linear(t, n, H, H) if fmt == "nvfp4-pack-quantized" else fp8_linear(t, n, H, H, False)
    for e in range(E):
        for proj, (o, i) in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            n = f"{p}mlp.experts.{e}.{proj}"
            ref[n] = nvfp4_linear(t, n, o, i) if fmt == "nvfp4-pack-quantized" else fp8_linear(t, n, o, i, True)
    write_st(os.path.join(d, "model.safetensors"), t)
    wargs = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16, "symmetric": True} \
        if fmt == "nvfp4-pack-quantized" else {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True}
    qc = {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": wargs}}, "ignore": ["lm_head", "re:.*mlp.gate$"]}
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H, "num_hidden_layers": 1,
           "vocab_size": V, "num_experts": E, "moe_intermediate_size": I, "quantization_config": qc}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    return ref


def body(tmp):
    for fmt in ("nvfp4-pack-quantized", "float-quantized"):
        src, deq = os.path.join(tmp, fmt), os.path.join(tmp, fmt + "-deq")
        ref = make(src, fmt)
        rc, out = run("pack", "-q", src, os.path.join(tmp, "no"))
        check(rc == 1 and "compressed-tensors" in out and
              not os.path.exists(os.path.join(tmp, "no")), f"{fmt}: pack without --dequantize refused, nothing written")
        rc, out = run("pack", "-q", "--dequantize", src, deq)
        check(rc == 0, f"{fmt}: pack --dequantize" + ("" if rc == 0 else ": " + out))
        got = read_dir(deq)
        p = "model.layers.0."
        for a in ("q_proj", "o_proj"):
            g = got.get(p + "self_attn." + a + ".weight", ("", [], b""))
            check(g[:2] == ("BF16", [H, H]) and bf16_same(g[2], ref[p + "self_attn." + a]),
                  f"{fmt}: self_attn.{a}.weight = reference BF16")
        gu = b"".join(ref[f"{p}mlp.experts.{e}.gate_proj"] + ref[f"{p}mlp.experts.{e}.up_proj"] for e in range(E))
        dn = b"".join(ref[f"{p}mlp.experts.{e}.down_proj"] for e in range(E))
        g = got.get(p + "mlp.experts.gate_up_proj", ("", [], b""))
        check(g[:2] == ("BF16", [E, 2 * I, H]) and bf16_same(g[2], gu), f"{fmt}: experts.gate_up_proj = reference BF16")
        g = got.get(p + "mlp.experts.down_proj", ("", [], b""))
        check(g[:2] == ("BF16", [E, H, I]) and bf16_same(g[2], dn), f"{fmt}: experts.down_proj = reference BF16")
        left = [n for n in got if "scale" in n or "packed" in n]
        check(not left, f"{fmt}: no scale or packed tensor left: " + ", ".join(left[:3]))
        check("quantization_config" not in json.load(open(os.path.join(deq, "config.json"))),
              f"{fmt}: quantization_config dropped")
        rc, out = run("verify", "-q", src, deq)
        check(rc == 0, f"{fmt}: verify SRC DEQUANTIZED" + ("" if rc == 0 else ": " + out))
    # a format moepack does not read, with --dequantize too
    cfgp = os.path.join(tmp, "float-quantized", "config.json")
    cfg = json.load(open(cfgp))
    cfg["quantization_config"]["format"] = "pack-quantized"
    json.dump(cfg, open(cfgp, "w"))
    rc, out = run("pack", "-q", "--dequantize", os.path.join(tmp, "float-quantized"), os.path.join(tmp, "no"))
    check(rc == 1 and "pack-quantized" in out and not os.path.exists(os.path.join(tmp, "no")),
          "pack-quantized (INT4) refused with --dequantize too, named")


q.main("mpk-ct-", body)
