"""The Python binding against the built shared library ($MOEPACK_LIB): python3 test_moepack.py"""
import hashlib
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moepack  # noqa: E402


class Binding(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="mpk-py-")
        cls.src = os.path.join(cls.root, "src")
        moepack.synth(cls.src, "qwen3_moe", experts=4, hidden=32, intermediate=16, layers=2)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root)

    def path(self, name):
        return os.path.join(self.root, name)

    def test_round_trip(self):
        seen = []
        rep = moepack.pack(self.src, self.path("packed"), progress=lambda d, t, s: seen.append((d, t)))
        self.assertEqual(rep["direction"], "pack")
        self.assertEqual(rep["preset"], "qwen3_moe")
        self.assertEqual(rep["targets_built"], 2 * 2)  # gate_up_proj and down_proj per layer
        self.assertTrue(seen and seen[-1][0] == seen[-1][1] == rep["bytes"])
        self.assertEqual(moepack.inspect(self.path("packed"))["expert_layout"], "packed")
        moepack.unpack(self.path("packed"), self.path("back"))
        self.assertTrue(moepack.verify(self.src, self.path("packed"))["identical"])
        self.assertTrue(moepack.verify(self.path("packed"))["identical"])  # its manifest
        a, b = moepack.hash_file(self.src), moepack.hash_file(self.path("back"))
        self.assertEqual(a["digest"], b["digest"])
        self.assertEqual(len(a["tensors"]), moepack.inspect(self.src)["tensor_count"])

    def test_hint_names_the_keyword(self):
        """The library says which request field a refusal is about; the binding words the hint with
        its keyword (force=True), never the command line's option (--force)."""
        dst = self.path("twice")
        moepack.pack(self.src, dst)
        with self.assertRaises(moepack.Error) as cm:
            moepack.pack(self.src, dst)
        e = cm.exception
        self.assertEqual((e.status, e.field), ("destination-exists", "force"))
        self.assertEqual(e.hint, "pass force=True to replace it")
        self.assertIn("force=True", str(e))
        self.assertNotIn("--", str(e))
        moepack.pack(self.src, dst, force=True)  # the way the hint names
        with self.assertRaises(moepack.Error) as cm:  # the same for compress
            moepack.compress(dst, dst + "-z")
            moepack.compress(dst, dst + "-z")
        self.assertIn("force=True", str(cm.exception))
        with self.assertRaises(moepack.Error) as cm:  # a request field of another kind
            moepack.pack(self.src, self.path("small"), mem=1000)
        self.assertEqual((cm.exception.status, cm.exception.field), ("usage", "mem"))
        with self.assertRaises(moepack.Error) as cm:  # no field: no hint
            moepack.inspect(self.path("absent"))
        self.assertEqual((cm.exception.field, cm.exception.hint), (None, None))

    def test_errors_carry_status_and_message(self):
        with self.assertRaises(moepack.Error) as cm:
            moepack.pack(self.src, self.src + "/inside")
        self.assertEqual(cm.exception.status, "overlap")
        self.assertIn("inside", cm.exception.message)
        with self.assertRaises(moepack.Error) as cm:
            moepack.pack(self.src, self.path("x"), preset="no-such-preset")
        self.assertEqual(cm.exception.status, "preset")
        with self.assertRaises(moepack.Error) as cm:
            moepack.inspect(self.path("absent"))
        self.assertEqual(cm.exception.status, "not-found")
        self.assertFalse(os.path.exists(self.path("x")))
        # force replaces a checkpoint, never a folder of other things
        mine = self.path("mine")
        os.makedirs(os.path.join(mine, "photos"))
        with open(os.path.join(mine, "photos", "a.jpg"), "w") as f:
            f.write("x")
        with self.assertRaises(moepack.Error) as cm:
            moepack.pack(self.src, mine, force=True)
        self.assertEqual(cm.exception.status, "destination-not-checkpoint")
        self.assertEqual(cm.exception.field, "dst")
        self.assertEqual(os.listdir(mine), ["photos"])
        shutil.rmtree(mine)

    def test_arguments_checked_before_c(self):
        """Every path argument as the os functions take it: str, bytes or os.PathLike; TypeError
        for another type (None included), ValueError for an embedded NUL; ints, names and
        callbacks checked too, nothing passed on to the library (issue 45, item 11: synth(None)
        crashed the interpreter, pack(src, 'out\\0/x') wrote 'out', inspect(None) said
        'io: Bad address')."""
        import pathlib
        before = sorted(os.listdir(self.root))
        out = self.path("out")
        calls = {  # name -> a call with the bad value as its path argument(s)
            "pack dst": lambda v: moepack.pack(self.src, v),
            "pack src": lambda v: moepack.pack(v, out),
            "unpack dst": lambda v: moepack.unpack(self.src, v),
            "convert dst": lambda v: moepack.convert(self.src, v),
            "convert spec file": lambda v: moepack.convert(self.src, out, v),
            "pack layout_like": lambda v: moepack.unpack(self.src, out, layout_like=v),
            "compress dst": lambda v: moepack.compress(self.src, v),
            "compress src": lambda v: moepack.compress(v, out),
            "decompress dst": lambda v: moepack.decompress(self.src, v),
            "inspect": lambda v: moepack.inspect(v),
            "hash": lambda v: moepack.hash_file(v),
            "hash write": lambda v: moepack.hash_file(v, write=True),
            "verify one": lambda v: moepack.verify(v),
            "verify src": lambda v: moepack.verify(v, self.src),
            "verify dst": lambda v: moepack.verify(self.src, v),
            "verify spec": lambda v: moepack.verify(self.src, self.src, v),
            "diff a": lambda v: moepack.diff(v, self.src),
            "diff b": lambda v: moepack.diff(self.src, v),
            "synth": lambda v: moepack.synth(v),
        }
        for what, call in calls.items():
            optional = what in ("convert spec file", "pack layout_like", "verify spec", "verify dst")  # None: a default
            for bad in ([] if optional else [None]) + [42, 1.5, ["a"], object()]:
                with self.subTest(what=what, value=bad), self.assertRaises(TypeError):
                    call(bad)
            for bad in (out + "\0/x", os.fsencode(out) + b"\0/x", pathlib.Path(out + "\0/x")):
                with self.subTest(what=what, value=bad), self.assertRaises(ValueError):
                    call(bad)
        self.assertEqual(sorted(os.listdir(self.root)), before)  # 'out' not written
        # what the os module says for the same values
        with self.assertRaises(TypeError):
            os.stat(None)
        with self.assertRaises(ValueError):
            os.stat(out + "\0/x")
        # the three forms of a good path
        self.assertEqual(moepack.inspect(pathlib.Path(self.src))["tensor_count"],
                         moepack.inspect(os.fsencode(self.src))["tensor_count"])
        moepack.synth(pathlib.Path(self.path("synth-pathlike")), experts=2, layers=1)
        self.assertTrue(moepack.verify(pathlib.Path(self.path("synth-pathlike")), self.path("synth-pathlike"))["identical"])
        shutil.rmtree(self.path("synth-pathlike"))
        # ints: TypeError for another type, OverflowError past the C field (no silent wrap:
        # threads 2**32 + 1 was 1)
        for kw in ({"threads": 2**32 + 1}, {"mem": -1}, {"max_shard_size": 2**64}, {"level": 2**31}):
            with self.subTest(kw=kw), self.assertRaises(OverflowError):
                moepack.pack(self.src, out, **kw)
        for kw in ({"threads": "2"}, {"threads": 2.0}, {"mem": None}, {"threads": True}, {"io": 1},
                   {"quantize": 8}, {"progress": 5}, {"warn": "w"}):
            with self.subTest(kw=kw), self.assertRaises(TypeError):
                moepack.pack(self.src, out, **kw)
        for kw in ({"io": "mmap"}, {"quantize": "int4"}, {"io": "auto\0"}):
            with self.subTest(kw=kw), self.assertRaises(ValueError):
                moepack.pack(self.src, out, **kw)
        for kw in ({"level": None}, {"chunk_size": [4]}, {"chunk_size": None}):
            with self.subTest(kw=kw), self.assertRaises(TypeError):
                moepack.compress(self.src, out, **kw)
        for kw in ({"chunk_size": "4 parsecs"}, {"chunk_size": "4mib"}, {"chunk_size": "M"}):
            with self.subTest(kw=kw), self.assertRaises(ValueError):
                moepack.compress(self.src, out, **kw)
        with self.assertRaises(OverflowError):
            moepack.compress(self.src, out, chunk_size=-8)
        for kw in ({"layers": None}, {"experts": "4"}, {"arch": None}, {"arch": 3}, {"dtype": None},
                   {"seed": 1.0}):
            with self.subTest(kw=kw), self.assertRaises(TypeError):
                moepack.synth(out, **kw)
        for kw in ({"dtype": "F8"}, {"arch": "mixtral\0x"}):
            with self.subTest(kw=kw), self.assertRaises(ValueError):
                moepack.synth(out, **kw)
        for kw in ({"hidden": 2**31}, {"seed": -1}, {"seed": 2**64 - 1}):
            with self.subTest(kw=kw), self.assertRaises(OverflowError):
                moepack.synth(out, **kw)
        for kw in ({"atol": None}, {"atol": "0"}, {"rtol": "1e-3"}, {"quantize": 1}):
            with self.subTest(kw=kw), self.assertRaises(TypeError):
                moepack.verify(self.src, self.src, **kw)
        self.assertEqual(sorted(os.listdir(self.root)), before)

    def test_library_is_not_armed_by_the_environment(self):
        # the failure hooks are armed by the moepack program's explicit call only: a program
        # over the library is never affected by MOEPACK_FAULT in its environment
        import subprocess
        import sys
        code = ("import moepack, sys; moepack.synth(sys.argv[1], layers=1); moepack.pack(sys.argv[1], sys.argv[2]); "
                "print('ok')")
        env = dict(os.environ, MOEPACK_FAULT="1:ENOSPC", PYTHONPATH=os.path.dirname(os.path.dirname(
            os.path.abspath(moepack.__file__))))
        r = subprocess.run([sys.executable, "-c", code, self.path("env-src"), self.path("env-pk")], env=env,
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "ok")

    def test_hub_cache(self):
        # huggingface_hub's layout: blobs named by sha256, a snapshot of relative links, refs/main
        import hashlib
        cache = self.path("hub-cache")
        repo = os.path.join(cache, "models--acme--py-moe")
        rev = "f" * 40
        snap = os.path.join(repo, "snapshots", rev)
        os.makedirs(os.path.join(repo, "blobs"))
        os.makedirs(snap)
        os.makedirs(os.path.join(repo, "refs"))
        for name in os.listdir(self.src):
            data = open(os.path.join(self.src, name), "rb").read()
            blob = hashlib.sha256(data).hexdigest()
            open(os.path.join(repo, "blobs", blob), "wb").write(data)
            os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snap, name))
        open(os.path.join(repo, "refs", "main"), "w").write(rev)
        old = os.environ.get("HF_HUB_CACHE")
        os.environ["HF_HUB_CACHE"] = cache
        try:
            self.assertEqual(moepack.resolve("acme/py-moe"), snap)
            self.assertEqual(moepack.resolve(repo, revision=rev), snap)
            self.assertEqual(moepack.resolve(self.src), self.src)
            out = self.path("hub-packed")
            moepack.pack("acme/py-moe", out)
            self.assertTrue(moepack.verify(self.src, out)["identical"])
            self.assertFalse(any(os.path.islink(os.path.join(out, f)) for f in os.listdir(out)))
            with self.assertRaises(moepack.Error) as e:
                moepack.resolve("acme/absent-moe")
            self.assertEqual(e.exception.status, "not-found")
            self.assertIn("huggingface-cli download acme/absent-moe", e.exception.message)
            with self.assertRaises(moepack.Error) as e:
                moepack.resolve(self.src, revision="main")
            self.assertEqual(e.exception.status, "usage")
            with self.assertRaises(TypeError):
                moepack.resolve(None)
        finally:
            if old is None:
                del os.environ["HF_HUB_CACHE"]
            else:
                os.environ["HF_HUB_CACHE"] = old

    def test_quantize_4bit(self):
        out = self.path("q-nvfp4")
        moepack.pack(self.src, out, quantize="nvfp4")
        self.assertTrue(moepack.verify(self.src, out, quantize="nvfp4")["identical"])
        self.assertTrue(moepack.verify(self.src, out)["identical"])  # the quantization found out
        with open(os.path.join(out, "config.json")) as f:
            self.assertEqual(json.load(f)["quantization_config"]["quant_method"], "modelopt")
        # diff: B's NVFP4 experts decoded against A's values, figures per tensor (issue 49)
        packed = self.path("q-nvfp4-bf16")
        moepack.pack(self.src, packed)
        rep = moepack.diff(packed, out)
        figs = {t["name"].rsplit(".", 1)[-1]: t for t in rep["tensors"] + rep["differences"]
                if ".mlp.experts." in t["name"]}
        for proj in ("gate_up_proj", "down_proj"):
            self.assertGreater(figs[proj]["max_abs"], 0)
            self.assertGreater(figs[proj]["rmse"], 0)
            self.assertTrue(0.9 < figs[proj]["cosine"] < 1)
        # MXFP4 blocks are 32 values: down_proj's rows (intermediate 16) are not whole blocks
        with self.assertRaises(moepack.Error) as cm:
            moepack.pack(self.src, self.path("q-mxfp4"), quantize="mxfp4")
        self.assertEqual(cm.exception.status, "quant-layout")
        self.assertIn("32-value blocks", str(cm.exception))

    def test_diff_sees_a_changed_value(self):
        copy = self.path("copy")
        shutil.copytree(self.src, copy)
        self.assertTrue(moepack.diff(self.src, copy)["identical"])
        shard = sorted(f for f in os.listdir(copy) if f.endswith(".safetensors"))[0]
        with open(os.path.join(copy, shard), "r+b") as f:
            f.seek(-2, os.SEEK_END)
            f.write(b"\x7f\x7f")
        rep = moepack.verify(self.src, copy)
        self.assertFalse(rep["identical"])
        self.assertEqual([d["kind"] for d in rep["differences"]], ["content"])

    def test_presets_and_version(self):
        names = {p["name"]: p for p in moepack.presets()}
        self.assertIn("qwen3_moe", names["qwen3_moe"]["model_types"])
        self.assertGreaterEqual(len(names), 13)
        self.assertRegex(moepack.version(), r"^\d+\.\d+\.\d+$")
        self.assertIn("io_uring=", moepack.features())


