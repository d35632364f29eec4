#!/usr/bin/env python3
"""NVFP4 (NVIDIA ModelOpt) checkpoints through moepack: an independent generator writes a
per-expert Qwen3-MoE checkpoint the way ModelOpt exports one (per linear: U8 codes [out, in/2],
the even element in the low nibble; F8_E4M3 weight_scale [out, in/16]; F32 scalars
weight_scale_2 and input_scale; config.json quantization_config + hf_quant_config.json), and
checks against values computed here from the bit formulas:
  - pack: the codes and block scales merged and gate/up concatenated like weights, the global
    and input scales stacked [E, 2] (gate, up) and [E] (down), byte for byte; config kept;
  - unpack of that: every tensor back byte for byte;
  - verify: the pack verifies; one flipped block-scale byte makes it exit 3;
  - pack --dequantize: every NVFP4 linear (experts and attention) becomes BF16 equal to
    bf16(f32(e2m1 * f32(e4m3 * scale_2))) computed here; the scales and input scales are gone,
    config.json has no quantization_config, hf_quant_config.json is not copied; verify passes.
Standard library only. Usage: nvfp4.py MOEPACK"""
import json
import os
import random
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qformats as q  # noqa: E402
from qformats import bf16_bits, check, e2m1, e4m3, f32, read_dir, write_st  # noqa: E402

M = sys.argv[1]
E, H, I, L, V = 4, 64, 32, 2, 48


def run(*args):
    return q.run(M, *args)


