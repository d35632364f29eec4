"""The Python binding against the built shared library ($MOEPACK_LIB): python3 test_moepack.py"""
import os
import shutil
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
        a, b = moepack.hash(self.src), moepack.hash(self.path("back"))
        self.assertEqual(a["digest"], b["digest"])
        self.assertEqual(len(a["tensors"]), moepack.inspect(self.src)["tensor_count"])

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


if __name__ == "__main__":
    unittest.main()
