#!/usr/bin/env bash
# bench/run.sh [WORKDIR] — the measurements in bench/RESULTS.md, each against a baseline
# taken in the same run. Needs ~12 GB free in WORKDIR (default /tmp/moepack-bench) and python3
# (only to write header-only checkpoints from the real index files).
set -euo pipefail
cd "$(dirname "$0")/.."
M=$PWD/build/moepack
W=${1:-/tmp/moepack-bench}
MAT=${MPK_MATERIAL:-$PWD/../shared/safetensors-material}
rm -rf "$W"; mkdir -p "$W"
t() { local s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(uname -r)"
# 1. pack vs cp -r on a Qwen3-30B-A3B-shaped checkpoint (E=128, H=2048, I=768, BF16)
$M synth --arch qwen3_moe --layers 4 --experts 128 --hidden 2048 --intermediate 768 --vocab 2048 \
   --shards 4 "$W/src" >/dev/null
du -sb "$W/src" | awk '{printf "== source: %.2f GiB\n", $1/2^30}'
# pack, pack --no-fsync, unpack against cp -r (+ sync), interleaved rounds, medians; pack again
# with 1 GB output shards (5 of them, written in parallel; a 100+ GB release has several at 50 GB)
python3 bench/pack_vs_cp.py "$M" "$W" --rounds "${ROUNDS:-5}" --shard-size 1GB --disk
cp_s=$(t cp -r "$W/src" "$W/cp"); rm -rf "$W/cp"
$M pack --json --no-fsync "$W/src" "$W/p2" --mem 256MiB > "$W/pack.json"; rm -rf "$W/p2"
rss=$(python3 -c "import json;print(round(json.load(open('$W/pack.json'))['peak_rss_bytes']/2**20,1))")
rd_s=$(t $M pack -q --no-fsync "$W/src" "$W/p3" --mem 256MiB --no-copy-range --io io_uring); rm -rf "$W/p3"
pr_s=$(t $M pack -q --no-fsync "$W/src" "$W/p4" --mem 256MiB --no-copy-range --io pread); rm -rf "$W/p4"
echo "cp -r: ${cp_s}s"
echo "pack --no-fsync, io_uring read + pwrite: ${rd_s}s, pread + pwrite: ${pr_s}s"
echo "pack --mem 256MiB peak RSS: ${rss} MiB"
$M pack -q "$W/src" "$W/p1"
# verify recomputes every packed tensor from the source and compares (reads both sides)
v_s=$(t $M verify "$W/src" "$W/p1")
vm_s=$(t $M verify "$W/p1")
echo "verify SRC DST: ${v_s}s  ratio vs cp: $(echo "scale=2; $cp_s / $v_s" | bc); verify DST (manifest): ${vm_s}s"
rm -rf "$W/p1"

# 1b. the same from a cold page cache (as root: sync and drop_caches before every command), with
# and without pack's read-ahead hints; then pack --dequantize of a DeepSeek-V3-style FP8
# checkpoint against cp -r (+ sync) of its BF16 result. (Larger than RAM: bench/big_pack.sh, slow.)
if [ "$(id -u)" = 0 ]; then
  python3 bench/pack_vs_cp.py "$M" "$W" --rounds "${ROUNDS:-5}" --cold --disk --only pack,pack-noprefetch,unpack
fi
$M synth --arch deepseek_v3 --layers 4 --experts 64 --hidden 2048 --intermediate 1024 --vocab 4096 \
   --quant fp8 --shards 4 "$W/dq/src" >/dev/null
python3 bench/pack_vs_cp.py "$M" "$W/dq" --rounds "${ROUNDS:-5}" --dequantize
rm -rf "$W/dq"

# 2. plan on the real Qwen3-30B-A3B index (19k tensors), as a header-only checkpoint
python3 bench/headers.py "$MAT/qwen3-30b-a3b-qwen3_moe/model.safetensors.index.json.transgqa-modified" \
   "$MAT/qwen3-30b-a3b-qwen3_moe/config.json" "$W/q30"
echo "plan on Qwen3-30B-A3B index: $(t $M plan "$W/q30")s"

# 3. inspect on 8 shards x 2000 tensors
python3 bench/headers.py --synthetic 8 2000 "$W/insp"
echo "inspect 8 x 2000 tensors: $(t $M inspect "$W/insp")s"

# 4. read throughput on a 1 GiB file, warm cache, against cat
head -c 1073741824 /dev/urandom > "$W/blob"; cat "$W/blob" >/dev/null
cat_s=$(t sh -c "cat '$W/blob' > /dev/null")
echo "cat: $(echo "scale=2; 1.073741824 / $cat_s" | bc) GB/s"
build/bench/io_read "$W/blob" io_uring 3
build/bench/io_read "$W/blob" pread 3
# 4b. CPU of hashing a cached file for the manifest: pread copies against mapped windows
build/bench/hash_readback "$W/blob" 10
# 4c. CPU of the in-kernel copy when source and output offsets differ within a page:
# copy_file_range against splice rounds (what pack does for such slices)
build/bench/copy_phase "$W/blob" 7

# 5. FP8 block / MXFP4 dequantize throughput vs memcpy (1 GiB of BF16 output)
build/bench/quant_bench 1

# 6. MPI (when built in and mpirun is there): pack under 1 and 2 ranks against one process,
# interleaved (the source of section 1); and the share each of N ranks gets of real releases' packs, from their plans
if build/moepack version | grep -q mpi=yes && command -v mpirun >/dev/null; then
  python3 bench/pack_vs_cp.py "$M" "$W" --rounds "${ROUNDS:-5}" --mpi 1,2 --only pack-mpi1,pack-mpi2
  python3 bench/mpi_balance.py "$M" "$MAT" "$W/balance"
fi
rm -rf "$W"