def dequant(codes, scales, scale2, rows, cols):
    """BF16 bytes of an NVFP4 matrix rows x cols: ModelOpt's order, s = f32(e4m3 * scale_2),
    value = f32(e2m1 * s), then BF16."""
    out = bytearray()
    for r in range(rows):
        for c in range(cols):
            byte = codes[r * cols // 2 + c // 2]
            nib = byte >> 4 if c % 2 else byte & 15
            s = f32(e4m3(scales[r * cols // 16 + c // 16]) * scale2)
            out += struct.pack("<H", bf16_bits(f32(e2m1(nib) * s)))
    return bytes(out)


# ------------------------------------------------------------------ the generator

rng = random.Random(49)


def rand_bytes(n):
    return bytes(rng.randrange(256) for _ in range(n))


def scale_bytes(n):
    """Positive and negative E4M3 scales, subnormals included, never NaN."""
    return bytes(rng.choice([c for c in range(256) if c & 0x7F != 0x7F]) for _ in range(n))


def bf16_rand(n):
    return b"".join(struct.pack("<H", bf16_bits(rng.uniform(-0.05, 0.05))) for _ in range(n))


def nvfp4_linear(t, name, rows, cols):
    codes, scales = rand_bytes(rows * cols // 2), scale_bytes(rows * cols // 16)
    s2 = f32(rng.uniform(1e-4, 3e-3))
    t[name + ".weight"] = ("U8", [rows, cols // 2], codes)
    t[name + ".weight_scale"] = ("F8_E4M3", [rows, cols // 16], scales)
    t[name + ".weight_scale_2"] = ("F32", [], struct.pack("<f", s2))
    t[name + ".input_scale"] = ("F32", [], struct.pack("<f", f32(rng.uniform(0.01, 0.5))))
    return codes, scales, s2


def make_source(d):
    os.makedirs(d)
    t, ref = {}, {}
    t["model.embed_tokens.weight"] = ("BF16", [V, H], bf16_rand(V * H))
    t["model.norm.weight"] = ("BF16", [H], bf16_rand(H))
    t["lm_head.weight"] = ("BF16", [V, H], bf16_rand(V * H))
    for l in range(L):
        p = f"model.layers.{l}."
        for a in ("q_proj", "k_proj", "v_proj", "o_proj"):
            ref[p + "self_attn." + a] = nvfp4_linear(t, p + "self_attn." + a, H, H) + (H, H)
        t[p + "input_layernorm.weight"] = ("BF16", [H], bf16_rand(H))
        t[p + "post_attention_layernorm.weight"] = ("BF16", [H], bf16_rand(H))
        t[p + "mlp.gate.weight"] = ("BF16", [E, H], bf16_rand(E * H))
        for e in range(E):
            for proj, (o, i) in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
                n = f"{p}mlp.experts.{e}.{proj}"
                ref[n] = nvfp4_linear(t, n, o, i) + (o, i)
    # two shards, experts of layer 1 in the second
    first = {k: v for k, v in t.items() if "layers.1." not in k}
    write_st(os.path.join(d, "model-00001-of-00002.safetensors"), first)
    write_st(os.path.join(d, "model-00002-of-00002.safetensors"), {k: v for k, v in t.items() if k not in first})
    index = {"metadata": {"total_size": sum(len(v[2]) for v in t.values())},
             "weight_map": {k: "model-00001-of-00002.safetensors" if k in first else "model-00002-of-00002.safetensors"
                            for k in t}}
    json.dump(index, open(os.path.join(d, "model.safetensors.index.json"), "w"), indent=2)
    qc = {"config_groups": {"group_0": {"input_activations": {"dynamic": False, "num_bits": 4, "type": "float",
                                                              "group_size": 16},
                                        "weights": {"dynamic": False, "num_bits": 4, "type": "float",
                                                    "group_size": 16}, "targets": ["Linear"]}},
          "ignore": ["lm_head", "model.layers.*.mlp.gate"], "quant_algo": "NVFP4",
          "producer": {"name": "modelopt", "version": "0.39.0"}, "quant_method": "modelopt"}
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H,
           "num_hidden_layers": L, "vocab_size": V, "num_attention_heads": 4, "num_key_value_heads": 4,
           "num_experts": E, "moe_intermediate_size": I, "num_experts_per_tok": 2, "quantization_config": qc}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    hq = {"producer": {"name": "modelopt", "version": "0.39.0"},
          "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                           "exclude_modules": ["lm_head", "model.layers.*.mlp.gate"]}}
    json.dump(hq, open(os.path.join(d, "hf_quant_config.json"), "w"), indent=4)
    return t, ref


# ------------------------------------------------------------------ the checks

def packed_expectation(src):
    """What pack must write for the experts of each layer, from the source tensors."""
    want = {}
    for l in range(L):
        p = f"model.layers.{l}.mlp.experts."
        ex = lambda e, proj, tail: src[f"{p}{e}.{proj}.{tail}"][2]
        want[p + "gate_up_proj"] = ("U8", [E, 2 * I, H // 2],
                                    b"".join(ex(e, "gate_proj", "weight") + ex(e, "up_proj", "weight") for e in range(E)))
        want[p + "gate_up_proj_weight_scale"] = (
            "F8_E4M3", [E, 2 * I, H // 16],
            b"".join(ex(e, "gate_proj", "weight_scale") + ex(e, "up_proj", "weight_scale") for e in range(E)))
        for tail, name in (("weight_scale_2", "weight_scale_2"), ("input_scale", "input_scale")):
            want[p + "gate_up_proj_" + name] = (
                "F32", [E, 2], b"".join(ex(e, "gate_proj", tail) + ex(e, "up_proj", tail) for e in range(E)))
            want[p + "down_proj_" + name] = ("F32", [E], b"".join(ex(e, "down_proj", tail) for e in range(E)))
        want[p + "down_proj"] = ("U8", [E, H, I // 2], b"".join(ex(e, "down_proj", "weight") for e in range(E)))
        want[p + "down_proj_weight_scale"] = ("F8_E4M3", [E, H, I // 16],
                                              b"".join(ex(e, "down_proj", "weight_scale") for e in range(E)))
    return want


def body(tmp):
    src_dir, packed, back, deq = (os.path.join(tmp, n) for n in ("src", "packed", "back", "deq"))
    src, ref = make_source(src_dir)
    # gate and up of an expert keep different global scales (no requantization)
    g2 = src["model.layers.0.mlp.experts.0.gate_proj.weight_scale_2"][2]
    u2 = src["model.layers.0.mlp.experts.0.up_proj.weight_scale_2"][2]
    check(g2 != u2, "the generator gives gate and up different weight_scale_2")

    rc, out = run("pack", "-q", src_dir, packed)
    check(rc == 0, "pack an NVFP4 per-expert checkpoint" + ("" if rc == 0 else ": " + out))
    got = read_dir(packed)
    want = packed_expectation(src)
    for name, w in want.items():
        check(got.get(name) == w, f"packed {name} {w[0]} {w[1]} byte for byte")
    left = [n for n in got if ".experts." in n and n not in want]
    check(not left, "no per-expert tensor or scale left behind: " + ", ".join(left[:3]))
    same_rest = all(got.get(n) == v for n, v in src.items() if ".experts." not in n)
    check(same_rest, "every non-expert tensor (attention NVFP4 with its scales) passes through")
    cfg = json.load(open(os.path.join(packed, "config.json")))
    check(cfg.get("quantization_config", {}).get("quant_algo") == "NVFP4", "config.json keeps quantization_config")
    check(os.path.exists(os.path.join(packed, "hf_quant_config.json")), "hf_quant_config.json copied")

    rc, out = run("verify", "-q", src_dir, packed)
    check(rc == 0, "verify SRC PACKED" + ("" if rc == 0 else ": " + out))

    rc, out = run("unpack", "-q", packed, back)
    check(rc == 0, "unpack" + ("" if rc == 0 else ": " + out))
    got = read_dir(back)
    check(set(got) == set(src), "unpack gives back every tensor name")
    check(all(got.get(n) == v for n, v in src.items()), "unpack gives back every tensor byte for byte")

    # one flipped block-scale byte in the packed checkpoint: verify finds it (exit 3)
    bad = os.path.join(tmp, "bad")
    shutil.copytree(packed, bad)
    name = "model.layers.0.mlp.experts.gate_up_proj_weight_scale"
    q.flip(bad, name, 5, 0x08)
    rc, out = run("verify", "-q", src_dir, bad)
    check(rc == 3 and name in out, "verify exits 3 on a flipped block-scale byte, naming the tensor")

    rc, out = run("pack", "-q", "--dequantize", src_dir, deq)
    check(rc == 0, "pack --dequantize" + ("" if rc == 0 else ": " + out))
    got = read_dir(deq)
    for l in range(L):
        p = f"model.layers.{l}."
        for a in ("q_proj", "k_proj", "v_proj", "o_proj"):
            codes, scales, s2, o, i = ref[p + "self_attn." + a]
            check(got.get(p + "self_attn." + a + ".weight") == ("BF16", [o, i], dequant(codes, scales, s2, o, i)),
                  f"{p}self_attn.{a}.weight dequantized to the reference BF16")
        gu, dn = b"", b""
        for e in range(E):
            for proj in ("gate_proj", "up_proj"):
                codes, scales, s2, o, i = ref[f"{p}mlp.experts.{e}.{proj}"]
                gu += dequant(codes, scales, s2, o, i)
            codes, scales, s2, o, i = ref[f"{p}mlp.experts.{e}.down_proj"]
            dn += dequant(codes, scales, s2, o, i)
        check(got.get(p + "mlp.experts.gate_up_proj") == ("BF16", [E, 2 * I, H], gu),
              f"{p}mlp.experts.gate_up_proj dequantized to the reference BF16")
        check(got.get(p + "mlp.experts.down_proj") == ("BF16", [E, H, I], dn),
              f"{p}mlp.experts.down_proj dequantized to the reference BF16")
    scales = [n for n in got if "scale" in n]
    check(not scales, "no scale tensor left after --dequantize: " + ", ".join(scales[:3]))
    cfg = json.load(open(os.path.join(deq, "config.json")))
    check("quantization_config" not in cfg, "--dequantize drops quantization_config")
    check(not os.path.exists(os.path.join(deq, "hf_quant_config.json")), "--dequantize leaves hf_quant_config.json out")
    rc, out = run("verify", "-q", src_dir, deq)
    check(rc == 0, "verify SRC DEQUANTIZED" + ("" if rc == 0 else ": " + out))

    # a group size other than 16 is not NVFP4 as moepack reads it: refused, naming it
    odd = os.path.join(tmp, "odd")
    shutil.copytree(src_dir, odd)
    hq = json.load(open(os.path.join(odd, "hf_quant_config.json")))
    hq["quantization"]["group_size"] = 32
    json.dump(hq, open(os.path.join(odd, "hf_quant_config.json"), "w"))
    rc, out = run("pack", "-q", odd, os.path.join(tmp, "odd-out"))
    check(rc == 1 and "group_size 32" in out and not os.path.exists(os.path.join(tmp, "odd-out")),
          "group_size 32 is refused (exit 1, nothing written)")

    # ModelOpt's module lists are kept as they are: an entry the conversion would make untrue (one
    # per-expert module, merged with the others; a wildcard matching the per-expert modules only)
    # is refused naming it, in config.json and in hf_quant_config.json
    for fname, edit, key in (
            ("config.json", lambda c: c["quantization_config"]["ignore"].append("model.layers.0.mlp.experts.1.up_proj"),
             "quantization_config.ignore[2]"),
            ("hf_quant_config.json", lambda c: c["quantization"]["exclude_modules"].append("model.layers.*.experts.1.*"),
             "quantization.exclude_modules[2]")):
        d = os.path.join(tmp, "lists-" + fname)
        shutil.copytree(src_dir, d)
        c = json.load(open(os.path.join(d, fname)))
        edit(c)
        json.dump(c, open(os.path.join(d, fname), "w"))
        rc, out = run("pack", "-q", d, os.path.join(tmp, "lists-out"))
        check(rc == 1 and key in out and "experts.1" in out and not os.path.exists(os.path.join(tmp, "lists-out")),
              f"{fname}: a list entry packing would make untrue is refused naming {key}, nothing written: "
              + out.strip()[:160])

    # a quantized weight with no rows: nothing to decode (its view would divide by 0): refused
    zero = os.path.join(tmp, "zero")
    t, _ = make_source(zero)
    n = "model.layers.0.self_attn.q_proj"
    t[n + ".weight"] = ("U8", [0, H // 2], b"")
    t[n + ".weight_scale"] = ("F8_E4M3", [0, H // 16], b"")
    first = {k: v for k, v in t.items() if "layers.1." not in k}
    write_st(os.path.join(zero, "model-00001-of-00002.safetensors"), first)
    ip = os.path.join(zero, "model.safetensors.index.json")
    index = json.load(open(ip))
    index["metadata"]["total_size"] = sum(len(v[2]) for v in t.values())
    json.dump(index, open(ip, "w"))
    rc, out = run("pack", "-q", "--dequantize", zero, os.path.join(tmp, "zero-out"))
    check(rc == 1 and n + ".weight" in out and "dimension of 0" in out and not os.path.exists(os.path.join(tmp, "zero-out")),
          "a quantized weight with 0 rows is refused by --dequantize, naming it, nothing written: " + out.strip()[:160])
q.main("mpk-nvfp4-", body)