def read_st(path):
    """{name: (dtype, shape, bytes)} of a safetensors file, and its __metadata__."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", None)
    data = blob[8 + n:]
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}, meta


def synth_packed(root, arch, E, H, I):
    """A one-layer, one-shard synth checkpoint of arch under root and its pack: (source dir,
    packed dir, source tensors, packed tensors) as read_st gives them."""
    src, packed = os.path.join(root, "src"), os.path.join(root, "packed")
    moepack.synth(src, arch, experts=E, hidden=H, intermediate=I, layers=1, shards=1)
    moepack.pack(src, packed)
    return (src, packed, read_st(os.path.join(src, "model.safetensors"))[0],
            read_st(os.path.join(packed, "model.safetensors"))[0])


def write_foreign(path, tensors, rng):
    """Another writer's file: tensors in a shuffled data order, header keys in yet another order,
    __metadata__ last, ", " separators, odd space padding."""
    names = list(tensors)
    rng.shuffle(names)
    entries, data, off = {}, b"", 0
    for name in names:
        dt, shape, b = tensors[name]
        entries[name] = {"shape": shape, "dtype": dt, "data_offsets": [off, off + len(b)]}
        data += b
        off += len(b)
    keys = list(entries)
    rng.shuffle(keys)
    doc = {k: entries[k] for k in keys}
    doc["__metadata__"] = {"format": "pt", "writer": "not-moepack"}
    text = json.dumps(doc, separators=(", ", ": ")).encode() + b"   "
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Sharing(unittest.TestCase):
    """unpack gives a release written by another tool back byte for byte (issue 15)."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="mpk-share-")
        synth = os.path.join(cls.root, "synth")
        moepack.synth(synth, "mixtral", experts=4, hidden=32, intermediate=16, layers=2, shards=1)
        cls.tensors, _ = read_st(os.path.join(synth, "model.safetensors"))
        cls.config = os.path.join(synth, "config.json")
        # a release with 0-based, 6-digit shard names (as Kimi-K2's), tensors spread in any order
        cls.rel = cls.make_release("release", [f"model-{i:06d}-of-000003.safetensors" for i in range(3)], {})

    @classmethod
    def make_release(cls, name, files, real_map, seed=7):
        """The synth tensors as a release of the given files: a tensor the real weight map names
        goes to its file there when that is one of files, the others round robin, shuffled."""
        rel = os.path.join(cls.root, name)
        os.mkdir(rel)
        rng = random.Random(seed)
        names = sorted(cls.tensors)
        rng.shuffle(names)
        weight_map = {n: real_map[n] if real_map.get(n) in files else files[k % len(files)]
                      for k, n in enumerate(names)}
        for f in files:
            write_foreign(os.path.join(rel, f), {n: cls.tensors[n] for n in names if weight_map[n] == f}, rng)
        total = sum(len(b) for _, _, b in cls.tensors.values())
        with open(os.path.join(rel, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=4)
            f.write("\n\n")
        shutil.copy(cls.config, rel)
        return rel

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root)

    def path(self, name):
        return os.path.join(self.root, name)

    def release_files(self, d):
        return sorted(f for f in os.listdir(d) if f.endswith(".safetensors") or f.endswith(".json"))

    def test_unpack_gives_the_release_back_byte_for_byte(self):
        moepack.pack(self.rel, self.path("packed"), max_shard_size=20_000)
        self.assertTrue(os.path.exists(os.path.join(self.path("packed"), "moepack.source.zst")))
        self.assertTrue(moepack.verify(self.rel, self.path("packed"))["identical"])
        moepack.unpack(self.path("packed"), self.path("back"))
        want = self.release_files(self.rel)
        self.assertEqual([f for f in self.release_files(self.path("back")) if f != "moepack.manifest.json"], want)
        for f in want:
            self.assertEqual(sha(os.path.join(self.path("back"), f)), sha(os.path.join(self.rel, f)), f)
        self.assertFalse(os.path.exists(os.path.join(self.path("back"), "moepack.source.zst")))
        self.assertTrue(moepack.verify(self.rel, self.path("back"))["identical"])

    @unittest.skipUnless(os.environ.get("MOEPACK"), "needs $MOEPACK (the CLI)")
    def test_killed_unpack_resumes_to_the_same_bytes(self):
        import subprocess
        cli = os.environ["MOEPACK"]
        moepack.pack(self.rel, self.path("packed4"))
        out = self.path("resumed")
        env = dict(os.environ, MOEPACK_FAULT="count")
        r = subprocess.run([cli, "unpack", self.path("packed4"), self.path("counted"), "-q"], env=env,
                           capture_output=True, text=True)
        points = int(r.stderr.split("fault points passed:")[1].split()[0])
        env["MOEPACK_FAULT"] = f"{points // 2}:kill"
        r = subprocess.run([cli, "unpack", self.path("packed4"), out, "-q"], env=env)
        self.assertEqual(r.returncode, -9)  # killed halfway
        self.assertFalse(os.path.exists(out))
        subprocess.run([cli, "unpack", self.path("packed4"), out, "-q", "--resume"], check=True)
        for f in self.release_files(self.rel):
            self.assertEqual(sha(os.path.join(out, f)), sha(os.path.join(self.rel, f)), f)

    def test_real_shard_naming_schemes(self):
        """The shard names of real releases (../shared/safetensors-material): Kimi-K2's derivative
        (1-based, 6-digit count), gpt-oss-20b (0-based), DeepSeek-OCR-2 (one shard named as many):
        pack -> unpack, plain and compressed, gives every file back sha256-equal."""
        material = os.environ.get("MPK_MATERIAL") or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "safetensors-material")
        if not os.path.isdir(material):
            self.skipTest("no ../shared/safetensors-material")
        for rel_dir in ("kimi2-pcl-deepseek_v3-derivative", "gpt-oss-20b", "deepseek-ocr-2-deepseek_v2_moe"):
            with open(os.path.join(material, rel_dir, "model.safetensors.index.json")) as f:
                real = json.load(f)["weight_map"]
            files = sorted(set(real.values()))[:3]
            with self.subTest(rel_dir):
                rel = self.make_release("real-" + rel_dir, files, real, seed=len(real))
                for compress in (False, True):
                    tag = f"{rel_dir}-{compress}"
                    moepack.pack(rel, self.path("p-" + tag), compress=compress)
                    moepack.unpack(self.path("p-" + tag), self.path("u-" + tag), compress=compress)
                    back = self.path("u-" + tag)
                    if compress:
                        moepack.decompress(back, self.path("d-" + tag))
                        back = self.path("d-" + tag)
                    self.assertEqual(sorted(f for f in os.listdir(back) if f.endswith(".safetensors")), files)
                    for f in self.release_files(rel):
                        self.assertEqual(sha(os.path.join(back, f)), sha(os.path.join(rel, f)), f)

    def test_layout_like_follows_an_index(self):
        moepack.pack(self.rel, self.path("packed2"))
        os.remove(os.path.join(self.path("packed2"), "moepack.source.zst"))  # as if saved by another tool
        index = os.path.join(self.rel, "model.safetensors.index.json")
        moepack.unpack(self.path("packed2"), self.path("like"), layout_like=index)
        with open(index) as f:
            want = json.load(f)["weight_map"]
        with open(os.path.join(self.path("like"), "model.safetensors.index.json")) as f:
            got = json.load(f)["weight_map"]
        self.assertEqual(got, want)
        for f in set(want.values()):
            self.assertEqual(set(read_st(os.path.join(self.path("like"), f))[0]),
                             {n for n, g in want.items() if g == f})
        self.assertTrue(moepack.verify(self.rel, self.path("like"))["identical"])

    def test_a_corrupt_record_is_named(self):
        moepack.pack(self.rel, self.path("packed3"))
        with open(os.path.join(self.path("packed3"), "moepack.source.zst"), "r+b") as f:
            f.seek(12)
            f.write(b"\xff\xff\xff\xff")
        with self.assertRaises(moepack.Error) as cm:
            moepack.unpack(self.path("packed3"), self.path("never"))
        self.assertEqual(cm.exception.status, "manifest")
        self.assertIn("moepack.source.zst", cm.exception.message)
        self.assertFalse(os.path.exists(self.path("never")))


