#!/usr/bin/env python3
"""compressed-tensors checkpoints (llm-compressor) through moepack (issue 49, items 2 and 4): an
independent generator writes per-expert Qwen3-MoE checkpoints as compressed-tensors stores them,
and the values are checked against the formulas of compressed-tensors' _dequantize, computed here:
  - nvfp4-pack-quantized: X.weight_packed U8 [out, in/2] (even element in the low nibble),
    X.weight_scale F8_E4M3 [out, in/16], X.weight_global_scale F32 [1] (a reciprocal),
    X.input_global_scale; value = bf16(f32(e2m1 * f32(e4m3 / global_scale)));
  - float-quantized: X.weight F8_E4M3 with X.weight_scale F32 per channel [out, 1] (experts)
    or per tensor [1] (attention), X.input_scale; value = bf16(f32(e4m3 * scale)).
  - pack-quantized INT4 (Kimi K2.5's experts, also on the kimi_k25 preset's names): X.weight_packed
    I32 [out, in/8] (q + 8, eight a little-endian int32), X.weight_scale BF16 per 32,
    X.weight_shape; value = bf16(q * scale).
pack keeps them quantized: every expert tensor is merged over experts with gate and up
concatenated where the weights are (weight_packed / weight, weight_scale, weight_zero_point:
gate_up_proj_<suffix> [E, 2I, ...], down_proj_<suffix> [E, H, ...]); per-tensor scalars
(weight_global_scale, input_global_scale, input_scale, [1] each) stacked [E, 2] (gate, up) and
[E]; weight_shape [E, 2, 2] and [E, 2]; the bytes are computed here. config.json keeps its
quantization_config with module names renamed as the preset renames them (kimi_k25:
language_model.lm_head -> lm_head). unpack gives every file back byte for byte (hashes); verify
passes, and exits 3 on one flipped scale byte.
pack --dequantize writes the experts packed in BF16 (the views are named X.weight) equal to the
reference, every attention linear too, no scale left, quantization_config dropped; verify passes.
Refused, naming the reason, nothing written: a format moepack does not read
(mxfp4-pack-quantized), a targets/ignore entry that cannot stay true (the exact name of one
per-expert module, a pattern matching per-expert modules but not the packed one, a name that
would newly name a module), FP8 128x128 grids concatenated across a block (I % 128 != 0), packed
experts under --dequantize (unpack --dequantize: moepack decodes per-expert linears only), 8-bit
pack-quantized under --dequantize (refused from config.json, before anything is read), INT4
whose weight_shape disagrees with its codes (dequantizing), and INT4 with a zero point
(dequantizing; packing moves the zero points). Usage: ctensors.py MOEPACK"""
import hashlib
import json
import os
import random
import re
import shutil
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


