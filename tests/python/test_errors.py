"""python/moepack's exceptions (issue 50, item 3): each class raised by a real failure, caught as
its built-in, carrying status, file, tensor; keyword-argument hints; arguments checked before
the call; sizes with units; no name of __all__ shadows a built-in."""
import builtins
import errno
import json
import os
import subprocess
import sys
import unittest

from common import Scratch, moepack


class Errors(Scratch):
    def test_not_found_is_file_not_found_error(self):
        missing = self.path("absent")
        with self.assertRaises(FileNotFoundError) as cm:
            moepack.inspect(missing)
        e = cm.exception
        self.assertIsInstance(e, moepack.NotFound)
        self.assertIsInstance(e, moepack.Error)
        self.assertEqual(e.status, "not-found")
        self.assertEqual(e.file, missing)
        self.assertIn(missing, str(e))

    def test_destination_exists_is_file_exists_error_naming_force(self):
        dst = self.path("exists")
        os.mkdir(dst)
        try:
            with self.assertRaises(FileExistsError) as cm:
                moepack.pack(self.src, dst)
            e = cm.exception
            self.assertIsInstance(e, moepack.DestinationExists)
            self.assertEqual(e.status, "destination-exists")
            self.assertEqual(e.file, dst)
            self.assertNotIn("--force", str(e))  # never the command line's terms
        finally:
            os.rmdir(dst)

    def test_hint_names_the_keyword_argument(self):
        dst = self.path("exists-hint")
        os.mkdir(dst)
        try:
            with self.assertRaises(moepack.DestinationExists) as cm:
                moepack.pack(self.src, dst)
            self.assertEqual((cm.exception.field, cm.exception.hint), ("force", "pass force=True to replace it"))
            self.assertIn("force=True", str(cm.exception))
            with self.assertRaises(moepack.Error) as cm:  # a tensor the spec does not understand
                moepack.pack(self.stray(), self.path("never"))
            self.assertEqual(cm.exception.status, "not-understood")
            self.assertIn("pass_unknown=True", str(cm.exception))
            self.assertNotIn("--pass-unknown", str(cm.exception))
        finally:
            os.rmdir(dst)

    def stray(self):
        """src with one per-expert tensor no rule of the preset takes."""
        src = self.path("stray")
        if not os.path.exists(src):
            moepack.synth(src, "qwen3_moe", experts=2, hidden=32, intermediate=16, layers=1, shards=1)
            rename_first_expert_tensor(os.path.join(src, "model.safetensors"))
        return src

    def test_permission_denied_is_permission_error(self):
        """A shard the caller may not read. Root reads every file: as root, the check runs in a
        child process that has given up root (uid 65534) first."""
        drop = (lambda: os.setuid(65534)) if os.geteuid() == 0 else None
        try:  # an interpreter under /root (pyenv) cannot be run by uid 65534
            runs = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=drop).returncode == 0
        except OSError:
            runs = False
        if not runs:
            self.skipTest("%s cannot run as uid 65534" % sys.executable)
        src = self.path("locked")
        moepack.synth(src, "qwen3_moe", experts=2, hidden=32, intermediate=16, layers=1, shards=1)
        os.chmod(self.root, 0o755)
        os.chmod(src, 0o755)
        os.chmod(os.path.join(src, "model.safetensors"), 0)
        code = ("import errno, sys; sys.path[:0] = sys.argv[2:]; import moepack\n"
                "try:\n    moepack.inspect(sys.argv[1])\n"
                "except PermissionError as e:\n"
                "    ok = isinstance(e, moepack.PermissionDenied) and e.errno == errno.EACCES and e.status == 'io'\n"
                "    print('permission-error' if ok else repr(e))\n")
        r = subprocess.run([sys.executable, "-c", code, src] + sys.path[:1],
                           preexec_fn=drop,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.stdout.strip(), "permission-error", r.stderr)

    def test_is_a_directory(self):
        # a folder where the index names a shard file
        src = self.path("dir-shard")
        moepack.synth(src, "qwen3_moe", experts=2, hidden=32, intermediate=16, layers=1, shards=2)
        shard = sorted(n for n in os.listdir(src) if n.endswith(".safetensors"))[0]
        os.rename(os.path.join(src, shard), os.path.join(src, shard + ".moved"))
        os.mkdir(os.path.join(src, shard))
        with self.assertRaises(IsADirectoryError) as cm:
            moepack.inspect(src)
        self.assertIsInstance(cm.exception, moepack.IsADirectory)
        self.assertEqual(cm.exception.errno, errno.EISDIR)

    def test_usage_is_value_error(self):
        with self.assertRaises(ValueError) as cm:
            moepack.pack(self.src, self.path("x"), preset="no-such-preset")
        self.assertIsInstance(cm.exception, moepack.UsageError)
        self.assertEqual(cm.exception.status, "preset")
        with self.assertRaises(moepack.UsageError) as cm:  # the library's own usage check
            moepack.pack(self.src, self.path("x"), compress=True, resume=True)
        self.assertEqual(cm.exception.status, "usage")
        self.assertFalse(os.path.exists(self.path("x")))

    def test_verification_failed(self):
        packed = self.path("vf-packed")
        moepack.pack(self.src, packed)
        other = self.path("vf-other")
        moepack.synth(other, "qwen3_moe", experts=4, hidden=32, intermediate=16, layers=2, seed=7)
        self.assertTrue(moepack.verify(self.src, packed, check=True)["identical"])
        with self.assertRaises(moepack.VerificationFailed) as cm:
            moepack.verify(other, packed, check=True)
        e = cm.exception
        self.assertIsInstance(e, moepack.Error)
        self.assertFalse(e.report["identical"])
        self.assertEqual(e.status, "differences")
        self.assertIn(e.tensor, [d["name"] for d in e.report["differences"]])
        # without check: the report, as before
        self.assertFalse(moepack.verify(other, packed)["identical"])

    def test_tensor_named(self):
        # a shard whose header lists a tensor with a dtype nobody knows: the exception names it
        src = self.path("bad-dtype")
        moepack.synth(src, "qwen3_moe", experts=2, hidden=32, intermediate=16, layers=1, shards=1)
        shard = os.path.join(src, "model.safetensors")
        with open(shard, "r+b") as f:
            data = f.read()
            i = data.index(b'"dtype":"BF16"')
            f.seek(i)
            f.write(b'"dtype":"BX16"')
        n = int.from_bytes(data[:8], "little")
        names = [k for k in json.loads(data[8:8 + n]) if k != "__metadata__"]
        broken = max(names, key=lambda k: data.rfind(b'"' + k.encode() + b'"', 0, i))  # the entry holding i
        with self.assertRaises(moepack.Error) as cm:
            moepack.inspect(src)
        e = cm.exception
        self.assertEqual(e.status, "unknown-dtype")
        self.assertEqual(e.file, shard)
        self.assertEqual(e.tensor, broken)