class Compressed(unittest.TestCase):
    """compress/decompress round trips byte for byte; each broken container is named (issue 15)."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="mpk-z-")
        cls.src = os.path.join(cls.root, "src")
        moepack.synth(cls.src, "deepseek_v3", experts=4, hidden=256, intermediate=128, layers=2, fp8=True)
        cls.z = os.path.join(cls.root, "z")
        cls.rep = moepack.compress(cls.src, cls.z, chunk_size=64 << 10, threads=2)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root)

    def test_round_trip(self):
        self.assertLess(self.rep["bytes_out"], self.rep["bytes_in"])
        back = os.path.join(self.root, "back")
        moepack.decompress(self.z, back)
        for f in os.listdir(self.src):
            self.assertEqual(sha(os.path.join(back, f)), sha(os.path.join(self.src, f)), f)

    def test_commands_read_compressed_checkpoints(self):
        self.assertEqual(moepack.hash_file(self.z)["digest"], moepack.hash_file(self.src)["digest"])
        self.assertEqual(moepack.inspect(self.z)["tensor_count"], moepack.inspect(self.src)["tensor_count"])
        self.assertTrue(moepack.diff(self.src, self.z)["identical"])
        packed = os.path.join(self.root, "packed-from-z")
        moepack.pack(self.z, packed)
        self.assertTrue(moepack.verify(self.src, packed)["identical"])
        zp = os.path.join(self.root, "zp")
        moepack.compress(packed, zp)
        back = os.path.join(self.root, "unpacked-from-zp")
        moepack.unpack(zp, back)  # the record rides along: the source files come back exactly
        for f in os.listdir(self.src):
            self.assertEqual(sha(os.path.join(back, f)), sha(os.path.join(self.src, f)), f)

    def test_pack_and_unpack_write_compressed(self):
        pz = os.path.join(self.root, "pz")
        moepack.pack(self.src, pz, compress=True)
        shards = sorted(os.listdir(pz))
        self.assertTrue(any(f.endswith(".safetensors.mpkz") for f in shards), shards)
        self.assertFalse(any(f.endswith(".safetensors") for f in shards), shards)
        self.assertTrue(moepack.verify(self.src, pz)["identical"])
        uz = os.path.join(self.root, "uz")
        moepack.unpack(pz, uz, compress=True, level=5)
        self.assertEqual(sorted(f for f in os.listdir(uz) if f.endswith(".mpkz")),
                         sorted(f + ".mpkz" for f in os.listdir(self.src) if f.endswith(".safetensors")))
        back = os.path.join(self.root, "uz-back")
        moepack.decompress(uz, back)
        for f in os.listdir(self.src):  # pack -> unpack, both compressed: the release byte for byte
            self.assertEqual(sha(os.path.join(back, f)), sha(os.path.join(self.src, f)), f)
        with self.assertRaises(moepack.Error) as cm:
            moepack.pack(self.src, os.path.join(self.root, "pz-resume"), compress=True, resume=True)
        self.assertEqual(cm.exception.status, "usage")
        with self.assertRaises(moepack.Error) as cm:  # zstd knows levels 1..19
            moepack.pack(self.src, os.path.join(self.root, "pz-level"), compress=True, level=25)
        self.assertEqual(cm.exception.status, "usage")
        self.assertIn("compress level 25", cm.exception.message)
        self.assertFalse(os.path.exists(os.path.join(self.root, "pz-level")))
        self.assertFalse(os.path.exists(os.path.join(self.root, "pz-resume")))

    def test_both_forms_of_a_shard_refused(self):
        # Before: "cannot create: File exists", naming a file of the staging directory
        for cmd, name in ((moepack.decompress, "z-both"), (moepack.compress, "src-both")):
            d = os.path.join(self.root, name)
            shutil.copytree(self.z if cmd is moepack.decompress else self.src, d)
            plain = sorted(f for f in os.listdir(self.src) if f.endswith(".safetensors"))[0]
            if cmd is moepack.decompress:
                shutil.copy(os.path.join(self.src, plain), d)
            else:
                shutil.copy(os.path.join(self.z, plain + ".mpkz"), d)
            with self.assertRaises(moepack.Error) as cm:
                cmd(d, d + "-out")
            self.assertEqual(cm.exception.status, "target-conflict")
            self.assertIn(f"holds both {plain}", cm.exception.message)
            self.assertIn(f"{plain}.mpkz", cm.exception.message)
            self.assertFalse(os.path.exists(d + "-out"))

    def broken(self, name, edit):
        bad = os.path.join(self.root, name)
        shutil.copytree(self.z, bad)
        shard = os.path.join(bad, sorted(f for f in os.listdir(bad) if f.endswith(".mpkz"))[0])
        with open(shard, "r+b") as f:
            edit(f)
        dst = os.path.join(self.root, name + "-out")
        with self.assertRaises(moepack.Error) as cm:
            moepack.decompress(bad, dst)
        self.assertFalse(os.path.exists(dst))
        self.assertEqual(cm.exception.status, "bad-container")
        self.assertIn(os.path.basename(shard), cm.exception.message)
        return cm.exception.message

    def test_corrupt_chunk(self):
        def flip(f):
            f.seek(-100, os.SEEK_END)
            b = f.read(1)
            f.seek(-100, os.SEEK_END)
            f.write(bytes([b[0] ^ 0x5A]))
        msg = self.broken("corrupt", flip)
        self.assertRegex(msg, r"tensor '.*': chunk \d+")
        with self.assertRaises(moepack.Error) as cm:  # read in place, the same error
            moepack.hash_file(os.path.join(self.root, "corrupt"))
        self.assertEqual(cm.exception.status, "bad-container")

    def test_truncated(self):
        self.assertIn("truncated", self.broken("truncated", lambda f: f.truncate(f.seek(0, os.SEEK_END) - 1000)))

    def test_unknown_version(self):
        def v3(f):  # (version 2 is the one with Huffman-coded planes, issue 51)
            f.seek(4)
            f.write(struct.pack("<I", 3))
        self.assertIn("version 3", self.broken("version", v3))

    def test_sizes_that_disagree(self):
        def grow(f):
            f.seek(16)
            (d,) = struct.unpack("<Q", f.read(8))
            f.seek(16)
            f.write(struct.pack("<Q", d + 4096))
        self.assertIn("data bytes", self.broken("sizes", grow))

    def test_a_bomb_is_refused_before_allocating(self):
        def huge(f):
            f.seek(32)
            f.write(struct.pack("<Q", 1 << 60))
        self.assertIn("truncated", self.broken("bomb", huge))


def material_dir():
    return os.environ.get("MPK_MATERIAL") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "safetensors-material")


class FusedFamilies(unittest.TestCase):
    """A family published fused (GraniteMoE: input_linear [E, 2I, H], output_linear [E, H, I]),
    from the real tensor names and shard files of ibm-granite/granite-3.1-1b-a400m (issue 16),
    renamed as transformers 5.17 names them at run time."""

    def test_granitemoe_real_names(self):
        rel_dir = os.path.join(material_dir(), "granite-3.1-1b-a400m-granitemoe")
        if not os.path.isdir(rel_dir):
            self.skipTest("no ../shared/safetensors-material")
        with open(os.path.join(rel_dir, "model.safetensors.index.json")) as f:
            weight_map = json.load(f)["weight_map"]
        with open(os.path.join(rel_dir, "config.json")) as f:
            experts = json.load(f)["num_local_experts"]
        root = tempfile.mkdtemp(prefix="mpk-granite-")
        try:
            src = os.path.join(root, "src")
            os.mkdir(src)
            rng = random.Random(3)
            h, i = 4, 2  # hidden and intermediate scaled down; the expert count is the config's
            shapes = {"input_linear.weight": [experts, 2 * i, h], "output_linear.weight": [experts, h, i]}
            for fname in sorted(set(weight_map.values())):
                part = {}
                for n in sorted(k for k, v in weight_map.items() if v == fname):
                    shape = next((sh for suf, sh in shapes.items() if n.endswith("block_sparse_moe." + suf)), [2, h])
                    count = 1
                    for d in shape:
                        count *= d
                    part[n] = ("BF16", shape, bytes(rng.randrange(256) for _ in range(2 * count)))
                write_foreign(os.path.join(src, fname), part, rng)
            shutil.copy(os.path.join(rel_dir, "model.safetensors.index.json"), src)
            with open(os.path.join(rel_dir, "config.json")) as f:
                cfg = json.load(f)
            cfg.update(hidden_size=h, intermediate_size=i)  # the shapes pack checks the tensors against
            with open(os.path.join(src, "config.json"), "w") as f:
                json.dump(cfg, f)
            # published fused, already the packed layout: pack renames the tensors as transformers
            # 5.17's conversion mapping does, bytes unchanged
            packed = os.path.join(root, "packed")
            moepack.pack(src, packed)
            got = {}
            for fname in os.listdir(packed):
                if fname.endswith(".safetensors"):
                    got.update(read_st(os.path.join(packed, fname))[0])
            fused = {}
            for fname in set(weight_map.values()):
                fused.update(read_st(os.path.join(src, fname))[0])
            self.assertEqual(len(got), len(weight_map))
            for layer in range(24):
                pre = f"model.layers.{layer}.block_sparse_moe."
                self.assertEqual(got[pre + "experts.gate_up_proj"], fused[pre + "input_linear.weight"])
                self.assertEqual(got[pre + "experts.down_proj"], fused[pre + "output_linear.weight"])
                self.assertEqual(got[pre + "router.weight"], fused[pre + "router.layer.weight"])
                self.assertNotIn(pre + "input_linear.weight", got)
            self.assertEqual(got["model.embed_tokens.weight"], fused["model.embed_tokens.weight"])
            # packing it again has nothing to do
            with self.assertRaises(moepack.Error) as cm:
                moepack.pack(packed, os.path.join(root, "again"))
            self.assertEqual(cm.exception.status, "already-converted")
            self.assertIn("already in the packed layout", cm.exception.message)
            # and unpack gives the published names back, byte for byte
            back = os.path.join(root, "back")
            moepack.unpack(packed, back)
            rep = moepack.verify(src, back)
            self.assertTrue(rep["identical"], json.dumps(rep)[:2000])
            for fname in set(weight_map.values()):
                self.assertEqual(read_st(os.path.join(back, fname))[0], read_st(os.path.join(src, fname))[0])
        finally:
            shutil.rmtree(root)

    def test_ernie_vl_text_and_vision_experts(self):
        """ERNIE-4.5-VL publishes 2E experts per layer, text 0..E-1 then vision E..2E-1 with their
        own intermediate size (transformers' ErnieFuseAndSplitTextVisionExperts): text_moe gets
        the first E (gate rows then up rows), vision_moe the next E numbered from 0; the routers
        [H, E] are transposed, the [2, E] bias cut into its rows."""
        root = tempfile.mkdtemp(prefix="mpk-ernievl-")
        try:
            E, H, I = 3, 16, 8
            src, packed, a, b = synth_packed(root, "ernie4_5_vl_moe", E, H, I)
            pre, out = "model.layers.0.mlp.", "model.language_model.layers.0.mlp."
            for moe, first, inter in (("text_moe", 0, I), ("vision_moe", E, I // 2)):
                gu, dn = b[out + moe + ".experts.gate_up_proj"], b[out + moe + ".experts.down_proj"]
                self.assertEqual((gu[1], dn[1]), ([E, 2 * inter, H], [E, H, inter]))
                for e in range(E):
                    x = pre + "experts.%d." % (first + e)
                    blk = gu[2][e * 2 * inter * H * 2:(e + 1) * 2 * inter * H * 2]
                    self.assertEqual(blk, a[x + "gate_proj.weight"][2] + a[x + "up_proj.weight"][2], (moe, e))
                    self.assertEqual(dn[2][e * H * inter * 2:(e + 1) * H * inter * 2], a[x + "down_proj.weight"][2])
            for src_name, moe in (("gate.weight", "text_moe"), ("gate.weight_1", "vision_moe")):
                g, t = a[pre + src_name], b[out + moe + ".gate.weight"]
                self.assertEqual((g[1], t[1]), ([H, E], [E, H]))
                for h in range(H):
                    for e in range(E):
                        self.assertEqual(t[2][2 * (e * H + h):][:2], g[2][2 * (h * E + e):][:2], (moe, h, e))
            bias = a[pre + "moe_statics.e_score_correction_bias"][2]
            self.assertEqual(b[out + "text_moe.gate.moe_statics.e_score_correction_bias"][2], bias[:4 * E])
            self.assertEqual(b[out + "vision_moe.gate.moe_statics.e_score_correction_bias"][2], bias[4 * E:])
            self.assertIn("model.language_model.norm.weight", b)
            self.assertIn("vision_tower.ln.weight", b)
            self.assertIn("model.resampler_model.spatial_linear.fc1.weight", b)
            back = os.path.join(root, "back")
            moepack.unpack(packed, back)
            self.assertEqual(sha(os.path.join(back, "model.safetensors")), sha(os.path.join(src, "model.safetensors")))
        finally:
            shutil.rmtree(root)

    def test_dbrx_flattened_experts(self):
        """DBRX publishes w1/v1/w2 as [E*I, H]: gate_up_proj[e] is w1's rows e*I.. then v1's,
        down_proj[e][h][i] is w2[e*I + i][h] (the per-expert slices transposed)."""
        root = tempfile.mkdtemp(prefix="mpk-dbrx-")
        try:
            E, H, I = 4, 16, 8
            src, packed, a, b = synth_packed(root, "dbrx", E, H, I)
            pre = "transformer.blocks.0.ffn.experts."
            w1, v1, w2 = (a[pre + "mlp." + n][2] for n in ("w1", "v1", "w2"))
            gu, dn = b[pre + "gate_up_proj"], b[pre + "down_proj"]
            self.assertEqual((gu[0], gu[1], dn[1]), ("BF16", [E, 2 * I, H], [E, H, I]))
            row = 2 * H
            for e in range(E):
                blk = gu[2][e * 2 * I * row:(e + 1) * 2 * I * row]
                self.assertEqual(blk[:I * row], w1[e * I * row:(e + 1) * I * row])
                self.assertEqual(blk[I * row:], v1[e * I * row:(e + 1) * I * row])
                for h in (0, 5, H - 1):
                    for i in (0, 3, I - 1):
                        got = dn[2][2 * ((e * H + h) * I + i):][:2]
                        want = w2[2 * ((e * I + i) * H + h):][:2]
                        self.assertEqual(got, want, (e, h, i))
            back = os.path.join(root, "back")
            moepack.unpack(packed, back)
            self.assertTrue(moepack.verify(src, back)["identical"])
        finally:
            shutil.rmtree(root)


class EveryPreset(unittest.TestCase):
    """Every preset's synth output: pack then unpack gives the files back byte for byte, plain
    and from compressed checkpoints in both directions (issue 15)."""

    def test_round_trips(self):
        root = tempfile.mkdtemp(prefix="mpk-presets-")
        try:
            for p in moepack.presets():
                with self.subTest(preset=p["name"]):
                    d = os.path.join(root, p["name"])
                    src, packed, back = d + "-src", d + "-packed", d + "-back"
                    moepack.synth(src, p["name"], experts=4, hidden=64, intermediate=32, layers=2, shards=2)
                    moepack.pack(src, packed, max_shard_size=30_000, fsync=False)
                    moepack.unpack(packed, back, fsync=False)
                    zsrc, zpacked, zback, zp2 = d + "-zsrc", d + "-zpacked", d + "-zback", d + "-zp2"
                    moepack.compress(src, zsrc)
                    moepack.pack(zsrc, zp2, fsync=False)  # from a compressed per-expert checkpoint
                    self.assertTrue(moepack.verify(src, zp2)["identical"])
                    moepack.compress(packed, zpacked)
                    moepack.unpack(zpacked, zback, fsync=False)  # from a compressed packed checkpoint
                    for f in os.listdir(src):
                        self.assertEqual(sha(os.path.join(back, f)), sha(os.path.join(src, f)), f)
                        self.assertEqual(sha(os.path.join(zback, f)), sha(os.path.join(src, f)), f)
        finally:
            shutil.rmtree(root)


if __name__ == "__main__":
    unittest.main()