def int4_linear(t, name, o, i, group=32, zero_point=False):
    """pack-quantized INT4, symmetric, grouped: q in [-8, 7] stored as q + 8, eight to a little-endian
    int32 (element 0 in the lowest bits); BF16 scale per group; value = bf16(q * scale)."""
    qs = [rng.randrange(-8, 8) for _ in range(o * i)]
    sc = [bf16_bits(rng.uniform(1e-3, 5e-2)) for _ in range(o * i // group)]
    words = b"".join(struct.pack("<I", sum((qs[k + j] + 8) << (4 * j) for j in range(8))) for k in range(0, o * i, 8))
    t[name + ".weight_packed"] = ("I32", [o, i // 8], words)
    t[name + ".weight_scale"] = ("BF16", [o, i // group], b"".join(struct.pack("<H", x) for x in sc))
    t[name + ".weight_shape"] = ("I64", [2], struct.pack("<qq", o, i))
    if zero_point:  # asymmetric: zero points packed eight to an int32 along the rows
        t[name + ".weight_zero_point"] = ("I32", [o // 8, i // group], bytes(rng.randrange(256) for _ in range(o * i // group // 2)))
    scf = [struct.unpack("<f", struct.pack("<I", x << 16))[0] for x in sc]
    return b"".join(struct.pack("<H", bf16_bits(f32(qs[k] * scf[k // group]))) for k in range(o * i))


def fp8_grid_linear(t, name, o, i):
    """float-quantized with block strategy: F32 weight_scale [ceil(out/128), ceil(in/128)]."""
    t[name + ".weight"] = ("F8_E4M3", [o, i], bytes(rng.randrange(0x7F) for _ in range(o * i)))
    g = [-(-o // 128), -(-i // 128)]
    t[name + ".weight_scale"] = ("F32", g, f32b(0.01) * (g[0] * g[1]))
    return None


def linear(t, name, o, i, fmt, expert):
    if fmt == "nvfp4-pack-quantized":
        return nvfp4_linear(t, name, o, i)
    if fmt == "pack-quantized":
        return int4_linear(t, name, o, i)
    if fmt == "pack-quantized-asym":
        return int4_linear(t, name, o, i, zero_point=True)
    if fmt == "float-quantized-block":
        return fp8_grid_linear(t, name, o, i)
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
             "pack-quantized-asym": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32,
                                     "symmetric": False},
             "float-quantized-block": {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]},
             "float-quantized": {"num_bits": 8, "type": "float", "strategy": "channel"}}[fmt]
    qc = {"quant_method": "compressed-tensors", "format": fmt.replace("-asym", "").replace("-block", ""), "quantization_status": "compressed",
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": wargs}}, "ignore": ["lm_head", "re:.*mlp.gate$"]}
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H, "num_hidden_layers": 1,
           "vocab_size": V, "num_experts": E, "moe_intermediate_size": I, "quantization_config": qc}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    return ref


SUFFIXES = ("weight_packed", "weight", "weight_scale", "weight_zero_point", "weight_global_scale",
            "input_global_scale", "input_scale", "weight_shape")


def packed_expect(t, sp, dp):
    """The packed expert tensors, from the per-expert ones t (names sp + E.proj.suffix) to dp +
    gate_up_proj / down_proj (+ _suffix): rows concatenated gate then up per expert, [1]
    scalars and weight_shape stacked (gate, up) per expert: each is the per-expert bytes in order."""
    want = {}
    for suf in SUFFIXES:
        if f"{sp}0.gate_proj.{suf}" not in t:
            continue
        g, u, d = ([t[f"{sp}{e}.{pr}.{suf}"] for e in range(E)] for pr in ("gate_proj", "up_proj", "down_proj"))
        sh, tail = g[0][1], "" if suf == "weight" else "_" + suf
        if suf == "weight_shape":
            gs, ds = [E, 2, 2], [E, 2]
        elif sh == [1]:
            gs, ds = [E, 2], [E]
        else:
            gs, ds = [E, 2 * sh[0]] + sh[1:], [E] + d[0][1]
        want[dp + "gate_up_proj" + tail] = (g[0][0], gs, b"".join(a[2] + b[2] for a, b in zip(g, u)))
        want[dp + "down_proj" + tail] = (d[0][0], ds, b"".join(x[2] for x in d))
    return want


def hashes(d):
    return {fn: hashlib.sha256(open(os.path.join(d, fn), "rb").read()).hexdigest()
            for fn in sorted(os.listdir(d)) if fn.endswith(".safetensors") or fn == "config.json"}


def pack_round_trip(tmp, src, what, sp, dp, flips, cfg_check=None):
    """pack src with its scales: the expert tensors as packed_expect says, the rest as it was;
    unpack: every file back byte for byte; verify passes and exits 3 on each flipped byte."""
    pk, un = os.path.join(tmp, what + "-packed"), os.path.join(tmp, what + "-unpacked")
    rc, out = run("pack", "-q", src, pk)
    check(rc == 0, f"{what}: pack with the scales" + ("" if rc == 0 else ": " + out))
    if rc:
        return
    t, got, want = read_dir(src), read_dir(pk), packed_expect(read_dir(src), sp, dp)
    bad = [n for n in want if got.get(n) != want[n]]
    check(want and not bad, f"{what}: {len(want)} packed expert tensors byte for byte" + (": " + bad[0] if bad else ""))
    rest = {n: v for n, v in got.items() if n not in want}
    left = [n for n in rest if re.search(r"\.experts\.\d+\.", n)]
    same = sp != dp or rest == {n: v for n, v in t.items() if not n.startswith(sp)}  # kimi_k25 renames the rest
    check(not left and same, f"{what}: no per-expert tensor left, the others passed through" + (": " + left[0] if left else ""))
    if cfg_check:
        cfg_check(json.load(open(os.path.join(pk, "config.json"))))
    rc, out = run("unpack", "-q", pk, un)
    check(rc == 0 and hashes(un) == hashes(src), f"{what}: unpack gives every file back byte for byte (sha256)" +
          ("" if rc == 0 else ": " + out))
    rc, out = run("verify", "-q", src, pk)
    check(rc == 0, f"{what}: verify SRC PACKED" + ("" if rc == 0 else ": " + out))
    for name, at in flips:
        bad_dir = os.path.join(tmp, what + "-flipped")
        shutil.rmtree(bad_dir, ignore_errors=True)
        shutil.copytree(pk, bad_dir)
        q.flip(bad_dir, dp + name, at, 0x08)
        rc, out = run("verify", "-q", src, bad_dir)
        check(rc == 3 and dp + name in out, f"{what}: verify exits 3 on a flipped byte of {name}, naming it")


def refused(tmp, src, what, *words, args=(), cmd="pack"):
    """cmd (pack) src (args) exits 1, the message naming every word, nothing written."""
    no = os.path.join(tmp, "no")
    rc, out = run(cmd, "-q", *args, src, no)
    check(rc == 1 and all(w in out for w in words) and not os.path.exists(no),
          f"{what}: refused naming {', '.join(words)}, nothing written" + ("" if rc == 1 else f": rc {rc}"))


def edit_config(src, dst, edit):
    """dst: a copy of checkpoint src with config.json's quantization_config edited by edit(qc)."""
    shutil.copytree(src, dst)
    cfg = json.load(open(os.path.join(dst, "config.json")))
    edit(cfg["quantization_config"])
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    return dst


def refusals(tmp, kimi):
    """What packing cannot keep true, refused naming it; asymmetric INT4 packs (zero points moved)."""
    src = os.path.join(tmp, "nvfp4-pack-quantized")
    d = edit_config(src, os.path.join(tmp, "ct-one-expert"), lambda qc: qc["config_groups"]["group_0"]["targets"].append(
        "model.layers.0.mlp.experts.1.up_proj"))
    refused(tmp, d, "a target naming one per-expert module", "quantization_config.config_groups.group_0.targets[1]",
            "model.layers.0.mlp.experts.1.up_proj")
    d = edit_config(src, os.path.join(tmp, "ct-rx"), lambda qc: qc["config_groups"]["group_0"].update(
        targets=["re:.*experts\\.\\d+\\..*"]))
    refused(tmp, d, "a pattern matching per-expert modules only", "quantization_config.config_groups.group_0.targets[0]",
            "model.layers.0.mlp.experts")
    d = edit_config(kimi, os.path.join(tmp, "ct-newly"), lambda qc: qc.update(ignore=["lm_head"]))
    refused(tmp, d, "kimi_k25: an ignore entry that would newly name lm_head", "quantization_config.ignore[0]", "lm_head")
    d = edit_config(src, os.path.join(tmp, "ct-sparse"), lambda qc: qc.update(sparsity_config={
        "format": "dense", "targets": ["model.layers.0.mlp.experts.1.up_proj"], "ignore": []}))
    refused(tmp, d, "a sparsity_config target naming one per-expert module",
            "quantization_config.sparsity_config.targets[0]", "model.layers.0.mlp.experts.1.up_proj")
    d = edit_config(src, os.path.join(tmp, "ct-transform"), lambda qc: qc.update(transform_config={
        "config_groups": {"u": {"type": "hadamard", "apply": [{"targets": ["Linear"], "location": "weight_input"}]}}}))
    refused(tmp, d, "a transform_config (its module lists are not rewritten)", "quantization_config.transform_config")
    for fmt, what in (("nvfp4-pack-quantized", "weight_packed"), ("float-quantized", "_proj")):
        refused(tmp, os.path.join(tmp, fmt + "-packed"), f"{fmt}: unpack --dequantize of packed experts",
                "model.layers.0.mlp.experts.", what, "does not decode", args=("--dequantize",), cmd="unpack")
    d = os.path.join(tmp, "float-quantized-block")
    make(d, "float-quantized-block")
    refused(tmp, d, "FP8 128x128 grids with I % 128 != 0", "weight_scale", "--dequantize")
    d = os.path.join(tmp, "pack-quantized-asym")
    make(d, "pack-quantized-asym")
    ep = "model.layers.0.mlp.experts."
    pack_round_trip(tmp, d, "pack-quantized-asym", ep, ep, [("gate_up_proj_weight_zero_point", 3)])


def body(tmp):
    for fmt in ("nvfp4-pack-quantized", "float-quantized", "pack-quantized"):
        src, deq = os.path.join(tmp, fmt), os.path.join(tmp, fmt + "-deq")
        ref = make(src, fmt)
        ep = "model.layers.0.mlp.experts."
        flips = [("gate_up_proj_weight_scale", 5), ("down_proj_weight_scale", 2)]
        if fmt == "nvfp4-pack-quantized":
            flips.append(("gate_up_proj_weight_global_scale", 6))
        src_qc = json.load(open(os.path.join(src, "config.json")))["quantization_config"]
        pack_round_trip(tmp, src, fmt, ep, ep, flips, lambda c: check(
            c["quantization_config"] == src_qc, f"{fmt}: quantization_config kept as it was (no module renamed)"))
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
    cfg["quantization_config"]["ignore"] = ["language_model.lm_head", "re:.*self_attn.*", "re:.*vision_tower.*"]
    json.dump(cfg, open(os.path.join(kq, "config.json"), "w"))
    kimi_want = ["lm_head", "re:.*self_attn.*", "re:.*vision_tower.*"]
    pack_round_trip(tmp, kq, "kimi_k25", "language_model.model.layers.0.mlp.experts.",
                    "model.language_model.layers.0.mlp.experts.", [("gate_up_proj_weight_scale", 5)],
                    lambda c: check(c["quantization_config"]["ignore"] == kimi_want and
                                    c["quantization_config"]["config_groups"] == cfg["quantization_config"]["config_groups"],
                                    "kimi_k25: ignore's language_model.lm_head renamed lm_head, the rest kept"))
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

    refusals(tmp, kq)

    # a format moepack does not read, with --dequantize too
    cfgp = os.path.join(tmp, "float-quantized", "config.json")
    cfg = json.load(open(cfgp))
    cfg["quantization_config"]["format"] = "mxfp4-pack-quantized"
    json.dump(cfg, open(cfgp, "w"))
    refused(tmp, os.path.join(tmp, "float-quantized"), "mxfp4-pack-quantized packed", "mxfp4-pack-quantized")
    refused(tmp, os.path.join(tmp, "float-quantized"), "mxfp4-pack-quantized dequantized", "mxfp4-pack-quantized",
            args=("--dequantize",))
    # pack-quantized declaring 8-bit weights: --dequantize (which reads INT4 codes) refused before anything
    # is read, naming the key; without it the tensors move as they are
    def int8(qc):
        qc["config_groups"]["group_0"]["weights"]["num_bits"] = 8
    d8 = edit_config(os.path.join(tmp, "pack-quantized"), os.path.join(tmp, "pack-quantized-int8"), int8)
    refused(tmp, d8, "pack-quantized num_bits 8 dequantized",
            "quantization_config.config_groups.group_0.weights.num_bits is 8", "INT4", args=("--dequantize",))
    rc, out = run("pack", "--json", "--dequantize", d8, os.path.join(tmp, "no"))
    doc = json.loads(out[:out.index("\n}") + 2]) if rc == 1 and "\n}" in out else {}
    check(doc.get("field") == "quant" and "hint:" not in out,
          "pack-quantized num_bits 8 dequantized: the way out is the quantization field (leaving out --dequantize, "
          "which the message says: no hint repeats it)")
    rc, out = run("pack", "-q", d8, os.path.join(tmp, "int8-packed"))
    check(rc == 0, "pack-quantized num_bits 8: packed as it is" + ("" if rc == 0 else ": " + out))
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
