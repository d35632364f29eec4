#!/bin/bash
# The GPU measurements, run on the device machine from the repository root after
# scripts/device_kit.sh built .carry/ here (moepack, test_gpu, the shared libraries):
#   run(carry=[".carry"]): bash gpu/device_run.sh [STEP...]
# Steps: test (test_gpu --device), qwen3, mixtral, deepseek (gpucheck + peer_torch.py + table
# per shape), e2e (gpucheck --reference on a packed synth checkpoint; pack vs cp -r on this
# machine), parity[:arch,...] (tests/parity/transformers_parity.py), hfmatch (the installed
# transformers' own key renaming against tests/parity/hfmatch.py, crosscheck's re-implementation:
# tests/parity/validate_hfmatch.py, CPU only), loadtime (from_pretrained
# of a per-expert Qwen3-MoE checkpoint against its pack: gpu/load_time.py), fp8 (gpucheck of
# DeepSeek-V3-shaped FP8 packed experts against their per-expert source), bench (issue 18 on this
# machine: pack and unpack against cp -r (+ sync), warm, ROUNDS rounds, then from a cold cache
# where drop_caches can be written), round3 (issue 52, about 5 minutes: test_gpu --device with
# the decode cases first, then gpucheck's decode, batched and grouped_cublas backends at
# T = 1,2,4,8,16 on the Mixtral and Qwen3 shapes, checked against the fp64 reference and timed;
# a table per shape with decode's fraction of HBM bandwidth); default: all of them but bench
# and round3.
# Writes everything under $OUT (or ./gpu-out): test_gpu output, gpucheck JSON + SVG per shape,
# peer_torch JSON, the transformers parity results.
set -u
# results gather in $RES; on the device machine they come back as one archive in $OUT
RES=/tmp/gpu-results
rm -rf "$RES" && mkdir -p "$RES"
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$PWD/.carry/lib:$SITE/nvidia/cu13/lib
M=.carry/moepack
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RES/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$RES/device.txt"

