"""moepack.open (issue 50, items 4 and 5): tensors read as stored (a checkpoint directory, a
lone .safetensors file, .mpkz containers in place) and in the other expert layout computed on the
fly, each compared with the bytes of the files pack / unpack write, read by the small
safetensors reader below (not moepack's); slices against whole tensors; exact float32."""
import itertools
import json
import math
import os
import random
import struct
import sys
import unittest

try:
    import numpy as np
except ImportError:  # meson counts exit 77 as skipped
    print("SKIP: this python3 (%s) has no numpy; configure with -Dpython=/usr/bin/python3 "
          "(Debian's python3-numpy), as scripts/quickstart.sh does" % sys.executable)
    sys.exit(77)

from common import Scratch, moepack


def read_files(path):
    """{name: (dtype, shape, bytes)} and the first shard's __metadata__, straight from the
    safetensors files (the format: u64 header length, JSON header, data)."""
    if os.path.isfile(path):
        files = [path]
    else:
        ix = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(ix):
            with open(ix) as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
        else:
            names = ["model.safetensors"]
        files = [os.path.join(path, n) for n in names]
    out, meta = {}, None
    for fn in files:
        with open(fn, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            data = f.read()
        m = header.pop("__metadata__", {})
        meta = m if meta is None else meta
        for name, t in header.items():
            a, b = t["data_offsets"]
            out[name] = (t["dtype"], t["shape"], data[a:b])
    return out, meta


class Views(Scratch):
    serial = itertools.count()

    def check_equal(self, reader, files, meta=None):
        """Every tensor of reader equals the file's: names, dtype, shape, bytes."""
        want, want_meta = read_files(files)
        self.assertEqual(sorted(reader.keys()), sorted(want))
        for name in reader.keys():
            dtype, shape, data = want[name]
            got = reader.get_tensor(name)
            s = reader.get_slice(name)
            with self.subTest(name=name):
                self.assertEqual(s.get_dtype(), dtype)
                if dtype not in ("F4", "F6_E2M3", "F6_E3M2"):
                    self.assertEqual(list(got.shape), shape)
                self.assertEqual(got.tobytes(), data)
        if meta is not False:
            self.assertEqual(reader.metadata(), want_meta)

    def round_trip(self, arch, **synth):
        """A checkpoint as arch's family publishes it, converted the way its preset goes from
        there (pack, or unpack for a family publishing the packed layout) and back; each view
        against each file."""
        src = self.path(f"{arch}-{next(self.serial)}")
        moepack.synth(src, arch, **dict(dict(experts=4, hidden=32, intermediate=16, layers=2), **synth))
        converted, returned = src + "-converted", src + "-back"
        try:
            moepack.pack(src, converted)
            layout, other, back = "per-expert", "packed", moepack.unpack
        except moepack.Error as e:
            self.assertEqual(e.status, "already-converted")
            moepack.unpack(src, converted)
            layout, other, back = "packed", "per-expert", moepack.pack
        back(converted, returned)
        with moepack.open(src) as f:
            self.check_equal(f, src)
        with moepack.open(src, layout=other) as f:  # computed from src: what conv wrote
            self.assertEqual(f.layout, other)
            self.check_equal(f, converted)
        with moepack.open(converted, layout=layout) as f:  # and back: what back wrote
            self.check_equal(f, returned)
        with moepack.open(src, layout=layout) as f:  # the layout it has: as stored
            self.check_equal(f, src)
        return src, converted

    def test_views_equal_the_written_files(self):
        for arch, kw in (("mixtral", {}), ("qwen3_moe", {"dtype": "F32"}), ("dbrx", {}),
                         ("nemotron_h", {"dtype": "F16"}), ("ernie4_5_vl_moe", {}), ("deepseek_v3", {})):
            with self.subTest(arch=arch):
                self.round_trip(arch, **kw)

    def test_fp8_and_mxfp4_views(self):
        # FP8 weights with their 128x128 scale grids (the grids move with the weights), and
        # gpt-oss's MXFP4 experts dequantized: computed through kernels, in blocks
        src, packed = self.round_trip("deepseek_v3", fp8=True, hidden=256, intermediate=128, experts=2, layers=1)
        self.check_slices(moepack.open(src, layout="packed"), rounds=10)
        self.check_slices(moepack.open(packed, layout="per-expert"), rounds=10)
        src, packed = self.round_trip("gpt_oss", hidden=64, intermediate=64, experts=2, layers=1)
        with moepack.open(src, layout="packed") as f:  # the BF16 experts come out of a kernel
            self.assertEqual(f.get_slice("model.layers.0.mlp.experts.gate_up_proj").get_dtype(), "BF16")
        self.check_slices(moepack.open(src, layout="packed"))

    def test_compressed_and_single_file_sources(self):
        src, packed = self.round_trip("qwen3_moe", shards=1)
        z = self.path("qwen3_moe-z")
        moepack.compress(src, z)
        self.assertTrue(all(n.endswith(".mpkz") for n in os.listdir(z) if "safetensors" in n))
        with moepack.open(z) as f:  # read in place
            self.check_equal(f, src)
        with moepack.open(z, layout="packed") as f:
            self.check_equal(f, packed)
        lone = os.path.join(src, "model.safetensors")
        with moepack.open(lone) as f:
            self.check_equal(f, lone)
            self.assertEqual(f.layout, "per-expert")
        with moepack.open(lone, layout="packed") as f:  # (config.json beside it names the preset)
            self.check_equal(f, packed, meta=False)

    def check_slices(self, f, rounds=40):
        rng = random.Random(5)
        for name in f.keys():
            full = f.get_tensor(name)
            s = f.get_slice(name)
            self.assertEqual(s.shape, list(full.shape))
            for _ in range(rounds if full.ndim else 0):
                key, m, ellipsis = [], rng.randint(1, full.ndim), rng.random() < 0.2
                for n in (full.shape[full.ndim - m:] if ellipsis else full.shape[:m]):
                    r = rng.random()
                    if r < 0.3:
                        key.append(rng.randrange(-n, n))
                    elif r < 0.5:
                        key.append(slice(None))
                    else:
                        a, b = sorted((rng.randrange(n + 1), rng.randrange(n + 1)))
                        key.append(slice(a, b, rng.choice((1, 1, 2, 3))))
                if ellipsis:
                    key = [Ellipsis] + key
                with self.subTest(name=name, key=key):
                    got = s[tuple(key)]
                    want = full[tuple(key)]
                    self.assertEqual((got.dtype, got.shape), (want.dtype, want.shape))
                    self.assertEqual(np.ascontiguousarray(got).tobytes(), np.ascontiguousarray(want).tobytes())
        f.close()

    def test_slices_against_whole_tensors(self):
        src, packed = self.round_trip("mixtral", experts=3, hidden=24, intermediate=8)
        for path, layout in ((src, None), (src, "packed"), (packed, "per-expert")):
            with self.subTest(path=path, layout=layout):
                self.check_slices(moepack.open(path, layout=layout))
        with moepack.open(src, layout="packed") as f:
            s = f.get_slice("model.layers.0.mlp.experts.gate_up_proj")
            for bad in ((0, 0, 0, 0), (3,), (0, slice(None, None, -1)), ([0, 1],), (..., ...)):
                with self.subTest(bad=bad), self.assertRaises((IndexError, TypeError)):
                    s[bad]


class Values(Scratch):
    def test_bf16_and_f8_as_float32_exactly(self):
        src = self.path("fp8")
        moepack.synth(src, "deepseek_v3", fp8=True, hidden=256, intermediate=128, experts=2, layers=1)
        with moepack.open(src) as f:
            bf16 = next(n for n in f.keys() if f.get_slice(n).get_dtype() == "BF16")
            raw = f.get_tensor(bf16)
            self.assertEqual(raw.dtype, np.uint16)
            want = np.array([struct.unpack("<f", struct.pack("<I", int(b) << 16))[0] for b in raw.ravel()],
                            np.float32).reshape(raw.shape)
            np.testing.assert_array_equal(f.get_tensor(bf16, dtype="float32"), want)
            f8 = next(n for n in f.keys() if f.get_slice(n).get_dtype() == "F8_E4M3")
            codes = f.get_tensor(f8)
            self.assertEqual(codes.dtype, np.uint8)
            vals = f.get_tensor(f8, dtype="float32")
            # E4M3 (FN) by hand: 0x38 = 1.0, 0x7E = 448 (the largest), 0x01 = 2^-9, 0x08 = 2^-6,
            # 0xB8 = -1.0, 0x7F NaN
            table = moepack.tensors._fp8_table(4, 7, False)
            self.assertEqual((table[0x38], table[0x7E], table[0x01], table[0x08], table[0xB8]),
                             (1.0, 448.0, 2.0**-9, 2.0**-6, -1.0))
            self.assertTrue(math.isnan(table[0x7F]) and math.isnan(table[0xFF]))
            np.testing.assert_array_equal(vals, table[codes])
            with self.assertRaises(ValueError):
                f.get_tensor(f8, dtype="float16")
            i64 = [n for n in f.keys() if f.get_slice(n).get_dtype() in ("I64", "F64")]
            for n in i64:
                with self.assertRaises(ValueError):
                    f.get_tensor(n, dtype="float32")
        for fmt, cases in (((5, 16, True), {0x80: math.nan, 0x40: 1.0, 0x01: 2.0**-17}),
                           ((4, 8, True), {0x80: math.nan, 0x40: 1.0, 0x7F: 240.0, 0x01: 2.0**-10})):
            t = moepack.tensors._fp8_table(*fmt)
            for code, v in cases.items():
                with self.subTest(fmt=fmt, code=code):
                    self.assertTrue(math.isnan(t[code]) if math.isnan(v) else t[code] == v)

    def test_errors(self):
        with self.assertRaises(ValueError):
            moepack.open(self.src, layout="stacked")
        with self.assertRaises(FileNotFoundError):
            moepack.open(self.path("absent"))
        with self.assertRaises(moepack.NotFound):
            moepack.open(self.path("absent"), layout="packed")
        f = moepack.open(self.src, layout="packed")
        with self.assertRaises(KeyError):
            f.get_tensor("model.layers.0.mlp.experts.0.up_proj.weight")  # not in the packed view
        f.close()
        with self.assertRaises(ValueError):
            f.keys()
        with self.assertRaises(moepack.UsageError):
            moepack.open(self.src, layout="packed", preset="no-such-preset")


if __name__ == "__main__":
    unittest.main()
