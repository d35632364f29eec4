#!/usr/bin/env python3
"""--quantize nvfp4 and --quantize mxfp4 against a reference written here from the formulas
(numpy), bit for bit, on a Qwen3-MoE checkpoint whose expert weights are crafted to hit every
rounding case:
  - NVFP4 (NVIDIA ModelOpt, NVFP4QTensor in modelopt/torch/quantization/qtensor/nvfp4_tensor.py):
    per fused projection (gate, up; down) a global scale g = f32(amax) / f32(6 * 448); per 16
    values a block scale e4m3_rne(clamp(f32(amax_b / f32(6 * g)), 2^-9, 448)), 1.0 for an all-zero
    block; code = e2m1_rne(f32(x / f32(e4m3 * g))), sign where the quotient is < 0; the packed layout: codes U8 [E, R, C/2] (even element low), _weight_scale F8_E4M3
    [E, R, C/16], _weight_scale_2 F32 [E, 2] (gate, up) / [E];
  - MXFP4 (OCP MX v1.0): X = max(floor(log2(amax_b)) - 2, -127) per 32 values, scale code X + 127
    (F8_E8M0 _scale_inv [E, R, C/32]), code = e2m1_rne(x / 2^X) saturating at 6, sign bit of x.
Cases: ties at each E2M1 boundary (0.25 0.75 1.25 1.75 2.5 3.5 5 times the block's scale),
saturation (a block scale rounded down; amax in [6, 8) x 2^X), zero blocks, E4M3-subnormal
block scales and ones clamped up to 2^-9, BF16 subnormals, negative values and -0, amax exactly a power of
two, random rows; NaN and infinity refused with the tensor named (by pack, and by verify of a
conversion whose SRC got one since, located [expert, row, column]). Then the CLI round trip:
verify exit 0, a flipped scale byte exit 3, unpack + --dequantize to the reference values; NVFP4 diff
by decoded value (bounded error, codes zeroed = A's values, a corrupted global scale, wrong-shaped
scales refused) and per-expert NVFP4 against its --dequantize copy (figures 0).
Usage: quantize_ref.py MOEPACK (exit 77 without numpy)."""
import json
import os
import shutil
import sys

try:
    import numpy as np
except ImportError:
    print("numpy is not installed for " + sys.executable + ": the reference quantizers need it (skipped)")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qformats as q  # noqa: E402
from qformats import check  # noqa: E402

M = sys.argv[1]
E, H, I = 2, 64, 32
F32 = np.float32
BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
TIES = [t for t in BOUNDS] + [6.0, 7.0, 4.0, 0.5]


def run(*args):
    return q.run(M, *args)


def bf16(a):
    """BF16 bits (uint16) of float values, nearest even (the values given are chosen exact)."""
    u = np.atleast_1d(np.asarray(a, dtype=F32)).view(np.uint32).astype(np.uint64)
    return ((u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)).astype(np.uint16)


