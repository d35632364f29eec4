#!/bin/sh
# install.sh BUILD SRCROOT — what a user of the library does: meson install (into a scratch
# DESTDIR), build examples/pack.c against the installed copy through pkg-config, run it, and
# run the Python binding against the installed shared library.
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
# the binding, over the installed library
MOEPACK_LIB=$so/libmoepack.so python3 "$srcroot/python/test_moepack.py" Binding 2>&1 | tail -3
