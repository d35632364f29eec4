#!/bin/bash
# many_tensors.sh N ROUNDS BIN... — pack then unpack one checkpoint of about N tensors in one
# file (qwen3_moe, 500 experts per layer, tiny shapes: N/1500 layers), timing each build's
# `unpack --no-fsync` in interleaved rounds (BIN1 BIN2 ... BIN1 BIN2 ...): wall, user and sys
# seconds. Issue 45, item 10: unpack was quadratic in the tensors of one file.
set -eu
n=$1 rounds=$2
shift 2
tmp=$(mktemp -d /tmp/mpk-many-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
layers=$(( (n + 1499) / 1500 ))
"$1" synth --arch qwen3_moe --layers "$layers" --experts 500 --hidden 16 --intermediate 8 --vocab 16 \
    --shards 1 "$tmp/src" >/dev/null
"$1" pack "$tmp/src" "$tmp/packed" -q --no-fsync
python3 - "$tmp/src/model.safetensors" <<'PY'
import json, struct, sys
f = open(sys.argv[1], "rb")
n = struct.unpack("<Q", f.read(8))[0]
print("tensors in the unpacked file:", len(json.loads(f.read(n))) - 0)
PY
for r in $(seq "$rounds"); do
    for b in "$@"; do
        rm -rf "$tmp/unp"
        /usr/bin/time -f "round $r $b: unpack wall %e s, user %U s, sys %S s, max RSS %M KiB" \
            "$b" unpack "$tmp/packed" "$tmp/unp" -q --no-fsync
        cmp -s "$tmp/src/model.safetensors" "$tmp/unp/model.safetensors" || echo "round $r $b: output differs from the source"
    done
done
