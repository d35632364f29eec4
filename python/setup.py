"""pip install ./python: the package, with moepack/_libpath.py recording where libmoepack is:
$MOEPACK_LIB when set at install time, else pkg-config's libdir of moepack; neither: nothing
recorded (the system's library path is searched at import). Metadata: pyproject.toml."""
import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def library():
    env = os.environ.get("MOEPACK_LIB")
    if env:
        return os.path.abspath(env)
    try:
        libdir = subprocess.run(["pkg-config", "--variable=libdir", "moepack"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return os.path.join(libdir, "libmoepack.so.0") if libdir else ""


class BuildPyRecordingTheLibrary(build_py):
    def run(self):
        super().run()
        lib = library()
        if not lib:
            self.warn("libmoepack found neither by $MOEPACK_LIB nor by pkg-config: import moepack will look "
                      "in the system's library path")
        with open(os.path.join(HERE, "moepack", "_libpath.py.in")) as f:
            text = f.read()
        text = text.replace('"@LIBRARY@"', repr(lib)).replace('"@PACKAGE_DIR@"', '""')
        with open(os.path.join(self.build_lib, "moepack", "_libpath.py"), "w") as f:
            f.write(text)


setup(cmdclass={"build_py": BuildPyRecordingTheLibrary})
