#!/usr/bin/env bash
# bench/big_pack.sh [WORKDIR] [LAYERS] — a checkpoint larger than this machine's RAM (default 26
# layers of the Qwen3-30B-A3B shape: ~30 GiB on a 24 GiB machine), packed with --mem 256MiB
# (in-kernel copies, and read + write through --mem's buffers with --no-copy-range) against
# cp -r + sync of the same bytes, 2 interleaved rounds: wall time, CPU time, peak RSS (GNU
# time's maximum resident set). Needs 2x the checkpoint free in WORKDIR. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
M=$PWD/build/moepack
W=${1:-/tmp/moepack-big}
L=${2:-26}
rm -rf "$W"; mkdir -p "$W"
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB RAM"
$M synth --arch qwen3_moe --layers "$L" --experts 128 --hidden 2048 --intermediate 768 --vocab 2048 \
   --shards 16 "$W/src" >/dev/null
bytes=$(du -sb "$W/src" | cut -f1)
echo "== source: $(echo "scale=2; $bytes / 2^30" | bc) GiB"
for r in 1 2; do
  sync
  /usr/bin/time -f "round $r pack --mem 256MiB: %e s wall, %U user, %S sys, peak RSS %M KiB" \
     $M pack -q --mem 256MiB "$W/src" "$W/out" 2>&1
  rm -rf "$W/out"; sync
  /usr/bin/time -f "round $r pack --mem 256MiB --no-copy-range: %e s wall, %U user, %S sys, peak RSS %M KiB" \
     $M pack -q --mem 256MiB --no-copy-range "$W/src" "$W/out" 2>&1
  rm -rf "$W/out"; sync
  /usr/bin/time -f "round $r cp -r + sync: %e s wall, %U user, %S sys, peak RSS %M KiB" \
     sh -c "cp -r '$W/src' '$W/out' && sync" 2>&1
  rm -rf "$W/out"
done
rm -rf "$W"
