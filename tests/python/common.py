"""What the Python suites share: the package from the source tree (python/) over the built
library ($MOEPACK_LIB, set by tests/meson.build), a scratch folder per test class."""
import os
import shutil
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
import moepack  # noqa: E402


class Scratch(unittest.TestCase):
    """A class with a temporary folder (cls.root) and a small per-expert checkpoint cls.src."""
    arch = "qwen3_moe"
    size = dict(experts=4, hidden=32, intermediate=16, layers=2)

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="mpk-pytest-")
        cls.src = os.path.join(cls.root, "src")
        moepack.synth(cls.src, cls.arch, **cls.size)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root)

    def path(self, *names):
        return os.path.join(self.root, *names)

    def leftovers(self, parent, keep):
        """Entries of parent besides keep (a staging directory left behind shows here)."""
        return sorted(set(os.listdir(parent)) - set(keep))
