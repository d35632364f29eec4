#!/bin/sh
# ci_recipe.sh MOEPACK SRCROOT — docs/ci.md's recipe (scripts/ci_verify.sh) on a synth checkpoint:
# exit 0 and a parseable report on a clean conversion, exit 3 naming the tensor after one byte
# of DST changes.
set -eu
M=$1
root=$2
tmp=$(mktemp -d /tmp/mpk-ci-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$M" synth --arch qwen3_moe --experts 4 "$tmp/src" >/dev/null
MOEPACK=$M sh "$root/scripts/ci_verify.sh" "$tmp/src" "$tmp/dst" "$tmp/report.json"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['schema'] == 'moepack.verify/1' and d['identical'] and not d['differences']" "$tmp/report.json"
# one byte of a packed expert tensor changed
python3 - "$tmp/dst/model.safetensors" <<'PY'
import json, struct, sys
with open(sys.argv[1], "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
    name = next(k for k in sorted(h) if k.endswith("mlp.experts.down_proj"))
    f.seek(8 + n + h[name]["data_offsets"][0] + 10)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))
PY
set +e
MOEPACK=$M sh "$root/scripts/ci_verify.sh" --verify-only "$tmp/src" "$tmp/dst" "$tmp/report.json"
rc=$?
set -e
[ "$rc" = 3 ] || { echo "ci_recipe: expected exit 3 after a changed byte, got $rc" >&2; exit 1; }
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert not d['identical'] and [x['kind'] for x in d['differences']] == ['content'] and d['differences'][0]['name'].endswith('mlp.experts.down_proj'), d" "$tmp/report.json"
echo "ci_recipe: ok"
