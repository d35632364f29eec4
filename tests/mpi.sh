#!/bin/bash
# mpi.sh MOEPACK — moepack under mpirun (1, 2, 3 and 5 ranks on this host) against the same
# commands run as one process: the same files byte for byte (pack, unpack, FP8 pack kept and
# dequantized, convert with a spec, one output shard split between ranks, compress and
# decompress), the same hashes, reports and verdicts (hash, hash --write, verify DST, verify SRC
# DST, diff), a "ranks" report in which every rank did its part, a rank killed mid-run
# (non-zero exit, nothing at DST, no staging directory left behind by a dead rank other than 0;
# a dead rank 0's is removed by the next run), ranks reading other sources at the same path
# (mpirun --wdir) refused before writing, --resume refused, and a command that does not
# split its work (synth) run by rank 0 alone. Exit 77 (skipped) without mpirun
# or without MPI built in.
set -u
M=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
command -v mpirun >/dev/null || { echo "mpi: no mpirun: skipped"; exit 77; }
"$M" version | grep -q "mpi=yes" || { echo "mpi: moepack built without MPI: skipped"; exit 77; }
# Open MPI's own allocations at start-up stay until exit: LeakSanitizer would report them
[ -n "${MPK_SANITIZED:-}" ] && export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
# (root in CI containers; --oversubscribe: 5 ranks on 2 cores)
MPR=(mpirun --allow-run-as-root --oversubscribe)
tmp=$(mktemp -d /tmp/mpk-mpi-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { # DESCRIPTION COMMAND...: the command succeeds
    local what=$1; shift
    if "$@"; then ok; else bad "$what"; fi
}
json() { # FILE PYTHON-EXPR over d
    python3 -c "import json, sys; d = json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$1"
}

# sources: a per-expert Qwen3-MoE checkpoint, a DeepSeek-V3-style FP8 one, a spec file
"$M" synth --arch qwen3_moe --layers 2 --experts 16 --hidden 256 --intermediate 128 --vocab 512 --shards 3 \
    "$tmp/src" >/dev/null || { echo "mpi: synth failed"; exit 1; }
"$M" synth --arch deepseek_v3 --layers 2 --experts 8 --hidden 256 --intermediate 256 --vocab 512 --quant fp8 \
    "$tmp/fp8" >/dev/null || { echo "mpi: synth fp8 failed"; exit 1; }
"$M" presets qwen3_moe > "$tmp/spec.json"

# name|command after SRC DST — each run once as one process (the reference), then under mpirun
cases=(
    "pack|pack src @ --max-shard-size 1MB --mem 4MiB"
    "pack-one-shard|pack src @ --mem 2MiB"
    "unpack|unpack ref-pack @"
    "fp8-keep|pack fp8 @ --max-shard-size 1MB"
    "fp8-dequant|pack fp8 @ --dequantize --max-shard-size 1MB"
    "convert|convert src @ --spec spec.json --max-shard-size 1MB"
    "compress|compress ref-pack @"
    "decompress|decompress ref-compress @"
)
cd "$tmp" || exit 1
for c in "${cases[@]}"; do
    name=${c%%|*} cmd=${c#*|}
    # shellcheck disable=SC2086
    "$M" ${cmd/@/ref-$name} -q || bad "reference $name"
done
for n in 1 2 3 5; do
    for c in "${cases[@]}"; do
        name=${c%%|*} cmd=${c#*|}
        out=mpi$n-$name
        # shellcheck disable=SC2086
        if ! "${MPR[@]}" -n $n "$M" ${cmd/@/$out} --json > "$out.json" 2> "$out.err"; then
            bad "$n ranks: $name failed: $(tail -3 "$out.err")"
            continue
        fi
        check "$n ranks: $name gives the files of one process" diff -r "ref-$name" "$out"
        check "$n ranks: $name reports $n ranks" json "$out.json" "len(d['ranks']) == $n and sorted(r['rank'] for r in d['ranks']) == list(range($n)) and all(r['host'] and r['seconds'] >= 0 for r in d['ranks'])"
        check "$n ranks: $name: the ranks wrote every byte once" json "$out.json" "sum(r['bytes_written'] for r in d['ranks']) == d.get('bytes', d.get('bytes_out'))"
        check "$n ranks: $name: every rank wrote" json "$out.json" "all(r['bytes_written'] > 0 for r in d['ranks'])"
        rm -rf "$out"
    done
done

# hash and verify: the same digest and verdicts; hash --write the same manifest
"$M" hash ref-pack --json > hash1.json
for n in 2 3; do
    "${MPR[@]}" -n $n "$M" hash ref-pack --json > hash$n.json 2>/dev/null || bad "$n ranks: hash failed"
    check "$n ranks: hash gives one process's digest" json hash$n.json \
        "d['digest'] == json.load(open('hash1.json'))['digest'] and d['tensors'] == json.load(open('hash1.json'))['tensors'] and len(d['ranks']) == $n"
    check "$n ranks: every rank hashed" json hash$n.json "all(r['bytes_read'] > 0 for r in d['ranks'])"
    "${MPR[@]}" -n $n "$M" verify ref-pack -q >/dev/null 2>&1
    rc=$?
    [ $rc = 0 ] && ok || bad "$n ranks: verify of an intact checkpoint: exit $rc"
    cp -r ref-pack rewritten && rm rewritten/moepack.manifest.json
    "${MPR[@]}" -n $n "$M" hash rewritten --write -q >/dev/null 2>&1 || bad "$n ranks: hash --write failed"
    check "$n ranks: hash --write writes one process's manifest" json rewritten/moepack.manifest.json \
        "d['digest'] == json.load(open('hash1.json'))['digest']"
    rm -rf rewritten
done
cp -r ref-pack changed
python3 - changed <<'PY'
import glob, json, struct, sys
path = sorted(glob.glob(sys.argv[1] + "/*.safetensors"))[-1]
with open(path, "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    f.seek(8 + n + 100)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))
PY
"${MPR[@]}" -n 3 "$M" verify changed --json > changed.json 2>/dev/null
rc=$?
[ $rc = 3 ] && ok || bad "3 ranks: verify of a changed checkpoint: exit $rc, not 3"
check "3 ranks: verify names the one changed tensor" json changed.json "len(d['differences']) == 1 and d['differences'][0]['kind'] == 'content'"
# verify SRC DST (recomputed, the work items shared) and diff: one process's report and exit status
same_report() { # A.json B.json: the same document but for the timings
    python3 - "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for d in (a, b):
    d.pop("seconds", None)
b.pop("ranks")
sys.exit(0 if a == b else 1)
PY
}
for what in "verify src ref-pack" "verify src changed" "verify fp8 ref-fp8-dequant" "diff fp8 ref-fp8-dequant"; do
    # shellcheck disable=SC2086
    "$M" $what --json > one.json 2>/dev/null
    want=$?
    for n in 2 3; do
        # shellcheck disable=SC2086
        "${MPR[@]}" -n $n "$M" $what --json > many.json 2>/dev/null
        rc=$?
        [ $rc = $want ] && ok || bad "$n ranks: $what: exit $rc, one process $want"
        check "$n ranks: $what gives one process's report" same_report one.json many.json
        check "$n ranks: $what: every rank compared" json many.json "len(d['ranks']) == $n and all(r['bytes_read'] > 0 for r in d['ranks'])"
    done
done

# a rank killed at its 3rd write (MOEPACK_FAULT_RANK arms the fault hook in that rank only)
for r in 1 2 0; do
    rm -rf killed .killed.*
    MOEPACK_FAULT_RANK=$r MOEPACK_FAULT=3:kill "${MPR[@]}" -n 3 "$M" pack src killed --max-shard-size 1MB \
        --mem 4MiB --no-copy-range >/dev/null 2>&1
    rc=$?
    [ $rc != 0 ] && ok || bad "rank $r killed: the job exited 0"
    [ ! -e killed ] && ok || bad "rank $r killed: DST exists"
    if [ $r != 0 ]; then
        left=$(ls -A | grep -c '^\.killed\.moepack-tmp')
        [ "$left" = 0 ] && ok || bad "rank $r killed: the staging directory was left behind"
    fi
done
"${MPR[@]}" -n 3 "$M" pack src killed --max-shard-size 1MB --json > again.json 2>/dev/null || bad "the run after a killed rank 0 failed"
check "the run after a killed rank 0 removed its staging directory" json again.json "d['stale_removed'] >= 1"
check "... and left none of its own" test "$(ls -A | grep -c '^\.killed\.moepack-tmp')" = 0
check "... and wrote one process's files" diff -r ref-pack killed

# ranks that plan different conversions (MPMD: rank 1 given another copy of the source) fail
# together, naming the rule (MPK_E_CHANGED: exit 1), with nothing at DST and no staging left
cp -r src src-copy
"${MPR[@]}" -n 1 "$M" pack src differ : -n 1 "$M" pack src-copy differ > differ.out 2>&1
rc=$?
[ $rc = 1 ] && ok || bad "ranks planning differently: exit $rc, not 1"
check "... the error says so" grep -q "planned a different conversion than rank 0" differ.out
check "... nothing at DST, no staging directory" test ! -e differ -a "$(ls -A | grep -c '^\.differ\.moepack-tmp')" = 0

# ranks started in other directories whose SRC has the same path, names and shapes but other
# bytes (mpirun --wdir A ... : --wdir B ...; a node-local copy per host): the plan is the same,
# the content not. Reproducer: the job wrote a mix of A's and B's tensors and exited 0. They fail
# before writing (MPK_E_CHANGED: exit 1), saying the ranks see different sources
mkdir -p wdA wdB wdC
"$M" synth --arch qwen3_moe --layers 2 --experts 8 --hidden 128 --intermediate 64 --shards 2 --seed 1 wdA/src >/dev/null
"$M" synth --arch qwen3_moe --layers 2 --experts 8 --hidden 128 --intermediate 64 --shards 2 --seed 2 wdB/src >/dev/null
cmp -s wdA/src/model.safetensors.index.json wdB/src/model.safetensors.index.json || bad "wdir: the two sources should differ in bytes only"
"${MPR[@]}" -n 1 --wdir "$tmp/wdA" "$M" pack src "$tmp/wdout" : -n 1 --wdir "$tmp/wdB" "$M" pack src "$tmp/wdout" > wd.out 2>&1
rc=$?
[ $rc = 1 ] && ok || bad "ranks seeing other bytes at the same SRC: exit $rc, not 1"
check "... the error says the ranks see different sources" grep -q "the MPI ranks see different sources: model-00001-of-00002.safetensors on rank 1 differs from rank 0's (its tensor bytes)" wd.out
check "... nothing at DST, no staging directory" test ! -e wdout -a "$(ls -A | grep -c '^\.wdout\.moepack-tmp')" = 0
# the same tensors, another config.json
cp -r wdA/src wdC/src
python3 -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); d['rope_theta']=12345.0; json.dump(d, open(p,'w'))" wdC/src/config.json
"${MPR[@]}" -n 1 --wdir "$tmp/wdA" "$M" pack src "$tmp/wdout" : -n 1 --wdir "$tmp/wdC" "$M" pack src "$tmp/wdout" > wd.out 2>&1
rc=$?
[ $rc = 1 ] && ok || bad "ranks seeing another config.json: exit $rc, not 1"
check "... the error names config.json" grep -q "the MPI ranks see different sources: config.json on rank 1" wd.out
check "... nothing at DST, no staging directory" test ! -e wdout -a "$(ls -A | grep -c '^\.wdout\.moepack-tmp')" = 0
# identical copies (other inodes and times) are the same sources: one process's files
rm -rf wdout wdC/src && cp -r wdA/src wdC/src && touch wdC/src/*
(cd wdA && "$M" pack src "$tmp/wdref" -q) || bad "wdir: reference pack"
"${MPR[@]}" -n 1 --wdir "$tmp/wdA" "$M" pack src "$tmp/wdout" -q : -n 1 --wdir "$tmp/wdC" "$M" pack src "$tmp/wdout" -q > wd.out 2>&1 \
    || bad "ranks reading identical copies failed: $(tail -3 wd.out)"
check "... and wrote one process's files" diff -r wdref wdout

# --resume is refused under MPI (usage: exit 2), nothing written
"${MPR[@]}" -n 2 "$M" pack src resumed --resume -q >/dev/null 2>&1
rc=$?
[ $rc = 2 ] && ok || bad "--resume under 2 ranks: exit $rc, not 2"
[ ! -e resumed ] && ok || bad "--resume under 2 ranks wrote DST"
# a command that does not split its work runs on rank 0 alone
"${MPR[@]}" -n 3 "$M" synth --arch mixtral solo > solo.out 2>&1
rc=$?
[ $rc = 0 ] && ok || bad "synth under 3 ranks: exit $rc: $(tail -3 solo.out)"
check "synth under 3 ranks wrote one checkpoint" test -f solo/config.json
check "... and printed once" test "$(grep -c 'solo' solo.out)" -le 2

echo "mpi: $pass passed, $fail failed"
[ $fail = 0 ]
