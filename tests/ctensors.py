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
  - pack-quantized INT4 (Kimi K2.5's experts, also on the kimi_k25 preset's names): X.weight_packed
    I32 [out, in/8] (q + 8, eight a little-endian int32), X.weight_scale BF16 per 32,
    X.weight_shape; value = bf16(q * scale).
pack --dequantize writes the experts packed in BF16 (the views are named X.weight) equal to the
reference, every attention linear too, no scale left, quantization_config dropped; verify passes.
Refused, naming the reason, nothing written: packing any of them without --dequantize, a format
moepack does not read (mxfp4-pack-quantized), INT4 whose weight_shape disagrees with its codes,
and INT4 with a zero point. Usage: ctensors.py MOEPACK"""
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


def int4_linear(t, name, o, i, group=32):
    """pack-quantized INT4, symmetric, grouped: q in [-8, 7] stored as q + 8, eight to a little-endian
    int32 (element 0 in the lowest bits); BF16 scale per group; value = bf16(q * scale)."""
    qs = [rng.randrange(-8, 8) for _ in range(o * i)]
    sc = [bf16_bits(rng.uniform(1e-3, 5e-2)) for _ in range(o * i // group)]
    words = b"".join(struct.pack("<I", sum((qs[k + j] + 8) << (4 * j) for j in range(8))) for k in range(0, o * i, 8))
    t[name + ".weight_packed"] = ("I32", [o, i // 8], words)
    t[name + ".weight_scale"] = ("BF16", [o, i // group], b"".join(struct.pack("<H", x) for x in sc))
    t[name + ".weight_shape"] = ("I64", [2], struct.pack("<qq", o, i))
    scf = [struct.unpack("<f", struct.pack("<I", x << 16))[0] for x in sc]
    return b"".join(struct.pack("<H", bf16_bits(f32(qs[k] * scf[k // group]))) for k in range(o * i))


def linear(t, name, o, i, fmt, expert):
    if fmt == "nvfp4-pack-quantized":
        return nvfp4_linear(t, name, o, i)
    if fmt == "pack-quantized":
        return int4_linear(t, name, o, i)
    return fp8_linear(t, name, o, i, expert)


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
        ref[n] = linear(t, n, H, H, fmt, False)
    for e in range(E):
        for proj, (o, i) in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            n = f"{p}mlp.experts.{e}.{proj}"
            ref[n] = linear(t, n, o, i, fmt, True)
    write_st(os.path.join(d, "model.safetensors"), t)
    wargs = {"nvfp4-pack-quantized": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16},
             "pack-quantized": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32},
             "float-quantized": {"num_bits": 8, "type": "float", "strategy": "channel"}}[fmt]
    qc = {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": wargs}}, "ignore": ["lm_head", "re:.*mlp.gate$"]}
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H, "num_hidden_layers": 1,
           "vocab_size": V, "num_experts": E, "moe_intermediate_size": I, "quantization_config": qc}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    return ref


def body(tmp):
    for fmt in ("nvfp4-pack-quantized", "float-quantized", "pack-quantized"):
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
    # Kimi K2.5 as published: the kimi_k25 preset's names (moepack synth --arch kimi_k25), its routed
    # experts INT4 pack-quantized; pack --dequantize with the preset auto, then verify
    kimi, kq, kd = (os.path.join(tmp, n) for n in ("kimi", "kimi-int4", "kimi-deq"))
    rc, out = run("synth", "--arch", "kimi_k25", "--layers", "1", "--experts", str(E), "--hidden", str(H),
                  "--intermediate", str(I), kimi)
    check(rc == 0, "synth kimi_k25" + ("" if rc == 0 else ": " + out))
    t, want = {}, {}
    for n, v in read_dir(kimi).items():
        if ".mlp.experts." in n and n.endswith(".weight"):
            want[n] = int4_linear(t, n[:-7], v[1][0], v[1][1])
        else:
            t[n] = v
    os.makedirs(kq)
    write_st(os.path.join(kq, "model.safetensors"), t)
    cfg = json.load(open(os.path.join(kimi, "config.json")))
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "pack-quantized",
                                  "config_groups": {"group_0": {"targets": ["re:.*mlp\\.experts.*"], "weights": {
                                      "num_bits": 4, "type": "int", "strategy": "group", "group_size": 32}}}}
    json.dump(cfg, open(os.path.join(kq, "config.json"), "w"))
    rc, out = run("pack", "-q", "--dequantize", kq, kd)
    check(rc == 0, "kimi_k25 INT4 experts: pack --dequantize (preset auto)" + ("" if rc == 0 else ": " + out))
    got = read_dir(kd) if rc == 0 else {}
    src_p, dst_p = "language_model.model.layers.0.mlp.experts.", "model.language_model.layers.0.mlp.experts."
    gu = b"".join(want[f"{src_p}{e}.gate_proj.weight"] + want[f"{src_p}{e}.up_proj.weight"] for e in range(E))
    g = got.get(dst_p + "gate_up_proj", ("", [], b""))
    check(g[:2] == ("BF16", [E, 2 * I, H]) and bf16_same(g[2], gu),
          "kimi_k25: " + dst_p + "gate_up_proj = reference BF16")
    rc, out = run("verify", "-q", kq, kd)
    check(rc == 0, "kimi_k25: verify SRC DEQUANTIZED" + ("" if rc == 0 else ": " + out))

    # a format moepack does not read, with --dequantize too
    cfgp = os.path.join(tmp, "float-quantized", "config.json")
    cfg = json.load(open(cfgp))
    cfg["quantization_config"]["format"] = "mxfp4-pack-quantized"
    json.dump(cfg, open(cfgp, "w"))
    rc, out = run("pack", "-q", "--dequantize", os.path.join(tmp, "float-quantized"), os.path.join(tmp, "no"))
    check(rc == 1 and "mxfp4-pack-quantized" in out and not os.path.exists(os.path.join(tmp, "no")),
          "mxfp4-pack-quantized refused with --dequantize too, named")
    # INT4 whose weight_shape disagrees with its packed codes (padding): refused when read, nothing written
    src = os.path.join(tmp, "pack-quantized")
    t = read_dir(src)
    n = "model.layers.0.self_attn.q_proj.weight_shape"
    t[n] = ("I64", [2], struct.pack("<qq", H, H - 3))
    write_st(os.path.join(src, "model.safetensors"), t)
    rc, out = run("pack", "-q", "--dequantize", src, os.path.join(tmp, "no"))
    check(rc == 1 and "weight_shape" in out and not os.path.exists(os.path.join(tmp, "no")),
          "INT4 with a weight_shape other than its codes' refused, nothing written")
    # an asymmetric INT4 (a zero point) is not read
    t[n] = ("I64", [2], struct.pack("<qq", H, H))
    t["model.layers.0.self_attn.q_proj.weight_zero_point"] = ("I32", [H // 8, H // 32], bytes(4 * (H // 8) * (H // 32)))
    write_st(os.path.join(src, "model.safetensors"), t)
    rc, out = run("pack", "-q", "--dequantize", src, os.path.join(tmp, "no"))
    check(rc == 1 and "weight_zero_point" in out and not os.path.exists(os.path.join(tmp, "no")),
          "INT4 with a zero point refused, named")


q.main("mpk-ct-", body)
