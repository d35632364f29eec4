"""compressed-tensors experts through the Python package (issue 49, item 2), against numpy: a
per-expert Qwen3-MoE checkpoint written here in each format moepack packs (nvfp4-pack-quantized,
float-quantized per channel, pack-quantized INT4), then
  - moepack.pack: the packed tensors equal numpy's np.stack over experts of gate and up
    concatenated along the rows (codes, block scales), the [1] scalars stacked [E, 2] / [E],
    weight_shape [E, 2, 2] / [E, 2];
  - moepack.unpack of that: every tensor back byte for byte; moepack.verify passes, and reports
    the tensor whose scale byte was flipped;
  - moepack.pack(dequantize=True): BF16 equal to the formulas evaluated here in numpy
    (compressed-tensors' _dequantize order: NVFP4 e2m1 x f32(e4m3 / global_scale), FP8
    e4m3 x scale, INT4 (q - 8) x scale, each product in float32, then BF16 nearest even)."""
import json
import os
import struct
import sys
import unittest

try:
    import numpy as np
except ImportError:  # meson counts exit 77 as skipped
    print("SKIP: this python3 (%s) has no numpy; configure with -Dpython=/usr/bin/python3" % sys.executable)
    sys.exit(77)

from common import Scratch, moepack
from test_tensors import read_files

E, H, I, V = 4, 64, 32, 16
E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def e4m3(codes):
    """F8_E4M3 (fn) codes as float32, from the bit fields (no NaN code is written here)."""
    c = codes.astype(np.int32)
    s, e, m = np.where(c & 0x80, -1.0, 1.0), (c >> 3) & 15, c & 7
    v = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1 + m / 8.0) * 2.0 ** (e - 7.0))
    return (s * v).astype(np.float32)