shape() { # name E H I k tokens
    local name=$1 E=$2 H=$3 I=$4 k=$5 tokens=$6
    echo "== $name E=$E H=$H I=$I k=$k"
    rm -rf /tmp/in-$name && mkdir -p /tmp/in-$name
    timeout 300 $M gpucheck --synthetic $E,$H,$I --topk $k --tokens $tokens --save-inputs /tmp/in-$name \
        --plot "$RES/$name.svg" --json > "$RES/$name.json" 2> "$RES/$name.err"
    echo "gpucheck rc=$?"; tail -3 "$RES/$name.err"
    timeout 240 python3 gpu/peer_torch.py --E $E --H $H --I $I --topk $k --tokens $tokens \
        --inputs /tmp/in-$name --json "$RES/$name-peer.json" > "$RES/$name-peer.txt" 2>&1
    echo "peer rc=$?"; tail -2 "$RES/$name-peer.txt"
    python3 gpu/results_table.py "$RES/$name.json" "$RES/$name-peer.json" | tee "$RES/$name.md"
    rm -rf /tmp/in-$name
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(test qwen3 mixtral deepseek e2e parity hfmatch loadtime fp8)
save() { # after every step, so that a run stopped at its limit still returns what it finished
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" -C "$RES" .; else rm -rf gpu-out && cp -r "$RES" gpu-out; fi
}
for step in "${steps[@]}"; do
    echo "== step $step at $(date +%T)"
    case $step in
    test)
        echo "== test_gpu --device"
        timeout 120 .carry/test_gpu --device 2>&1 | tee "$RES/test_gpu.txt" ;;
    qwen3) shape qwen3-30b-a3b 128 2048 768 8 1,4,16,64,256,1024,4096,16384 ;;
    round3)
        DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
        echo "== test_gpu --device (decode cases included)"
        timeout 120 .carry/test_gpu --device 2>&1 | tee "$RES/round3-test_gpu.txt"
        echo "test_gpu rc=${PIPESTATUS[0]}" | tee -a "$RES/round3-test_gpu.txt"
        save
        # name E,H,I top-k limit_s; ROUND3_SHAPES (same form, ";"-separated) replaces them for a dry run
        IFS=";" read -r -a specs <<< "${ROUND3_SHAPES:-mixtral-8x7b 8,4096,14336 2 210;qwen3-30b-a3b 128,2048,768 8 120}"
        for spec in "${specs[@]}"; do
            read -r name shp k limit <<< "$spec"
            echo "== decode $name E,H,I=$shp top-$k"
            timeout "$limit" $M gpucheck --synthetic "$shp" --topk "$k" --tokens 1,2,4,8,16 --runs 50 \
                --backends decode,batched,grouped_cublas --json 2>&1 > "$RES/$name-decode.json" | tee "$RES/$name-decode.err"
            echo "gpucheck rc=${PIPESTATUS[0]}" | tee -a "$RES/$name-decode.err"
            python3 gpu/results_table.py "$RES/$name-decode.json" --device "$DEV" | tee "$RES/$name-decode.md"
            save
        done ;;
    mixtral) shape mixtral-8x7b 8 4096 14336 2 1,2,4,8,16,64,256,1024,4096,16384 ;;
    deepseek) shape deepseek-v3 256 7168 2048 8 1,16,256,1024,4096,16384 ;;
    loadtime) # what packing saves at load time, transformers on the GPU (issue 20)
        W=/tmp/lt; rm -rf $W
        $M synth --arch qwen3_moe --layers 4 --experts 128 --hidden 2048 --intermediate 768 --vocab 32000 \
            --shards 4 $W/pe >/dev/null
        $M pack -q $W/pe $W/pk
        timeout 240 python3 gpu/load_time.py $W/pe $W/pk --rounds "${LT_ROUNDS:-5}" --device cuda --json "$RES/load-time.json" 2>&1 \
            | tee "$RES/load-time.txt"
        echo "load_time rc=${PIPESTATUS[0]}" | tee -a "$RES/load-time.txt"
        rm -rf $W ;;
    fp8) # FP8 block-scaled packed experts (dequantized to BF16 as read) against their per-expert source
        W=/tmp/fp8; rm -rf $W
        $M synth --arch deepseek_v3 --layers 2 --experts 64 --hidden 2048 --intermediate 1024 --quant fp8 $W/pe >/dev/null
        $M pack -q $W/pe $W/pk
        timeout 300 $M gpucheck $W/pk --layer 1 --reference $W/pe --topk 8 --tokens 1,64,1024,8192 --json \
            > "$RES/fp8.json" 2> "$RES/fp8.err"
        echo "gpucheck fp8 rc=$?" | tee -a "$RES/fp8.err"
        rm -rf $W ;;
    e2e) # a packed checkpoint against its per-expert source (--reference), and pack vs cp -r here
        W=/tmp/e2e; rm -rf $W; mkdir -p $W/bench
        echo "== e2e: synth -> pack -> gpucheck --reference"
        if [ "${E2E_SKIP_REF:-}" != 1 ]; then
        $M synth --arch qwen3_moe --layers 1 --experts 128 --hidden 2048 --intermediate 768 --vocab 2048 $W/pe >/dev/null
        $M pack -q $W/pe $W/pk
        timeout 200 $M gpucheck $W/pk --reference $W/pe --topk 8 --tokens 1,64,1024,8192 2>&1 | tee "$RES/e2e-reference.txt"
        echo "gpucheck --reference rc=${PIPESTATUS[0]}" | tee -a "$RES/e2e-reference.txt"
        fi
        echo "== pack vs cp -r ($(nproc) cores)"
        $M synth --arch qwen3_moe --layers 4 --experts 128 --hidden 2048 --intermediate 768 --vocab 2048 \
            --shards 4 $W/bench/src >/dev/null
        python3 bench/pack_vs_cp.py $M $W/bench ${PACK_SWEEP:+--sweep} 2>&1 | tee "$RES/pack-vs-cp${PACK_SWEEP:+-sweep}.txt"
        rm -rf $W ;;
    parity*)
        archs=${step#parity}; archs=${archs#:}
        echo "== parity ${archs:-all}"
        timeout 300 python3 tests/parity/transformers_parity.py --moepack $M --work /tmp/parity \
            ${archs:+--arch $archs} --json "$RES/parity${archs:+-$archs}.json" > "$RES/parity${archs:+-$archs}.txt" 2>&1
        echo "parity rc=$?"; tail -14 "$RES/parity${archs:+-$archs}.txt" ;;
    hfmatch)
        echo "== hfmatch"
        timeout 120 python3 tests/parity/validate_hfmatch.py --json "$RES/hfmatch.json" > "$RES/hfmatch.txt" 2>&1
        echo "hfmatch rc=$?"; tail -3 "$RES/hfmatch.txt" ;;
    bench) # issue 18: pack and unpack against cp -r (+ sync) of the same bytes on this machine
        W=/tmp/bench; rm -rf $W
        { echo "machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, kernel $(uname -r)"
          df -hT /tmp | tail -1; } | tee "$RES/bench-machine.txt"
        $M synth --arch qwen3_moe --layers 4 --experts 128 --hidden 2048 --intermediate 768 --vocab 2048 \
            --shards 4 $W/src >/dev/null
        timeout 200 python3 bench/pack_vs_cp.py $M $W --rounds "${ROUNDS:-3}" --disk --shard-size 1GB \
            --only pack,pack-nofsync,pack-nofsync-nomanifest,unpack,unpack-nofsync,pack-nofsync-1GB 2>&1 | tee "$RES/bench-warm.txt"
        save
        if sync && echo 3 2>/dev/null > /proc/sys/vm/drop_caches; then
            timeout 120 python3 bench/pack_vs_cp.py $M $W --rounds 2 --cold --disk --only pack,unpack 2>&1 | tee "$RES/bench-cold.txt"
        else
            echo "drop_caches cannot be written here: no cold runs" | tee "$RES/bench-cold.txt"
        fi
        rm -rf $W ;;
    *) echo "unknown step $step"; exit 2 ;;
    esac
    save
done
