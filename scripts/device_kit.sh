#!/bin/sh
# Builds moepack here and copies it, with the shared libraries a bare GPU machine lacks, into
# .carry/ (ignored): carry it to the device machine and run with LD_LIBRARY_PATH=.carry/lib.
set -eu
cd "$(dirname "$0")/.."
[ -d build ] || meson setup build
ninja -C build moepack tests/test_gpu
rm -rf .carry && mkdir -p .carry/lib
cp build/moepack build/tests/test_gpu .carry/
for l in $(ldd build/moepack build/tests/test_gpu | awk '/=> \//{print $3}'); do
    case "$(basename "$l")" in
    libc.so*|libm.so*|libstdc++*|libgcc_s*|ld-linux*) ;;
    *) cp -L "$l" .carry/lib/ ;;
    esac
done
ls -la .carry .carry/lib