def rename_first_expert_tensor(shard):
    """Gives layer 0's q_proj (in place, a name of the same length) a per-expert name no rule of
    the preset takes."""
    old, new = b"model.layers.0.self_attn.q_proj.weight", b"model.layers.0.mlp.experts.0.zq.weight"
    with open(shard, "r+b") as f:
        head = f.read(int.from_bytes(f.read(8), "little"))
        f.seek(8 + head.index(old))
        f.write(new)


class Arguments(Scratch):
    def test_sizes_take_units(self):
        out = self.path("sized")
        rep = moepack.pack(self.src, out, max_shard_size="20KiB", mem="1MiB")
        self.assertGreater(rep["shards"], 1)
        for text, want in (("2GB", 2 * 10**9), ("512MiB", 512 << 20), ("1.5G", 1_500_000_000), ("7", 7),
                           ("3 KB", 3000), ("1TiB", 1 << 40), (4096, 4096), (2e9, 2 * 10**9)):
            with self.subTest(text=text):
                self.assertEqual(moepack._checks.size(text, "f", "n"), want)
        for bad in ("2 parsecs", "GB", "-1MB", "1mib", "", "0x10"):
            with self.subTest(bad=bad), self.assertRaises(ValueError) as cm:
                moepack.pack(self.src, self.path("never"), max_shard_size=bad)
            self.assertIn("MiB", str(cm.exception))
        with self.assertRaises(TypeError):
            moepack.pack(self.src, self.path("never"), mem=[1])
        self.assertFalse(os.path.exists(self.path("never")))

    def test_synth_dtype_lists_the_valid_ones(self):
        with self.assertRaises(ValueError) as cm:
            moepack.synth(self.path("never"), dtype="F8")
        for name in ("'BF16'", "'F16'", "'F32'", "fp8=True"):
            self.assertIn(name, str(cm.exception))
        self.assertFalse(os.path.exists(self.path("never")))

    def test_no_export_shadows_a_builtin(self):
        self.assertEqual([n for n in moepack.__all__ if hasattr(builtins, n)], [])
        ns = {}
        exec("from moepack import *", ns)
        self.assertNotIn("hash", ns)
        self.assertNotIn("open", ns)
        for name in moepack.__all__:
            self.assertTrue(hasattr(moepack, name), name)
        # the old name still works, saying it is deprecated
        with self.assertWarns(DeprecationWarning):
            self.assertEqual(moepack.hash(self.src)["digest"], moepack.hash_file(self.src)["digest"])


if __name__ == "__main__":
    unittest.main()
