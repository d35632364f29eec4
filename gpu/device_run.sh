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
# where drop_caches can be written), mpkz (issue 51: bench/mpkz_pack_bench.py at --threads 2
# and 8), round3 (issue 52, under 8 minutes, see round3 below:
# correctness first, test_gpu --device with the decode, fp8 and grouped_wgmma cases, then
# timings: decode at T = 1..16 on Mixtral and Qwen3, our grouped kernels against
# torch._grouped_mm at 4096 and 16384 tokens on Qwen3, fp8 against our BF16 grouped path on
# DeepSeek-V3; a table per step as it goes, all of them in DATE-DEVICE.md for gpu/results/);
# default: all of them but bench, mpkz and round3.
# Writes everything under $OUT (or ./gpu-out): test_gpu output, gpucheck JSON + SVG per shape,
# peer_torch JSON, the transformers parity results.
set -u
# results gather in $RES; on the device machine they come back as one archive in $OUT
RES=/tmp/gpu-results
rm -rf "$RES" && mkdir -p "$RES"
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$PWD/.carry/lib:$SITE/nvidia/cu13/lib
M=.carry/moepack
if [ "${ROUND3_DRY:-}" != 1 ]; then
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RES/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$RES/device.txt"
fi

# round3: issue 52's whole answer in one run. ROUND3_BUDGET seconds in all (default 470: under
# 8 minutes with the tables); every step's timeout is its own limit cut to what the budget has
# left, so a slow step costs the later ones, never the 8 minutes. Correctness first: test_gpu
# --device (every backend's cases against the CPU: decode, fp8 with the device-quantized weights
# compared exactly, grouped_wgmma). Then one gpucheck per timing step (checked against the fp64
# reference before it times anything), its table printed at once, the torch peer where the step
# asks for it. ROUND3_SHAPES replaces the timing steps, ";"-separated:
#   name E,H,I top-k tokens backends peer(0/1) limit_s
# ROUND3_DRY=1 prints the plan (each command with its limit if every step before it ran to its
# own) and runs nothing.
# Writes $RES/DATE-DEVICE.md (DEVICE from nvidia-smi's name: "NVIDIA H100 80GB HBM3" -> h100-80gb),
# to be committed as gpu/results/DATE-DEVICE.md; without $OUT it is copied there directly.
ROUND3_DEFAULT="mixtral-8x7b 8,4096,14336 2 1,2,4,8,16 decode,batched,grouped_cublas 0 100;\
qwen3-30b-a3b 128,2048,768 8 1,2,4,8,16,4096,16384 decode,batched,grouped,grouped_cublas,grouped_wgmma,grouped_tma 1 100;\
deepseek-v3 256,7168,2048 8 1024,4096 grouped,grouped_cublas,grouped_wgmma,grouped_tma,fp8 1 160"
r3_left() { # seconds a step may take: its limit, cut to the budget left (0: no time left); a dry
    # run charges every step its whole limit (the worst case), so its plan does not depend on time
    local left=$((R3_END - ${R3_DRY_USED:-SECONDS}))
    [ "$left" -lt "$1" ] && echo $((left > 0 ? left : 0)) || echo "$1"
}
r3_run() { # LIMIT OUTFILE ERRFILE CMD...: the command under its limit, or its plan in a dry run
    local lim out err; lim=$(r3_left "$1"); out=$2; err=$3; shift 3
    if [ "${ROUND3_DRY:-}" = 1 ]; then
        echo "  [${lim}s] $* > ${out##*/} 2> ${err##*/}"; R3_DRY_USED=$((R3_DRY_USED + lim)); return 0
    fi
    if [ "$lim" -lt 5 ]; then echo "  skipped (budget spent): $*" | tee -a "$err"; return 124; fi
    timeout "$lim" "$@" > "$out" 2> "$err"
}
r3_slug() { # nvidia-smi's name -> the results file's device part
    echo "$1" | tr 'A-Z' 'a-z' | sed 's/^nvidia //; s/ hbm[0-9a-z]*//; s/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//'
}
round3() {
    R3_END=$((SECONDS + ${ROUND3_BUDGET:-470}))
    [ "${ROUND3_DRY:-}" = 1 ] && R3_DRY_USED=$SECONDS
    local DEV md name shp k tokens backs peer limit E H I rc
    if [ -n "${ROUND3_DEVICE:-}" ]; then DEV=$ROUND3_DEVICE # a dry run, or a plumbing test without a GPU
    elif [ "${ROUND3_DRY:-}" = 1 ]; then DEV="NVIDIA H100 80GB HBM3"
    else DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); fi
    md="$RES/$(date +%F)-$(r3_slug "$DEV").md"
    echo "== round3 on $DEV, ${ROUND3_BUDGET:-470} s budget; results: ${md##*/}"
    { echo "# GPU round 3 (issue 52): $DEV, $(date +%F)"; echo
      echo "\`bash gpu/device_run.sh round3\` at $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(cat "$RES/device.txt" 2>/dev/null | tr '\n' ' ')"
      echo; } > "$md"
    echo "== correctness: test_gpu --device"
    r3_run 90 "$RES/round3-test_gpu.txt" "$RES/round3-test_gpu.err" .carry/test_gpu --device; rc=$?
    [ "${ROUND3_DRY:-}" = 1 ] || { cat "$RES/round3-test_gpu.txt" "$RES/round3-test_gpu.err"; echo "test_gpu rc=$rc"; }
    { echo "## Correctness: test_gpu --device (rc=$rc)"; echo; echo '```'
      cat "$RES/round3-test_gpu.txt" 2>/dev/null | grep -E '^  T=|skipped|refused'; echo '```'; echo; } >> "$md"
    save
    IFS=";" read -r -a specs <<< "${ROUND3_SHAPES:-$ROUND3_DEFAULT}"
    for spec in "${specs[@]}"; do
        read -r name shp k tokens backs peer limit <<< "$spec"
        [ -n "$name" ] || continue
        IFS=, read -r E H I <<< "$shp"
        echo "== $name E,H,I=$shp top-$k T=$tokens: $backs"
        local save_in=()
        [ "$peer" = 1 ] && save_in=(--save-inputs "/tmp/in-$name")
        rm -rf "/tmp/in-$name"; mkdir -p "/tmp/in-$name"
        r3_run "$limit" "$RES/$name-r3.json" "$RES/$name-r3.err" $M gpucheck --synthetic "$shp" --topk "$k" \
            --tokens "$tokens" --runs 20 --backends "$backs" --json "${save_in[@]}"; rc=$?
        [ "${ROUND3_DRY:-}" = 1 ] || { grep -E '^cuda|skipped' "$RES/$name-r3.err"; echo "gpucheck rc=$rc"; }
        local pj=""
        if [ "$peer" = 1 ]; then
            r3_run 60 "$RES/$name-r3-peer.txt" "$RES/$name-r3-peer.err" python3 gpu/peer_torch.py --E "$E" --H "$H" \
                --I "$I" --topk "$k" --tokens "$tokens" --inputs "/tmp/in-$name" --json "$RES/$name-r3-peer.json"
            [ -s "$RES/$name-r3-peer.json" ] && pj="$RES/$name-r3-peer.json"
        fi
        rm -rf "/tmp/in-$name"
        [ "${ROUND3_DRY:-}" = 1 ] && continue
        { echo "## $name (gpucheck rc=$rc)"; echo
          if [ -s "$RES/$name-r3.json" ]; then python3 gpu/results_table.py "$RES/$name-r3.json" $pj --device "$DEV"
          else echo "no gpucheck JSON: $(tail -2 "$RES/$name-r3.err" | tr '\n' ' ')"; fi; echo; } | tee -a "$md"
        save
    done
    if [ "${ROUND3_DRY:-}" = 1 ]; then rm -f "$md"
    elif [ -z "${OUT:-}" ]; then mkdir -p gpu/results && cp "$md" gpu/results/; fi
    echo "== round3 done in $SECONDS s"
}

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
    [ "${ROUND3_DRY:-}" = 1 ] && return 0
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/results.tgz" -C "$RES" .; else rm -rf gpu-out && cp -r "$RES" gpu-out; fi
}
for step in "${steps[@]}"; do
    echo "== step $step at $(date +%T)"
    case $step in
    test)
        echo "== test_gpu --device"
        timeout 120 .carry/test_gpu --device 2>&1 | tee "$RES/test_gpu.txt" ;;
    qwen3) shape qwen3-30b-a3b 128 2048 768 8 1,4,16,64,256,1024,4096,16384 ;;
    round3) # issue 52 in one run of under 8 minutes; see round3_plan above
        round3 ;;
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
    mpkz) # issue 51: pack straight from .mpkz against pack of the plain files (and decompress +
        # pack), warm, where the machine has cores to spare beside --threads (on the 2-core dev VM
        # the syncer and the kernel's writeback share the 2 cores with the decoding)
        echo "machine: $(nproc) cores, kernel $(uname -r)" | tee "$RES/mpkz-machine.txt"
        for t in 2 8; do
            timeout 150 python3 bench/mpkz_pack_bench.py .carry 7 $t 2>&1 | tee "$RES/mpkz-pack-threads$t.txt"
        done ;;
    *) echo "unknown step $step"; exit 2 ;;
    esac
    save
done