def bf16(x):
    """float32 -> BF16 bits, round to nearest even."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_float(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


class Linear:
    """One linear in a format: its tensors {suffix: array} and its BF16 value."""

    def __init__(self, rng, fmt, o, i):
        self.t = {}
        if fmt == "nvfp4-pack-quantized":
            codes = rng.integers(0, 256, (o, i // 2), dtype=np.uint8)
            scales = rng.integers(0, 0x7F, (o, i // 16), dtype=np.uint8)  # positive, no NaN
            gs = np.array([rng.uniform(300, 3000)], np.float32)
            self.t.update(weight_packed=codes, weight_scale=scales, weight_global_scale=gs,
                          input_global_scale=np.array([rng.uniform(1, 9)], np.float32))
            nib = np.stack([codes & 15, codes >> 4], axis=-1).reshape(o, i)
            s = e4m3(scales) / gs[0]  # float32 / float32: one rounding
            self.value = bf16(E2M1[nib] * np.repeat(s, 16, axis=1))
        elif fmt == "float-quantized":
            w = rng.integers(0, 0x7F, (o, i), dtype=np.uint8) | rng.integers(0, 2, (o, i), dtype=np.uint8) << 7
            sc = rng.uniform(1e-4, 1e-2, (o, 1)).astype(np.float32)
            self.t.update(weight=w, weight_scale=sc, input_scale=np.array([0.02], np.float32))
            self.value = bf16(e4m3(w) * sc)
        else:
            q = rng.integers(-8, 8, (o, i))
            words = ((q + 8).reshape(o, i // 8, 8).astype(np.uint32) << (4 * np.arange(8, dtype=np.uint32))).sum(-1)
            sc = bf16(rng.uniform(1e-3, 5e-2, (o, i // 32)).astype(np.float32))
            self.t.update(weight_packed=words.astype(np.uint32).view(np.int32), weight_scale=sc,
                          weight_shape=np.array([o, i], np.int64))
            self.value = bf16(q.astype(np.float32) * np.repeat(bf16_float(sc), 32, axis=1))


DT = {np.uint8: "U8", np.float32: "F32", np.int32: "I32", np.int64: "I64", np.uint16: "BF16"}


def st_dtype(name, a):
    if a.dtype == np.uint8 and (name.endswith("weight_scale") or name.endswith(".weight")):
        return "F8_E4M3"
    return DT[a.dtype.type]


def write_st(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        header[name] = {"dtype": st_dtype(name, a), "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def make(d, fmt, seed):
    """The checkpoint in fmt; {linear name: Linear} of its experts."""
    rng = np.random.default_rng(seed)
    os.makedirs(d)
    t = {n: np.zeros(s, np.uint16) for n, s in (("model.embed_tokens.weight", (V, H)), ("lm_head.weight", (V, H)),
                                                ("model.norm.weight", (H,)), ("model.layers.0.mlp.gate.weight", (E, H)))}
    lin = {}
    for e in range(E):
        for proj, (o, i) in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            n = f"model.layers.0.mlp.experts.{e}.{proj}"
            lin[n] = Linear(rng, fmt, o, i)
            t.update({f"{n}.{k}": v for k, v in lin[n].t.items()})
    write_st(os.path.join(d, "model.safetensors"), t)
    qc = {"quant_method": "compressed-tensors", "format": fmt, "config_groups": {
        "group_0": {"targets": ["re:.*mlp\\.experts.*"], "weights": {"num_bits": 4}}}, "ignore": ["lm_head"]}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H,
                   "num_hidden_layers": 1, "vocab_size": V, "num_experts": E, "moe_intermediate_size": I,
                   "quantization_config": qc}, f)
    return lin


def as_array(entry):
    dtype, shape, data = entry
    np_dt = {"U8": np.uint8, "F8_E4M3": np.uint8, "F32": np.float32, "I32": np.int32, "I64": np.int64,
             "BF16": np.uint16}[dtype]
    return np.frombuffer(data, np_dt).reshape(shape)


class CompressedTensors(Scratch):
    def check_format(self, fmt, seed):
        src, packed, back, deq = (self.path(fmt + s) for s in ("", "-packed", "-back", "-deq"))
        lin = make(src, fmt, seed)
        moepack.pack(src, packed)
        got, _ = read_files(packed)
        p = "model.layers.0.mlp.experts."
        for suffix in lin[p + "0.gate_proj"].t:
            tail = "" if suffix == "weight" else "_" + suffix
            per = {pr: [lin[f"{p}{e}.{pr}"].t[suffix] for e in range(E)] for pr in ("gate_proj", "up_proj", "down_proj")}
            if per["gate_proj"][0].shape[0] > 2 or suffix == "weight_shape":  # rows, or the shape vectors
                axis = 0 if suffix != "weight_shape" else None
                gu = [np.concatenate([g, u]) if axis == 0 else np.stack([g, u]) for g, u in
                      zip(per["gate_proj"], per["up_proj"])]
                want_gu, want_d = np.stack(gu), np.stack(per["down_proj"])
            else:  # [1] scalars
                want_gu = np.stack([np.concatenate([g, u]) for g, u in zip(per["gate_proj"], per["up_proj"])])
                want_d = np.concatenate(per["down_proj"])
            with self.subTest(fmt=fmt, suffix=suffix):
                np.testing.assert_array_equal(as_array(got[p + "gate_up_proj" + tail]), want_gu)
                np.testing.assert_array_equal(as_array(got[p + "down_proj" + tail]), want_d)
                self.assertEqual(list(as_array(got[p + "gate_up_proj" + tail]).shape), list(want_gu.shape))
        moepack.unpack(packed, back)
        self.assertEqual(read_files(back)[0], read_files(src)[0])
        self.assertTrue(moepack.verify(src, packed)["identical"])
        self.flipped(src, packed, p + "gate_up_proj_weight_scale")
        moepack.pack(src, deq, dequantize=True)
        d, _ = read_files(deq)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            want = np.stack([lin[f"{p}{e}.{proj}"].value for e in range(E)])
            if proj != "down_proj":
                half = slice(0, I) if proj == "gate_proj" else slice(I, 2 * I)
                have = as_array(d[p + "gate_up_proj"])[:, half]
            else:
                have = as_array(d[p + "down_proj"])
            with self.subTest(fmt=fmt, dequantized=proj):
                np.testing.assert_array_equal(have, want)

    def flipped(self, src, packed, name):
        """One flipped byte of name in a copy of packed: verify names it."""
        bad = packed + "-flipped"
        os.makedirs(bad)
        for fn in os.listdir(packed):
            with open(os.path.join(packed, fn), "rb") as f:
                b = bytearray(f.read())
            if fn.endswith(".safetensors"):
                n = struct.unpack("<Q", b[:8])[0]
                h = json.loads(b[8:8 + n])
                if name in h:
                    b[8 + n + h[name]["data_offsets"][0] + 1] ^= 0x04
            with open(os.path.join(bad, fn), "wb") as f:
                f.write(b)
        rep = moepack.verify(src, bad)
        self.assertFalse(rep["identical"])
        self.assertIn(name, json.dumps(rep))

    def test_nvfp4(self):
        self.check_format("nvfp4-pack-quantized", 1)

    def test_fp8_per_channel(self):
        self.check_format("float-quantized", 2)

    def test_int4(self):
        self.check_format("pack-quantized", 3)


if __name__ == "__main__":
    unittest.main()