def f32_of(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(F32)


# ------------------------------------------------------------------ the number formats

E4M3 = np.array([(2.0 ** ((c >> 3) - 7)) * (1 + (c & 7) / 8) if c >> 3 else (c & 7) * 2.0 ** -9
                 for c in range(127)])  # the finite non-negative codes 0..126 (0x7F is NaN)


def e4m3_rne(x):
    """Non-negative F32 values -> E4M3 codes, nearest, ties to the even code, saturating at 448."""
    x = np.asarray(x, dtype=np.float64)
    hi = np.clip(np.searchsorted(E4M3, x, side="left"), 1, 126)
    lo = hi - 1
    dl, dh = x - E4M3[lo], E4M3[hi] - x
    code = np.where(dl < dh, lo, np.where(dh < dl, hi, np.where(lo % 2 == 0, lo, hi)))
    return np.where(x >= 448.0, 126, code).astype(np.uint8)


def e2m1_mag(a):
    """|quotient| -> magnitude code 0..7: boundaries below it, ties to even (>= at the odd ones)."""
    a = np.asarray(a)
    m = np.zeros(a.shape, np.uint8)
    for i, t in enumerate(BOUNDS):
        m += (a >= t) if i % 2 else (a > t)
    return m


def pack_nibbles(codes):
    c = codes.reshape(-1, 2)
    return (c[:, 0] | (c[:, 1] << 4)).astype(np.uint8)


# ------------------------------------------------------------------ the reference quantizers

def nvfp4_ref(w, parts):
    """w: BF16 bits [R, C] of one expert's fused matrix -> (codes, scales, global scales)."""
    codes, scales, gs = [], [], []
    for part in np.split(f32_of(w), parts):
        amax = np.abs(part).max()
        g = F32(amax) / F32(6.0 * 448.0)
        blocks = part.reshape(-1, 16)
        bamax = np.abs(blocks).max(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (bamax / (F32(6.0) * g)).astype(F32)
            sc = np.where(bamax == 0, 0x38, e4m3_rne(np.clip(s, 2.0 ** -9, 448.0))).astype(np.uint8)
            d = (E4M3[sc].astype(F32) * g).astype(F32)
            qt = (blocks / d[:, None]).astype(F32)
        code = e2m1_mag(np.abs(qt)) | np.where(qt < 0, 8, 0).astype(np.uint8)
        codes.append(pack_nibbles(code.astype(np.uint8)))
        scales.append(sc)
        gs.append(g)
    return np.concatenate(codes), np.concatenate(scales), np.array(gs, dtype=F32)


def mxfp4_ref(w):
    x = f32_of(w).reshape(-1, 32).astype(np.float64)
    amax = np.abs(x).max(axis=1)
    _, e = np.frexp(amax)  # amax = m 2^e, m in [0.5, 1): floor(log2 amax) = e - 1
    X = np.where(amax == 0, -127, np.maximum(e - 1 - 2, -127))
    qt = x / np.exp2(X)[:, None]
    code = e2m1_mag(np.abs(qt)) | np.where(np.signbit(x), 8, 0).astype(np.uint8)
    return pack_nibbles(code.astype(np.uint8)), (X + 127).astype(np.uint8)


# ------------------------------------------------------------------ the crafted weights

rng = np.random.default_rng(49)


def crafted(rows, cols, bs, big):
    """rows x cols values (float32, all BF16-exact) in blocks of bs along a row, row by row a case.
    big: one value of the matrix is 2688 (so NVFP4's global scale of this part is exactly 1)."""
    w = np.zeros((rows, cols), F32)
    for r in range(rows):
        kind = r % 10
        for b0 in range(0, cols, bs):
            blk = w[r, b0:b0 + bs]
            j = int(rng.integers(-6, 6))
            if kind == 0:    # ties of every boundary, both signs, under scale 2^j (amax 6 x 2^j)
                v = np.array(TIES * 4)[:bs] * 2.0 ** j
                v[0] = 6 * 2.0 ** j
                blk[:] = v * np.where(np.arange(bs) % 3 == 1, -1, 1)
            elif kind == 1:  # zero block, one -0
                blk[:] = 0
                blk[1] = -0.0
            elif kind == 2:  # NVFP4 block scale rounded down (6.375 / 6 = 1.0625 -> 1): saturation
                blk[:] = rng.uniform(-6, 6, bs)
                blk[0] = 6.375
                blk[1] = -6.25
            elif kind == 3:  # E4M3-subnormal block scales (amax 6 x 2^-8), one clamped up (6 x 2^-11)
                s = 2.0 ** (-8 if b0 % (2 * bs) == 0 else -11)
                blk[:] = np.array(TIES * 4)[:bs] * s
                blk[0] = 6 * s
            elif kind == 4:  # BF16 subnormals (MXFP4 scale code 0) and tiny normals
                blk[:] = f32_of(rng.integers(0, 0x80, bs).astype(np.uint16) | (rng.integers(0, 2, bs) << 15).astype(np.uint16))
                if b0 % (2 * bs):
                    blk[:] *= 2.0 ** 10
            elif kind == 5:  # amax exactly a power of two, or just below the next one
                blk[:] = rng.uniform(-1, 1, bs) * 2.0 ** j
                blk[0] = 2.0 ** (j + 2) if b0 % (2 * bs) == 0 else -f32_of(bf16(2.0 ** (j + 3) * 0.99))[0]
            elif kind == 6:  # MXFP4 saturation: amax 7 x 2^j
                blk[:] = rng.uniform(-7, 7, bs) * 2.0 ** j
                blk[0] = -7 * 2.0 ** j
            else:            # random, both signs, widely spread magnitudes
                blk[:] = rng.standard_normal(bs) * 2.0 ** rng.integers(-20, 4, bs)
    w = f32_of(bf16(w))
    if big:
        w[rows // 2 + 3, 5] = 2688.0
    return w


def make_source(d, bad=None):
    shutil.rmtree(d, ignore_errors=True)
    rc, out = run("synth", "--arch", "qwen3_moe", "--experts", str(E), "--hidden", str(H), "--intermediate", str(I),
                  "--layers", "1", "--shards", "1", d)
    check(rc == 0, "synth" + ("" if rc == 0 else ": " + out))
    t = q.read_dir(d)
    w = {}
    p = "model.layers.0.mlp.experts."
    for e in range(E):
        for proj, (r, c) in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            n = f"{p}{e}.{proj}.weight"
            m = crafted(r, c, 16 if e == 0 else 32, big=(e == 0))
            if e == 1 and proj == "up_proj":  # where ModelOpt's amax_b / (6 g) and the older
                m = np.clip(m, -2, 2)          # (amax_b / 6) / g round to different E4M3 codes
                m[0, 0], m[1, 3] = 7.125, 2.671875
            v = bf16(m)
            if bad and n == bad[0]:
                v.reshape(-1)[bad[1]] = bad[2]
            w[n] = v
            t[n] = ("BF16", [r, c], v.tobytes())
    for fn in os.listdir(d):
        if fn.endswith(".safetensors"):
            q.write_st(os.path.join(d, fn), t)
    return w


# ------------------------------------------------------------------ the checks

def want_packed(w, fmt):
    p = "model.layers.0.mlp.experts."
    out = {}
    for target, projs in (("gate_up_proj", ("gate_proj", "up_proj")), ("down_proj", ("down_proj",))):
        codes, scales, gs = [], [], []
        for e in range(E):
            m = np.concatenate([w[f"{p}{e}.{pr}.weight"] for pr in projs])
            if fmt == "nvfp4":
                c, s, g = nvfp4_ref(m, len(projs))
                gs.append(g)
            else:
                c, s = mxfp4_ref(m)
            codes.append(c)
            scales.append(s)
        R, C = m.shape
        out[p + target] = ("U8", [E, R, C // 2], np.concatenate(codes).tobytes())
        if fmt == "nvfp4":
            out[p + target + "_weight_scale"] = ("F8_E4M3", [E, R, C // 16], np.concatenate(scales).tobytes())
            out[p + target + "_weight_scale_2"] = ("F32", [E, 2] if len(projs) == 2 else [E],
                                                   np.concatenate(gs).tobytes())
        else:
            out[p + target + "_scale_inv"] = ("F8_E8M0", [E, R, C // 32], np.concatenate(scales).tobytes())
    return out


def formula_matters(w):
    """Blocks whose E4M3 scale differs between amax_b / f32(6 g) (ModelOpt today) and the older
    f32(amax_b / 6) / g: the crafted up_proj of expert 1 has one, so the formula is pinned."""
    m = f32_of(w["model.layers.0.mlp.experts.1.up_proj.weight"])
    g = F32(np.abs(m).max()) / F32(6.0 * 448.0)
    b = np.abs(m.reshape(-1, 16)).max(axis=1)
    new = e4m3_rne(np.clip((b / (F32(6.0) * g)).astype(F32), 2.0 ** -9, 448.0))
    old = e4m3_rne(np.clip(((b / F32(6.0)).astype(F32) / g).astype(F32), 2.0 ** -9, 448.0))
    return bool((new != old).any())


def cases_hit(w, got):
    """Which of the cases the quantized bytes show (so a change of the generator cannot empty them)."""
    p = "model.layers.0.mlp.experts."
    sc = np.frombuffer(got[p + "gate_up_proj_weight_scale"][2], np.uint8)
    codes = np.frombuffer(got[p + "gate_up_proj"][2], np.uint8)
    nib = np.stack([codes & 15, codes >> 4], 1).reshape(-1)
    return {"E4M3-subnormal block scale": bool(((sc > 0) & (sc < 8)).any()),
            "block scale clamped up to 2^-9 (code 1)": bool((sc == 1).any()),
            "zero block (scale 1.0)": bool((sc == 0x38).any()),
            "saturated code 7 / 15": bool((nib == 7).any() and (nib == 15).any()),
            "negative zero code 8": bool((nib == 8).any()),
            "a block where the two block-scale formulas differ": formula_matters(w)}


def compare(fmt, src, w, tmp):
    out = os.path.join(tmp, fmt)
    rc, msg = run("pack", "-q", "--quantize", fmt, src, out)
    check(rc == 0, f"pack --quantize {fmt}" + ("" if rc == 0 else ": " + msg))
    got = q.read_dir(out)
    for name, want in want_packed(w, fmt).items():
        g = got.get(name)
        same = g == want
        if not same and g and g[:2] == want[:2]:
            a, b = np.frombuffer(g[2], np.uint8), np.frombuffer(want[2], np.uint8)
            i = int(np.nonzero(a != b)[0][0])
            print(f"  {name}: byte {i} is {a[i]:#04x}, the reference {b[i]:#04x}")
        check(same, f"{fmt}: {name} {want[0]} {want[1]} bit for bit against the reference")
    if fmt == "nvfp4":
        for case, hit in cases_hit(w, got).items():
            check(hit, f"nvfp4: the crafted weights reach the case '{case}'")
        mx = np.frombuffer(want_packed(w, "mxfp4")["model.layers.0.mlp.experts.down_proj_scale_inv"][2], np.uint8)
        check((mx == 0).any() and (mx > 0).any(), "mxfp4: scale code 0 (zero and subnormal blocks) is reached")
    return out


def check_config(out, fmt):
    cfg = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    kept = "model.layers.0.self_attn.q_proj"
    if fmt == "nvfp4":
        check(cfg.get("quant_method") == "modelopt" and cfg.get("quant_algo") == "NVFP4",
              "nvfp4: config.json's quantization_config is modelopt NVFP4")
        check(cfg["config_groups"]["group_0"]["weights"]["group_size"] == 16, "nvfp4: group_size 16")
        check(kept in cfg.get("ignore", []) and not any("experts" in m for m in cfg["ignore"]),
              "nvfp4: ignore names the BF16 linears, not the experts")
        hq = json.load(open(os.path.join(out, "hf_quant_config.json")))["quantization"]
        check(hq.get("quant_algo") == "NVFP4" and hq.get("group_size") == 16 and kept in hq.get("exclude_modules", []),
              "nvfp4: hf_quant_config.json says NVFP4, group_size 16, exclude_modules")
    else:
        check(cfg.get("quant_method") == "mxfp4" and kept in cfg.get("modules_to_not_convert", []),
              "mxfp4: config.json's quantization_config is mxfp4 with modules_to_not_convert")


def dequant_ref(fmt, got, base):
    """BF16 bits of a per-expert linear as moepack's --dequantize computes them."""
    c = np.frombuffer(got[base + ".weight"][2], np.uint8)
    nib = np.stack([c & 15, c >> 4], 1).reshape(-1)
    val = np.array([0, .5, 1, 1.5, 2, 3, 4, 6] * 2, F32) * np.where(np.arange(16) >= 8, -1, 1).astype(F32)
    v = val[nib]
    if fmt == "nvfp4":
        s2 = np.frombuffer(got[base + ".weight_scale_2"][2], F32)[0]
        s = (E4M3[np.frombuffer(got[base + ".weight_scale"][2], np.uint8)].astype(F32) * s2).astype(F32)
        v = (v.reshape(-1, 16) * s[:, None]).astype(F32)
    else:
        e = np.frombuffer(got[base + ".weight_scale_inv"][2], np.uint8).astype(np.float64)
        v = (v.reshape(-1, 32) * np.exp2(e - 127)[:, None]).astype(F32)
    return bf16(v.reshape(-1))


def diff_json(a, b):
    rc, msg = run("diff", "--json", a, b)
    try:
        return json.loads(msg[:msg.rindex("}") + 1]) if rc in (0, 3) else {}
    except ValueError:
        return {}


def figures(d, name):
    return next((t for t in d.get("tensors", []) + d.get("differences", []) if t["name"] == name), {})


def set_bytes(d, name, data):
    """Replaces the bytes of tensor name in checkpoint folder d (the same length)."""
    for fn in os.listdir(d):
        if fn.endswith(".safetensors"):
            p = os.path.join(d, fn)
            b = bytearray(open(p, "rb").read())
            hl = int.from_bytes(b[:8], "little")
            h = json.loads(b[8:8 + hl])
            if name in h:
                a, z = h[name]["data_offsets"]
                assert z - a == len(data)
                b[8 + hl + a:8 + hl + z] = data
                open(p, "wb").write(bytes(b))


def diff_nvfp4(src, out, tmp):
    """diff of a packed BF16 checkpoint against its --quantize nvfp4 twin: the decoded values' error
    per packed tensor, bounded by E2M1's half step at the top of its range (1, between 4 and 6) times
    the block scale (<= amax_b / 6 x (1 + 2^-4), E4M3's rounding; saturation errs by less), plus
    BF16's rounding; a corrupted global scale makes gate_up_proj's figures jump, down_proj's not."""
    pbf = os.path.join(tmp, "nvfp4-packed-bf16")
    rc, msg = run("pack", "-q", src, pbf)
    check(rc == 0, "pack (BF16) for the NVFP4 diff" + ("" if rc == 0 else ": " + msg))
    a = q.read_dir(pbf)
    d = diff_json(pbf, out)
    clean = {}
    for proj in ("gate_up_proj", "down_proj"):
        name = "model.layers.0.mlp.experts." + proj
        t = figures(d, name)
        amax = float(np.abs(f32_of(np.frombuffer(a[name][2], np.uint16))).max())
        bound = amax * (1.0625 / 6 + 2.0 ** -8)
        clean[proj] = t.get("max_abs", -1)
        check(all(k in t for k in ("max_abs", "max_rel", "rmse", "cosine")) and 0 < t["max_abs"] <= bound and
              0 < t["rmse"] < t["max_abs"] and 0.9 < t["cosine"] < 1,
              f"nvfp4: diff --json reports {proj}'s decoded error, 0 < max_abs {t.get('max_abs')} <= {bound:.4g}")
    # the hand formula: down_proj's codes all 0 decode to 0, so its error is A's values themselves
    zero = os.path.join(tmp, "nvfp4-zero")
    shutil.copytree(out, zero)
    name = "model.layers.0.mlp.experts.down_proj"
    set_bytes(zero, name, bytes(len(q.read_dir(out)[name][2])))
    t = figures(diff_json(pbf, zero), name)
    v = f32_of(np.frombuffer(a[name][2], np.uint16)).astype(np.float64)
    check(t.get("max_abs") == np.abs(v).max() and abs(t.get("rmse", 0) - np.sqrt((v * v).mean())) <= 1e-6 * np.abs(v).max(),
          f"nvfp4: codes set to 0: max_abs {t.get('max_abs')} = amax {np.abs(v).max()}, rmse = rms of A")
    # a corrupted global scale (expert 0's gate: exponent +-2) makes the figures jump
    bad = os.path.join(tmp, "nvfp4-bad-g")
    shutil.copytree(out, bad)
    q.flip(bad, "model.layers.0.mlp.experts.gate_up_proj_weight_scale_2", 3, 0x01)
    d2 = diff_json(pbf, bad)
    g2, d2n = figures(d2, "model.layers.0.mlp.experts.gate_up_proj"), figures(d2, "model.layers.0.mlp.experts.down_proj")
    check(g2.get("max_abs", 0) > 4 * clean["gate_up_proj"] and d2n.get("max_abs") == clean["down_proj"],
          f"nvfp4: a corrupted gate global scale makes gate_up_proj's max_abs jump ({clean['gate_up_proj']} -> "
          f"{g2.get('max_abs')}), down_proj's stays {clean['down_proj']}")
    # a global-scale tensor of the wrong shape: refused, naming it (unpack --dequantize, diff)
    for shape, what in (([1, E * 2], "global scales"), ([E * 2], "global scales")):
        wrong = os.path.join(tmp, "nvfp4-wrong-g")
        shutil.rmtree(wrong, ignore_errors=True)
        shutil.copytree(out, wrong)
        reshape(wrong, "model.layers.0.mlp.experts.gate_up_proj_weight_scale_2", shape)
        for cmd in (("unpack", "-q", "--dequantize", wrong, os.path.join(tmp, "nvfp4-wrong-out")), ("diff", pbf, wrong)):
            rc, msg = run(*cmd)
            check(rc == 1 and what in msg and "gate_up_proj_weight_scale_2" in msg,
                  f"nvfp4: {cmd[0]} refuses global scales {shape} (exit 1): {msg.strip()[:160]}")
    wrong = os.path.join(tmp, "nvfp4-wrong-s")
    shutil.copytree(out, wrong)
    n = "model.layers.0.mlp.experts.down_proj_weight_scale"
    sh = q.read_dir(out)[n][1]
    reshape(wrong, n, sh[:-2] + [sh[-2] * 2, sh[-1] // 2])
    rc, msg = run("diff", pbf, wrong)
    check(rc == 1 and "block scales" in msg and n in msg, "nvfp4: diff refuses block scales of the wrong shape: "
          + msg.strip()[:160])


def reshape(d, name, shape):
    """Rewrites tensor name's shape in checkpoint folder d (the same number of elements)."""
    for fn in os.listdir(d):
        if fn.endswith(".safetensors"):
            p = os.path.join(d, fn)
            b = open(p, "rb").read()
            hl = int.from_bytes(b[:8], "little")
            h = json.loads(b[8:8 + hl])
            if name in h:
                h[name]["shape"] = shape
                t = json.dumps(h, separators=(",", ":")).encode()
                t += b" " * (-len(t) % 8)
                open(p, "wb").write(len(t).to_bytes(8, "little") + t + b[8 + hl:])


def round_trip(fmt, src, out, tmp):
    rc, msg = run("verify", "-q", src, out)
    check(rc == 0, f"{fmt}: verify SRC QUANTIZED exits 0" + ("" if rc == 0 else ": " + msg))
    rc, msg = run("diff", src, out)  # diff: the quantization error, SRC against DST's values (as for FP8)
    check(rc == 3 and "experts.0.gate_proj.weight" in msg and "model.norm.weight" in msg,
          f"{fmt}: diff SRC QUANTIZED reports the experts' quantization error (exit 3 at rtol 0)")
    if fmt == "nvfp4":
        diff_nvfp4(src, out, tmp)
    bad = os.path.join(tmp, fmt + "-bad")
    shutil.copytree(out, bad)
    name = "model.layers.0.mlp.experts.gate_up_proj_" + ("weight_scale" if fmt == "nvfp4" else "scale_inv")
    q.flip(bad, name, 3, 0x01)
    rc, msg = run("verify", "-q", src, bad)
    check(rc == 3 and name in msg, f"{fmt}: verify exits 3 on a flipped scale byte, naming {name}")
    back, deq = os.path.join(tmp, fmt + "-back"), os.path.join(tmp, fmt + "-deq")
    rc, msg = run("unpack", "-q", out, back)
    check(rc == 0, f"{fmt}: unpack" + ("" if rc == 0 else ": " + msg))
    per = q.read_dir(back)
    base = "model.layers.0.mlp.experts.1.up_proj"
    check(per.get(base + ".weight", ("",))[0] == "U8", f"{fmt}: unpack gives per-expert U8 codes")
    rc, msg = run("pack", "-q", "--dequantize", back, deq)
    check(rc == 0, f"{fmt}: pack --dequantize of the unpacked checkpoint" + ("" if rc == 0 else ": " + msg))
    got = q.read_dir(deq)
    gu = got.get("model.layers.0.mlp.experts.gate_up_proj")
    want = np.concatenate([dequant_ref(fmt, per, f"model.layers.0.mlp.experts.{e}.{p}")
                           for e in range(E) for p in ("gate_proj", "up_proj")]).tobytes()
    check(gu is not None and gu[2] == want, f"{fmt}: --dequantize gives the reference BF16 values")
    if fmt == "nvfp4":  # per-expert NVFP4 against its --dequantize copy: by value, every figure 0
        d = diff_json(back, deq)
        figs = [t for t in d.get("tensors", []) if ".experts." in t["name"] and "elements" in t]
        check(d.get("identical_in_value") is True and figs and all(t["max_abs"] == 0 and t["cosine"] == 1 for t in figs),
              "nvfp4: diff of per-expert NVFP4 against its --dequantize copy compares by value, figures all 0")
        # unpack --dequantize straight from the packed NVFP4: each per-expert BF16 weight is the
        # reference decoding of what plain unpack gives
        ud = os.path.join(tmp, fmt + "-unpack-deq")
        rc, msg = run("unpack", "-q", "--dequantize", out, ud)
        check(rc == 0, f"{fmt}: unpack --dequantize of the packed checkpoint" + ("" if rc == 0 else ": " + msg))
        got = q.read_dir(ud) if rc == 0 else {}
        names = [f"model.layers.0.mlp.experts.{e}.{p}" for e in range(E) for p in ("gate_proj", "up_proj", "down_proj")]
        check(all(got.get(n + ".weight", ("", None, b""))[0] == "BF16" and got[n + ".weight"][2] ==
                  dequant_ref(fmt, per, n).tobytes() and n + ".weight_scale" not in got for n in names),
              f"{fmt}: unpack --dequantize gives every expert's reference BF16 values, no scales left")


def refusals(tmp):
    for fmt in ("nvfp4", "mxfp4"):
        for val, what in ((0x7FC0, "NaN"), (0xFF80, "infinite")):
            n = "model.layers.0.mlp.experts.1.down_proj.weight"
            d = os.path.join(tmp, "nan")
            make_source(d, bad=(n, 77, val))
            out = os.path.join(tmp, "nan-out")
            rc, msg = run("pack", "-q", "--quantize", fmt, d, out)
            check(rc == 1 and "down_proj" in msg and what in msg and not os.path.exists(out),
                  f"{fmt}: a {what} weight is refused (exit 1) naming the tensor, nothing written: {msg.strip()[:160]}")
            # verify of a conversion whose SRC got the value since: the value located in the output,
            # [expert, row, column] (flat 77 of down_proj [H, I] is row 77 // I)
            make_source(d)
            rc, msg = run("pack", "-q", "--quantize", fmt, d, out)
            check(rc == 0, f"{fmt}: pack --quantize of the finite source" + ("" if rc == 0 else ": " + msg))
            make_source(d, bad=(n, 77, val))
            rc, msg = run("verify", "-q", "--quantize", fmt, d, out)
            where = f"source value [1, {77 // I}, {77 % I}] is {what}"
            check(rc == 1 and "experts.down_proj" in msg and where in msg,
                  f"{fmt}: verify of a SRC with a {what} since: exit 1 naming the tensor and '{where}': {msg.strip()[:200]}")
            shutil.rmtree(out)
    # a rule that joins gate and up along the columns before stacking (concat dim 1 of [I, H],
    # then merge) puts both in every packed row: refused, naming the op, for both formats
    d = os.path.join(tmp, "cols")
    make_source(d)
    spec_path = os.path.join(tmp, "cols-spec.json")
    rc, text = run("presets", "qwen3_moe")
    spec = json.loads(text)
    spec["converters"][0]["ops"] = [{"op": "concat", "dim": 1}, {"op": "merge", "dim": 0}]
    json.dump(spec, open(spec_path, "w"))
    for fmt in ("nvfp4", "mxfp4"):
        out = os.path.join(tmp, "cols-out")
        rc, msg = run("convert", "-q", "--quantize", fmt, d, out, "--spec", spec_path)
        check(rc == 1 and "gate_up_proj" in msg and "concat" in msg and not os.path.exists(out),
              f"{fmt}: gate and up joined along columns are refused naming the op, nothing written: {msg.strip()[:160]}")
    # an already quantized source (DeepSeek-V3 FP8 with 128x128 grids): its experts would pass
    # through under a config.json declaring the new format; refused, by its config.json, and by the
    # tensor when config.json does not declare it
    fp8 = os.path.join(tmp, "fp8-src")
    rc, msg = run("synth", "--arch", "deepseek_v3", "--quant", "fp8", "--hidden", "128", "--intermediate", "128", fp8)
    check(rc == 0, "synth --quant fp8" + ("" if rc == 0 else ": " + msg))
    for fmt in ("nvfp4", "mxfp4", "fp8-block128"):
        out = os.path.join(tmp, "fp8-out")
        rc, msg = run("pack", "-q", "--quantize", fmt, fp8, out)
        check(rc == 1 and "config.json" in msg and "already quantized" in msg and "hint: pack it without --quantize"
              in msg and not os.path.exists(out),
              f"{fmt}: an FP8 source is refused (exit 1) naming its config.json, the hint saying what to do, nothing "
              f"written: {msg.strip()[:160]}")
    cfg = os.path.join(fp8, "config.json")
    with open(cfg) as f:
        c = json.load(f)
    c.pop("quantization_config", None)
    with open(cfg, "w") as f:
        json.dump(c, f)
    out = os.path.join(tmp, "fp8-out")
    rc, msg = run("pack", "-q", "--quantize", "nvfp4", fp8, out)
    check(rc == 1 and "F8_E4M3" in msg and "experts." in msg and not os.path.exists(out),
          f"nvfp4: FP8 experts without a declaration are refused naming the tensor, nothing written: {msg.strip()[:160]}")


def body(tmp):
    src = os.path.join(tmp, "src")
    w = make_source(src)
    for fmt in ("nvfp4", "mxfp4"):
        out = compare(fmt, src, w, tmp)
        check_config(out, fmt)
        round_trip(fmt, src, out, tmp)
    refusals(tmp)
    # a preset whose rule reshapes the experts' rows (DBRX's flattened w1/v1/w2): refused
    dbrx = os.path.join(tmp, "dbrx")
    rc, msg = run("synth", "--arch", "dbrx", dbrx)
    rc, msg = run("pack", "-q", "--quantize", "nvfp4", dbrx, os.path.join(tmp, "dbrx-q"))
    check(rc == 1 and "needs each packed row to be a row of one source linear" in msg,
          "--quantize nvfp4 of a rule that reshapes rows is refused (quant-layout): " + msg.strip()[:120])
    rc, msg = run("pack", "-q", "--quantize", "int4", src, os.path.join(tmp, "x"))
    check(rc == 2 and "nvfp4" in msg, "--quantize int4 is bad usage (exit 2) listing the formats")


q.main("mpk-quantize-ref-", body)
