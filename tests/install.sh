#!/bin/sh
# install.sh BUILD SRCROOT — what a user of the library does: meson install (into a scratch
# DESTDIR), build examples/pack.c against the installed copy through pkg-config, run it, link it
# again statically (pkg-config --static, libmoepack.a) and run that, and run the Python binding
# against the installed shared library.
set -eu
build=$1
srcroot=$2
tmp=$(mktemp -d /tmp/mpk-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
meson install -C "$build" --no-rebuild --quiet --destdir "$root" >/dev/null
for f in moepack/moepack.h libmoepack.so libmoepack.a moepack.pc libmoepack.3 man1/moepack.1 \
    bash-completion/completions/moepack bin/moepack; do
  find "$root" -path "*$f" | grep -q . || { echo "install.sh: '$f' was not installed" >&2; exit 1; }
done
pc=$(dirname "$(find "$root" -name moepack.pc | head -1)")
so=$(dirname "$(find "$root" -name 'libmoepack.so' | head -1)")
flags=$(PKG_CONFIG_PATH=$pc PKG_CONFIG_SYSROOT_DIR=$root pkg-config --cflags --libs moepack)
echo "pkg-config --cflags --libs moepack: $flags"
${CC:-cc} -std=c11 -Wall -Wextra -Werror "$srcroot/examples/pack.c" $flags -o "$tmp/pack"
moepack=$(find "$root" -path '*bin/moepack' | head -1)
"$moepack" synth --arch qwen3_moe --experts 4 --hidden 32 --intermediate 16 "$tmp/src" >/dev/null
LD_LIBRARY_PATH=$so "$tmp/pack" "$tmp/src" "$tmp/packed" >"$tmp/out" 2>/dev/null
grep -q "0 difference(s): identical" "$tmp/out" || { cat "$tmp/out" >&2; exit 1; }
cat "$tmp/out"
# examples/pack.c again, linked statically against the installed libmoepack.a with
# `pkg-config --static --libs` (the libraries it needs stay shared where only those are there).
# The .pc must not name a file by this machine's path: the CUDA runtime comes through
# -L${cuda_libdir}, which a machine with the toolkit elsewhere redefines; here it is pointed at a
# copy of libcudart_static.a elsewhere, as such a machine would.
pcfile=$pc/moepack.pc
if grep -E '^Libs' "$pcfile" | grep -qE '/[^ ]*\.(a|so)( |$)|-L/[^ ]*cuda'; then
  echo "install.sh: moepack.pc names a library by its path:" >&2; grep -E '^Libs' "$pcfile" >&2; exit 1
fi
define=
cudalib=$(PKG_CONFIG_PATH=$pc pkg-config --variable=cuda_libdir moepack)
if [ -n "$cudalib" ]; then
  mkdir "$tmp/cuda-elsewhere"
  if [ -f "$cudalib/libcudart_static.a" ]; then
    ln -s "$cudalib/libcudart_static.a" "$tmp/cuda-elsewhere/"
  fi
  define="--define-variable=cuda_libdir=$tmp/cuda-elsewhere"
fi
# (no PKG_CONFIG_SYSROOT_DIR here: it would move the other packages' folders under $root too; a
# copy of the .pc with its prefix moved under $root instead)
mkdir "$tmp/pc"
sed "s|^prefix=|prefix=$root|" "$pcfile" >"$tmp/pc/moepack.pc"
static=$(PKG_CONFIG_PATH=$tmp/pc pkg-config $define --static --cflags --libs moepack)
echo "pkg-config --static --cflags --libs moepack: $static"
# -l:libmoepack.a: the archive, though libmoepack.so lies beside it
static=$(echo "$static" | sed 's/-lmoepack\( \|$\)/-l:libmoepack.a\1/')
if ${CC:-cc} -std=c11 -Wall -Wextra -Werror "$srcroot/examples/pack.c" $static -o "$tmp/pack-static" \
    2>"$tmp/static-err"; then
  if readelf -d "$tmp/pack-static" | grep -q 'NEEDED.*libmoepack'; then
    echo "install.sh: the static link of examples/pack.c still needs libmoepack.so" >&2; exit 1
  fi
  rm -rf "$tmp/packed"
  "$tmp/pack-static" "$tmp/src" "$tmp/packed" >"$tmp/out" 2>/dev/null
  grep -q "0 difference(s): identical" "$tmp/out" || { cat "$tmp/out" >&2; exit 1; }
  echo "examples/pack.c linked statically against libmoepack.a: 0 differences"
elif missing=$(grep -o 'cannot find -l[^ :]*' "$tmp/static-err"); then
  # a library the flags name is not on this machine (e.g. no libcudart_static.a): not our fault
  echo "install.sh: SKIPPED the static link of examples/pack.c, a library it needs is not here: $(echo $missing)"
else
  cat "$tmp/static-err" >&2; exit 1
fi
# the binding, over the installed library
MOEPACK_LIB=$so/libmoepack.so python3 "$srcroot/python/test_moepack.py" Binding 2>&1 | tail -3
# The Python package as `meson install` put it (issue 50, item 1): a process with nothing set
# but PYTHONPATH naming that site folder imports it, loads the installed library by the path
# the install recorded (found again under DESTDIR relative to the package) and packs.
py=${PYTHON:-python3}
lp=$(find "$root" -path '*/moepack/_libpath.py' | head -1)
[ -n "$lp" ] || { echo "install.sh: the moepack Python package was not installed" >&2; exit 1; }
site=$(dirname "$(dirname "$lp")")
check='import moepack, sys
lib = moepack._native.lib._name
assert lib.startswith(sys.argv[1]), "loaded " + lib + ", not the library under " + sys.argv[1]
moepack.synth(sys.argv[2], "qwen3_moe", experts=4, hidden=32, intermediate=16)
moepack.pack(sys.argv[2], sys.argv[3])
assert moepack.verify(sys.argv[2], sys.argv[3])["identical"]
print("python: import moepack", moepack.version(), "from", moepack.__file__, "over", lib, "packs")'
(cd "$tmp" && env -i PATH=/usr/bin:/bin PYTHONPATH="$site" "$py" -c "$check" "$root" "$tmp/py-src" "$tmp/py-packed")
# no library to be found: an ImportError saying what to do (not a raw OSError)
if ldconfig -p 2>/dev/null | grep -q 'libmoepack\.so\.0'; then
  echo "install.sh: SKIPPED the ImportError check: libmoepack.so.0 is installed system-wide here"
else
  if (cd "$tmp" && env -i PATH=/usr/bin:/bin PYTHONPATH="$srcroot/python" "$py" -c 'import moepack' 2>"$tmp/imp"); then
    echo "install.sh: import moepack worked with no library" >&2; exit 1
  fi
  grep -q '^ImportError: moepack: cannot load the libmoepack shared library.*MOEPACK_LIB' "$tmp/imp" ||
    { echo "install.sh: import moepack without a library:" >&2; cat "$tmp/imp" >&2; exit 1; }
  echo "python: import moepack without a library: $(tail -1 "$tmp/imp" | cut -c1-100)..."
fi
# pip install ./python, offline (no build isolation: Debian's setuptools), into a target folder,
# the library found once by pkg-config (the installed moepack.pc, moved under $root) and once by
# MOEPACK_LIB; then imported with nothing set
if ! "$py" -m pip --version >/dev/null 2>&1 || ! "$py" -c 'import setuptools' 2>/dev/null; then
  echo "install.sh: SKIPPED pip install ./python: $py has no pip or no setuptools (Debian: python3-pip, python3-setuptools)"
  exit 0
fi
for how in pkg-config MOEPACK_LIB; do
  rm -rf "$tmp/pysrc" "$tmp/pip-$how"
  cp -r "$srcroot/python" "$tmp/pysrc" # (pip builds in the tree it is given)
  if [ $how = pkg-config ]; then
    env -u MOEPACK_LIB PKG_CONFIG_PATH="$tmp/pc" "$py" -m pip install -q --no-build-isolation --no-deps --no-index \
      --disable-pip-version-check --target "$tmp/pip-$how" "$tmp/pysrc" >"$tmp/pip.log" 2>&1
  else
    MOEPACK_LIB=$so/libmoepack.so.0 PKG_CONFIG_PATH=/nonexistent "$py" -m pip install -q --no-build-isolation \
      --no-deps --no-index --disable-pip-version-check --target "$tmp/pip-$how" "$tmp/pysrc" >"$tmp/pip.log" 2>&1
  fi || { echo "install.sh: pip install ./python ($how) failed:" >&2; cat "$tmp/pip.log" >&2; exit 1; }
  rm -rf "$tmp/py-packed"
  (cd "$tmp" && env -i PATH=/usr/bin:/bin PYTHONPATH="$tmp/pip-$how" "$py" -c "$check" "$root" "$tmp/py-src2-$how" \
    "$tmp/py-packed") | sed "s/^python:/pip install ($how):/"
done
