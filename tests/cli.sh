#!/bin/sh
# cli.sh MOEPACK — the command line as a user and a CI pipeline see it: exit codes, usage
# errors, --json documents (parsed), --help texts. Each check names what it proves; the first
# failure stops the script with exit 1.
set -u
M=$1
MATERIAL=${MPK_MATERIAL:-$(dirname "$0")/../../shared/safetensors-material}
tmp=$(mktemp -d /tmp/mpk-cli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
# expect CODE DESCRIPTION -- COMMAND...: the command exits with CODE
expect() {
  want=$1 what=$2
  shift 3
  "$@" >"$tmp/out" 2>"$tmp/err"
  got=$?
  if [ "$got" != "$want" ]; then
    echo "FAIL: $what: '$*' exited $got, expected $want" >&2
    sed 's/^/  stdout: /' "$tmp/out" | head -5 >&2
    sed 's/^/  stderr: /' "$tmp/err" | head -5 >&2
    fails=$((fails + 1))
  else
    echo "ok: $what"
  fi
}
# json_check DESCRIPTION PYTHON-EXPRESSION: the last command's stdout parses as JSON and the
# expression over it (as d) is true
json_check() {
  if python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$tmp/out"; then
    echo "ok: $1"
  else
    echo "FAIL: $1: $(head -c 300 "$tmp/out")" >&2
    fails=$((fails + 1))
  fi
}

# presets (issue 16)
expect 0 "presets --json" -- "$M" presets --json
json_check "presets --json is an array of {name, description, model_types}" \
  "isinstance(d, list) and len(d) >= 17 and all(set(p) == {'name', 'description', 'model_types'} for p in d) and any(p['name'] == 'nemotron_h' and 'nemotron_h' in p['model_types'] for p in d) and any('glm4_moe_lite' in p['model_types'] for p in d)"
expect 0 "presets NAME prints the preset's spec" -- "$M" presets lfm2_moe
json_check "presets lfm2_moe is its spec" "d['name'] == 'lfm2_moe' and d['converters'][0]['target'] == 'feed_forward.experts.gate_up_proj'"
cp "$tmp/out" "$tmp/spec.json"
expect 0 "synth lfm2_moe" -- "$M" synth --arch lfm2_moe "$tmp/lfm"
expect 0 "a preset's printed spec converts as a spec file" -- "$M" convert "$tmp/lfm" "$tmp/lfm-c" --spec "$tmp/spec.json" -q
expect 0 "... and the result verifies" -- "$M" verify "$tmp/lfm" "$tmp/lfm-c"
expect 1 "presets with an unknown name" -- "$M" presets bogus
expect 2 "presets with an unknown option" -- "$M" presets --bogus
expect 2 "presets with two names" -- "$M" presets mixtral qwen3_moe
# every preset, with its own synth checkpoint: pack (preset from config.json), verify, unpack gives
# the source shards back byte for byte; the model types of transformers 5.17's mapping that
# tests/parity ran are each claimed by one preset
"$M" presets --json > "$tmp/presets.json"
n=0
for p in $(python3 -c "import json, sys; print(' '.join(x['name'] for x in json.load(open(sys.argv[1]))))" "$tmp/presets.json"); do
  d=$tmp/every-$p
  if "$M" synth --arch "$p" "$d/src" >/dev/null 2>"$tmp/err" && "$M" pack -q "$d/src" "$d/pk" 2>"$tmp/err" \
     && "$M" verify -q "$d/src" "$d/pk" >/dev/null 2>"$tmp/err" && "$M" unpack -q "$d/pk" "$d/up" 2>"$tmp/err" \
     && (for f in "$d"/src/*.safetensors; do cmp -s "$f" "$d/up/${f##*/}" || exit 1; done); then
    n=$((n + 1))
  else
    echo "FAIL: preset $p: synth -> pack -> verify -> unpack: $(head -c 300 "$tmp/err")" >&2; fails=$((fails + 1))
  fi
  rm -rf "$d"
done
echo "ok: $n presets: synth -> pack -> verify -> unpack byte-identical"
cp "$tmp/presets.json" "$tmp/out"
json_check "... transformers 5.17's MoE model types each have a preset" \
  "all(sum(t in p['model_types'] for p in d) == 1 for t in ['granitemoe', 'granitemoehybrid', 'cohere2_moe', 'mellum', 'deepseek_v32', 'mimo_v2_flash', 'axk1', 'llama4_text', 'lfm2_moe', 'qwen3_5_moe_text', 'glm_moe_dsa', 'solar_open'])"

# --compress on the conversion commands (issue 15)
expect 2 "--level without --compress" -- "$M" pack "$tmp/lfm" "$tmp/x" --level 3
expect 2 "--compress with --resume" -- "$M" pack "$tmp/lfm" "$tmp/x" --compress --resume
expect 2 "--level out of range" -- "$M" pack "$tmp/lfm" "$tmp/x" --compress --level 30
[ ! -e "$tmp/x" ] || { echo "FAIL: a usage error wrote $tmp/x" >&2; fails=$((fails + 1)); }
expect 0 "pack --compress" -- "$M" pack "$tmp/lfm" "$tmp/z" --compress -q
ls "$tmp/z" | grep -q '\.safetensors\.mpkz$' && ! ls "$tmp/z" | grep -q '\.safetensors$' \
  && echo "ok: pack --compress wrote containers only" \
  || { echo "FAIL: pack --compress wrote: $(ls "$tmp/z")" >&2; fails=$((fails + 1)); }
expect 0 "verify reads the compressed output" -- "$M" verify "$tmp/lfm" "$tmp/z"

# files of SRC named as the staging directory's records (moepack.run, moepack.shard.DIGEST.NAME)
# would be removed at the landing: they are skipped with a warning, never dropped unsaid
mkdir "$tmp/mk" && cp -r "$tmp/lfm"/. "$tmp/mk"/ && echo x > "$tmp/mk/moepack.run"
f=$(cd "$tmp/lfm" && ls *.safetensors | head -1)
cp "$tmp/lfm/$f" "$tmp/mk/moepack.shard.0123456789abcdef.$f"
for c in compress pack; do
  expect 0 "$c: SRC files with the staging records' names" -- "$M" $c "$tmp/mk" "$tmp/mk-$c" -q
  [ "$(grep -c "skipped $tmp/mk/moepack\.[a-z0-9.-]*: moepack's staging directory uses this name" "$tmp/err")" = 2 ] \
    && ! ls "$tmp/mk-$c" | grep -q '^moepack\.\(run\|shard\)' \
    && echo "ok: ... $c skipped both and said so" \
    || { echo "FAIL: $c of SRC with marker names: $(ls "$tmp/mk-$c"; cat "$tmp/err")" >&2; fails=$((fails + 1)); }
done
[ -e "$tmp/mk-compress/$f.mpkz" ] && echo "ok: ... the checkpoint's own files compressed" \
  || { echo "FAIL: compress skipped $f" >&2; fails=$((fails + 1)); }

# --quantize fp8-block128's quantization_config names every linear left unquantized, in the
# fields transformers (modules_to_not_convert) and vLLM (ignored_layers) read; config.json is
# written as Hugging Face tools write it (json.dumps indent=2) (issues 16, 17)
expect 0 "synth deepseek_v3" -- "$M" synth --arch deepseek_v3 --hidden 256 --intermediate 128 --experts 4 "$tmp/ds"
expect 0 "pack --quantize fp8-block128" -- "$M" pack "$tmp/ds" "$tmp/dsq" --quantize fp8-block128 -q
if python3 - "$tmp/dsq" <<'PY'
import json, os, struct, sys
d = sys.argv[1]
text = open(os.path.join(d, "config.json")).read()
cfg = json.loads(text)
assert text == json.dumps(cfg, indent=2) + "\n", "config.json is not json.dumps(indent=2)"
qc = cfg["quantization_config"]
assert qc["quant_method"] == "fp8" and qc["weight_block_size"] == [128, 128] and qc["activation_scheme"] == "dynamic"
skip = qc["modules_to_not_convert"]
assert qc["ignored_layers"] == skip
want = set()  # every 2-D float weight in the output, from the headers
for f in os.listdir(d):
    if f.endswith(".safetensors"):
        with open(os.path.join(d, f), "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            h = json.loads(fh.read(n))
        want |= {k[:-len(".weight")] for k, v in h.items()
                 if k.endswith(".weight") and len(v["shape"]) == 2 and v["dtype"] in ("BF16", "F16", "F32")}
assert set(skip) == want, (sorted(set(skip) ^ want))
assert "lm_head" in skip and "model.layers.1.mlp.gate" in skip and "model.layers.0.self_attn.o_proj" in skip
assert not any("experts." in m and "shared_experts" not in m for m in skip)
PY
then echo "ok: quantization_config lists every unquantized linear; config.json in HF style"
else echo "FAIL: quantization_config / config.json style" >&2; fails=$((fails + 1)); fi

# verify and diff find out from the headers what a conversion did to the quantization: no
# --quantize/--dequantize needed (issue 16); 'identical' only for bytes, 'within tolerance'
# otherwise (issue 17)
expect 0 "verify of a --quantize pack without flags" -- "$M" verify "$tmp/ds" "$tmp/dsq"
expect 3 "diff of a --quantize pack without flags: the quantization error at zero tolerance" -- "$M" diff "$tmp/ds" "$tmp/dsq"
expect 0 "synth an FP8 deepseek_v3" -- "$M" synth --arch deepseek_v3 --quant fp8 --hidden 256 --intermediate 128 --experts 4 "$tmp/dfp"
expect 0 "pack --dequantize" -- "$M" pack "$tmp/dfp" "$tmp/dq" --dequantize -q
expect 0 "verify of a --dequantize pack without flags" -- "$M" verify "$tmp/dfp" "$tmp/dq" --json
json_check "... bytes equal the reference dequantization: identical" "d['identical'] and d['within_tolerance'] and d['inexact'] == 0"
python3 - "$tmp/dq" <<'PY'
import json, os, struct, sys
d = sys.argv[1]  # the lowest mantissa bit of one BF16 expert value flipped
for f in sorted(os.listdir(d)):
    if f.endswith(".safetensors"):
        p = os.path.join(d, f)
        with open(p, "r+b") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            h = json.loads(fh.read(n))
            name = next((k for k, v in h.items() if k.endswith("experts.down_proj") and v["dtype"] == "BF16"), None)
            if name:
                fh.seek(8 + n + h[name]["data_offsets"][0] + 2 * 7)
                b = fh.read(1)
                fh.seek(-1, 1)
                fh.write(bytes([b[0] ^ 1]))
                break
PY
expect 0 "verify --rtol 0.01 of a value one BF16 ulp off" -- "$M" verify "$tmp/dfp" "$tmp/dq" --rtol 0.01
grep -q "within tolerance" "$tmp/out" && ! grep -q "identical" "$tmp/out" \
  && echo "ok: ... says 'within tolerance', not 'identical'" \
  || { echo "FAIL: verify text: $(cat "$tmp/out")" >&2; fails=$((fails + 1)); }
expect 0 "... --json" -- "$M" verify "$tmp/dfp" "$tmp/dq" --rtol 0.01 --json
json_check "... identical false, within_tolerance true, one inexact tensor" "not d['identical'] and d['within_tolerance'] and d['inexact'] == 1"
expect 3 "... and beyond the default tolerance it is a difference (exit 3)" -- "$M" verify "$tmp/dfp" "$tmp/dq" --rtol 0 --json
# computed outputs are written in pieces (--write-piece, default 64 KiB: small page-cache
# folios, issue 18): more write calls, the same bytes as one call per unit (without fsync: the
# page cache's path whatever --direct says)
for piece in 0 4096; do
  MOEPACK_FAULT=count "$M" --write-piece $piece pack -q --no-fsync --dequantize "$tmp/dfp" "$tmp/wp$piece" 2>"$tmp/wp$piece.err" \
    || { echo "FAIL: pack --dequantize with --write-piece $piece" >&2; fails=$((fails + 1)); }
done
n0=$(sed -n 's/.*fault points passed: \([0-9]*\).*/\1/p' "$tmp/wp0.err")
n4=$(sed -n 's/.*fault points passed: \([0-9]*\).*/\1/p' "$tmp/wp4096.err")
bytes=$(du -sb "$tmp/wp0" | cut -f1)
if [ -n "$n0" ] && [ -n "$n4" ] && [ "$n4" -gt $((n0 + bytes / 4096 / 2)) ] && diff -r "$tmp/wp0" "$tmp/wp4096" >/dev/null \
   && "$M" verify "$tmp/dfp" "$tmp/wp4096" >/dev/null; then
  echo "ok: 4 KiB write pieces: $n4 write-path calls against $n0 unsplit, identical output that verifies"
else
  echo "FAIL: write pieces: calls $n0 / $n4 for $bytes bytes, or the outputs differ" >&2; fails=$((fails + 1))
fi

# pure ranges at another offset within a page in their source than in the output are moved
# through a pipe in rounds (issue 18): expert slices of 384 KiB (more than one 256 KiB round),
# spread over 3 source shards; the same bytes as copy_file_range alone (--no-splice), both
# ways, and unpack gives back the source's files
"$M" synth --arch qwen3_moe --layers 3 --experts 4 --hidden 512 --intermediate 384 --vocab 64 --shards 3 \
  "$tmp/spl" >/dev/null
# (without fsync: they test the in-kernel path whatever --direct says; durable as well below;
# --bounce never: no copies through a buffer, which may take these moves, below)
expect 0 "pack of misaligned 384 KiB expert slices" -- "$M" --bounce never pack --no-fsync --json "$tmp/spl" "$tmp/spl-p"
json_check "... moved some through the pipe (spliced_bytes > 0)" "d['copy_file_range'] and d['spliced_bytes'] > 0 and d['direct_bytes'] == 0 and d['bounced_bytes'] == 0"
expect 0 "... with --no-splice" -- "$M" --bounce never --no-splice pack --no-fsync --json "$tmp/spl" "$tmp/spl-p0"
json_check "... none through the pipe" "d['copy_file_range'] and d['spliced_bytes'] == 0"
expect 0 "unpack of it (spliced too)" -- "$M" --bounce never unpack --no-fsync --json "$tmp/spl-p" "$tmp/spl-u"
json_check "... spliced_bytes > 0" "d['spliced_bytes'] > 0"
expect 0 "durable pack with --direct off (page cache: spliced as well)" -- "$M" --bounce never --direct off pack --json "$tmp/spl" "$tmp/spl-pd0"
json_check "... through the page cache" "d['spliced_bytes'] > 0 and d['direct_bytes'] == 0"
if diff -r "$tmp/spl-p" "$tmp/spl-p0" >/dev/null && "$M" verify "$tmp/spl" "$tmp/spl-p" >/dev/null \
   && (for f in "$tmp"/spl/*.safetensors; do cmp -s "$f" "$tmp/spl-u/${f##*/}" || exit 1; done); then
  echo "ok: spliced pack identical to copy_file_range's and verifies; its unpack gives back the source shards"
else
  echo "FAIL: spliced pack or unpack differs" >&2; fails=$((fails + 1))
fi

# bounce copies (issue 18): pure ranges read into a 256 KiB buffer, hashed there for the manifest
# and written from it, instead of moved in the kernel and read back; the same files and manifest
expect 0 "pack with --bounce always (every pure byte through the buffer)" -- \
  "$M" --bounce always pack --no-fsync --json "$tmp/spl" "$tmp/spl-b"
json_check "... bounced_bytes is every byte of the expert tensors, none spliced" \
  "d['bounced_bytes'] >= 3 * 4 * 3 * 384 * 512 * 2 and d['spliced_bytes'] == 0"
expect 0 "... --no-manifest: nothing to hash, nothing through the buffer" -- \
  "$M" --bounce always pack --no-fsync --no-manifest --json "$tmp/spl" "$tmp/spl-bn"
json_check "... bounced_bytes 0" "d['bounced_bytes'] == 0 and d['spliced_bytes'] > 0"
expect 0 "unpack, small per-expert outputs (auto: read back from the cache instead)" -- \
  "$M" unpack --no-fsync --threads 2 --json "$tmp/spl-b" "$tmp/spl-bu"
json_check "... bounced_bytes 0" "d['bounced_bytes'] == 0"
expect 0 "unpack with --bounce always" -- "$M" --bounce always unpack --no-fsync --threads 2 --json "$tmp/spl-b" "$tmp/spl-bu1"
json_check "... bounced_bytes > 0" "d['bounced_bytes'] > 0"
# auto: packed tensors of 128 and 64 MiB (too large to read back from the CPU's cache), every
# thread with an output shard of its own (4 shards, 2 threads), where copy_file_range copies
# bytes (ext2/3/4, tmpfs); with more threads than shards the others hash read-backs
"$M" synth --arch qwen3_moe --layers 1 --experts 64 --hidden 1024 --intermediate 512 --vocab 64 --shards 2 \
  "$tmp/bnc" >/dev/null
case $(stat -f -c %T "$tmp") in ext2/ext3|tmpfs) auto="> 0" ;; *) auto="== 0" ;; esac
expect 0 "pack of 192 MiB into 4 shards, --threads 2 ($(stat -f -c %T "$tmp"): bounced_bytes $auto)" -- \
  "$M" pack --no-fsync --threads 2 --max-shard-size 50MB --json "$tmp/bnc" "$tmp/bnc-2"
json_check "... bounced_bytes $auto" "d['bounced_bytes'] $auto and d['shards'] >= 4"
expect 0 "... --threads 8" -- "$M" pack --no-fsync --threads 8 --max-shard-size 50MB --json "$tmp/bnc" "$tmp/bnc-8"
json_check "... bounced_bytes 0 (idle threads hash)" "d['bounced_bytes'] == 0"
if diff -r "$tmp/spl-p" "$tmp/spl-b" >/dev/null && "$M" verify "$tmp/spl" "$tmp/spl-b" >/dev/null \
   && diff -r "$tmp/spl-bu" "$tmp/spl-bu1" >/dev/null && "$M" verify "$tmp/spl-bu1" >/dev/null \
   && (for f in "$tmp"/spl/*.safetensors; do cmp -s "$f" "$tmp/spl-bu1/${f##*/}" || exit 1; done) \
   && diff -r "$tmp/bnc-2" "$tmp/bnc-8" >/dev/null && "$M" verify "$tmp/bnc" "$tmp/bnc-2" >/dev/null; then
  echo "ok: bounce copies write the same files and manifest as the kernel's moves; unpack gives the source back"
else
  echo "FAIL: bounce copies differ from the kernel's moves" >&2; fails=$((fails + 1))
fi

# with --direct large durable runs write each shard's data with O_DIRECT (issue 18) when its
# bytes are in large units (4 MiB on average; --direct all: always), units put together block
# by block where they meet: the same bytes as through the page cache, with the pread engine too,
# verified, and unpack gives back the source's files; not when the output is compressed next
expect 0 "durable pack by default: through the page cache" -- "$M" pack --json "$tmp/spl" "$tmp/dio-auto"
json_check "... direct_bytes == 0" "d['direct_bytes'] == 0"
rm -rf "$tmp/dio-auto"
expect 0 "... --direct large, 3 MiB units: through the page cache" -- "$M" --direct large pack --json "$tmp/spl" "$tmp/dio-auto"
json_check "... direct_bytes == 0" "d['direct_bytes'] == 0"
expect 0 "durable pack writes directly (--direct all)" -- "$M" --direct all pack --json "$tmp/spl" "$tmp/dio-p"
json_check "... direct_bytes > 0, no in-kernel copies" "d['direct_bytes'] > 0 and not d['copy_file_range']"
expect 0 "... with the pread engine" -- "$M" --direct all --io-engine pread pack --json "$tmp/spl" "$tmp/dio-pr"
json_check "... direct_bytes > 0" "d['direct_bytes'] > 0"
expect 0 "durable unpack writes directly" -- "$M" --direct all unpack --json "$tmp/dio-p" "$tmp/dio-u"
json_check "... direct_bytes > 0" "d['direct_bytes'] > 0"
expect 0 "pack --compress does not (compressed from the page cache next)" -- "$M" --direct=all pack --json --compress "$tmp/spl" "$tmp/dio-z"
json_check "... direct_bytes == 0" "d['direct_bytes'] == 0"
"$M" synth --arch qwen3_moe --layers 2 --experts 8 --hidden 1024 --intermediate 512 --vocab 64 "$tmp/big" >/dev/null
expect 0 "--direct large, durable pack of 16 MiB tensors writes directly" -- "$M" --direct large pack --json "$tmp/big" "$tmp/big-p"
json_check "... direct_bytes > 0" "d['direct_bytes'] > 0"
"$M" verify "$tmp/big" "$tmp/big-p" >/dev/null && echo "ok: ... and verifies" \
  || { echo "FAIL: the direct pack of 16 MiB tensors does not verify" >&2; fails=$((fails + 1)); }
rm -rf "$tmp/big" "$tmp/big-p"
if diff -r "$tmp/dio-p" "$tmp/spl-pd0" >/dev/null && diff -r "$tmp/dio-pr" "$tmp/spl-p0" >/dev/null \
   && "$M" verify "$tmp/spl" "$tmp/dio-p" >/dev/null && "$M" verify "$tmp/dio-p" >/dev/null \
   && (for f in "$tmp"/spl/*.safetensors; do cmp -s "$f" "$tmp/dio-u/${f##*/}" || exit 1; done); then
  echo "ok: direct writes give the page cache's bytes, verify, and unpack gives back the source shards"
else
  echo "FAIL: direct writes differ" >&2; fails=$((fails + 1))
fi

# plan from config.json + model.safetensors.index.json alone, shards not downloaded (issue 16):
# every real pair in the material; a hole in the experts is named
if [ -d "$MATERIAL" ]; then
  for d in "$MATERIAL"/*/; do
    [ -f "$d/config.json" ] || continue
    name=$(basename "$d")
    rel=$tmp/rel-$name
    mkdir -p "$rel"
    cp "$d/config.json" "$rel/"
    for f in "$d"/model.safetensors.index.json*; do cp "$f" "$rel/model.safetensors.index.json"; done
    expect 0 "plan of $name from its index alone" -- "$M" plan "$rel"
    if [ "$name" = deepseek-ocr-2-deepseek_v2_moe ]; then  # deepseek_vl_v2, DeepseekOCR2ForCausalLM (issue 48)
      grep -q "^preset: deepseek_ocr2" "$tmp/out" && grep -q -- "-> model.language_model.layers.1.mlp.experts.gate_up_proj$" "$tmp/out" \
        && echo "ok: ... DeepSeek-OCR-2 planned with deepseek_ocr2 onto transformers' names" \
        || { echo "FAIL: DeepSeek-OCR-2 not planned with deepseek_ocr2" >&2; fails=$((fails + 1)); }
    fi
    if [ "$name" = granite-3.1-1b-a400m-granitemoe ]; then  # published fused: renamed as transformers v5 does
      grep -q "input_linear.weight$" "$tmp/out" && grep -q -- "-> model.layers.0.block_sparse_moe.experts.down_proj$" "$tmp/out" \
        && grep -q "router.layer.weight -> model.layers.0.block_sparse_moe.router.weight$" "$tmp/out" \
        || { echo "FAIL: GraniteMoE's published tensors are not planned onto transformers' names" >&2; fails=$((fails + 1)); }
    fi
    grep -q "names only" "$tmp/out" && grep -q "NOT checked" "$tmp/out" \
      || { echo "FAIL: plan of $name does not say shapes were not checked" >&2; fails=$((fails + 1)); }
  done
  hole=$tmp/rel-hole
  mkdir -p "$hole"
  cp "$MATERIAL/wizardlm-2-8x22b-mixtral/config.json" "$hole/"
  python3 -c "import json, sys; j = json.load(open(sys.argv[1])); del j['weight_map']['model.layers.7.block_sparse_moe.experts.3.w1.weight']; json.dump(j, open(sys.argv[2], 'w'))" \
    "$MATERIAL/wizardlm-2-8x22b-mixtral/model.safetensors.index.json" "$hole/model.safetensors.index.json"
  expect 1 "plan from an index with an expert missing" -- "$M" plan "$hole"
  grep -q "expert 3 is missing" "$tmp/err" && echo "ok: ... names the hole" \
    || { echo "FAIL: the hole is not named: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
  expect 1 "pack of a release without its shards still fails" -- "$M" pack "$hole" "$tmp/nope"
else
  echo "skip: no material at $MATERIAL"
fi

# every command: --help exits 0, has a description and an example, and mentions each option
# its parser takes (MOEPACK_LIST_OPTIONS makes the parser print its table); an unknown option
# is a usage error (exit 2) (issue 17)
cmds=$("$M" help | sed -n '/^Commands:/,/^$/p' | awk 'NF > 1 {print $1}')
[ "$(echo "$cmds" | wc -w)" -ge 15 ] || { echo "FAIL: help lists too few commands: $cmds" >&2; fails=$((fails + 1)); }
for c in $cmds; do
  expect 0 "$c --help" -- "$M" "$c" --help
  cp "$tmp/out" "$tmp/help"
  [ "$(wc -l < "$tmp/help")" -ge 4 ] && grep -q '^example: moepack ' "$tmp/help" \
    || { echo "FAIL: $c --help has no description or example" >&2; fails=$((fails + 1)); }
  for o in $(MOEPACK_LIST_OPTIONS=1 "$M" "$c" </dev/null 2>/dev/null | grep '^-'); do
    grep -q -- "$o\b" "$tmp/help" || { echo "FAIL: $c --help does not mention $o" >&2; fails=$((fails + 1)); }
  done
  expect 2 "$c with an unknown option" -- "$M" "$c" --no-such-option x y
done
expect 0 "help --help" -- "$M" help --help
grep -q "usage: moepack help" "$tmp/out" || { echo "FAIL: help --help" >&2; fails=$((fails + 1)); }
expect 0 "help COMMAND" -- "$M" help verify
expect 2 "help with an unknown command" -- "$M" help bogus
expect 2 "version with an unknown option" -- "$M" version --bogus
expect 2 "version with an argument" -- "$M" version extra
expect 2 "convert does not take --preset" -- "$M" convert "$tmp/lfm" "$tmp/x" --preset mixtral --spec "$tmp/spec.json"
expect 2 "plan does not take --force" -- "$M" plan "$tmp/lfm" --force
expect 2 "inspect does not take --write" -- "$M" inspect "$tmp/lfm" --write
expect 2 "decompress does not take --level" -- "$M" decompress "$tmp/z" "$tmp/x" --level 3

# synth says what it wrote; makes OUT's parents; demo DIR runs twice (issue 17)
expect 0 "synth --arch gpt_oss into a missing parent" -- "$M" synth --arch gpt_oss "$tmp/a/b/gpt"
grep -q "U8" "$tmp/out" && grep -q "experts packed" "$tmp/out" && ! grep -q "per-expert" "$tmp/out" \
  && echo "ok: synth --arch gpt_oss says MXFP4 (U8) and packed" \
  || { echo "FAIL: synth says: $(cat "$tmp/out")" >&2; fails=$((fails + 1)); }
expect 0 "demo DIR" -- "$M" demo "$tmp/demo"
expect 0 "demo DIR again" -- "$M" demo "$tmp/demo"

# gpucheck of FP8 packed experts (issue 20): dequantized with their block scales, against the CPU
# reference; --reference from the FP8 per-expert source agrees (gate first, expert order, the
# same codes and scales), from another source does not (exit 3); codes without scales: exit 1
"$M" synth --arch deepseek_v3 --layers 2 --experts 4 --hidden 256 --intermediate 256 --quant fp8 "$tmp/g8" >/dev/null
"$M" synth --arch deepseek_v3 --layers 2 --experts 4 --hidden 256 --intermediate 256 --quant fp8 --seed 7 \
  "$tmp/g8b" >/dev/null
"$M" pack -q "$tmp/g8" "$tmp/g8p"
expect 0 "gpucheck --cpu runs FP8 packed experts" -- "$M" gpucheck "$tmp/g8p" --layer 1 --tokens 1,5 --cpu
expect 0 "gpucheck --reference from the FP8 per-expert source" -- "$M" gpucheck "$tmp/g8p" --layer 1 --tokens 5 \
  --cpu --reference "$tmp/g8"
expect 3 "gpucheck --reference from another FP8 source disagrees" -- "$M" gpucheck "$tmp/g8p" --layer 1 \
  --tokens 5 --cpu --reference "$tmp/g8b"
python3 "$(dirname "$0")/st_rename.py" "$tmp/g8p" model.layers.1.mlp.experts.down_proj_scale_inv \
  model.layers.1.mlp.experts.down_proj_scales >/dev/null
expect 1 "gpucheck of FP8 codes without their scales" -- "$M" gpucheck "$tmp/g8p" --layer 1 --tokens 5 --cpu
grep -q "down_proj_scale_inv" "$tmp/err" && echo "ok: ... names the scale tensor it needs" \
  || { echo "FAIL: no scale tensor named: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }

# gpu/load_time.py (issue 20's load-time proof, run with transformers on the GPU machine): its
# rounds and report, here with --reader bytes (no torch); a directory without config.json refused
expect 0 "load_time.py --reader bytes" -- python3 "$(dirname "$0")/../gpu/load_time.py" "$tmp/g8" "$tmp/g8p" \
  --reader bytes --rounds 3 --json "$tmp/lt.json"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert len(d['times']['packed']) == 3 and len(d['times']['per-expert']) == 3 and d['ratio_min'] <= d['ratio_median'] <= d['ratio_max'] and d['ratio_min'] > 0, d" "$tmp/lt.json" \
  && echo "ok: load_time.py report" || { echo "FAIL: load_time.py report" >&2; fails=$((fails + 1)); }
expect 1 "load_time.py of a directory without config.json" -- python3 "$(dirname "$0")/../gpu/load_time.py" \
  "$tmp/g8" "$tmp" --reader bytes

# gpucheck --cpu: exit 0 when the CPU checks pass; --plot without GPU timings says so (issue 17)
expect 0 "gpucheck --cpu passes on the CPU" -- "$M" gpucheck --synthetic 4,32,16 --tokens 3 --cpu --plot "$tmp/p.svg"
if [ -e "$tmp/p.svg" ] || grep -q "not written: nothing was timed on a GPU" "$tmp/err"; then
  echo "ok: --plot wrote a plot or said why not"
else
  echo "FAIL: --plot wrote nothing and said nothing: $(cat "$tmp/err")" >&2; fails=$((fails + 1))
fi

# inspect lists shards in name order whatever the index's order; stacked or flattened experts
# are "packed" (issue 17)
expect 0 "synth with 3 shards" -- "$M" synth --shards 3 "$tmp/s3"
python3 - "$tmp/s3" <<'PY'
import json, sys
p = sys.argv[1] + "/model.safetensors.index.json"
j = json.load(open(p))
wm = j["weight_map"]
order = sorted(wm, key=lambda k: {"00001": 0, "00003": 1, "00002": 2}[wm[k][6:11]])
j["weight_map"] = {k: wm[k] for k in order}  # first appearance: shard 1, 3, 2
json.dump(j, open(p, "w"), indent=2)
PY
expect 0 "inspect of an index listing shards 1, 3, 2" -- "$M" inspect "$tmp/s3"
[ "$(grep -o 'model-0000[123]-of-00003' "$tmp/out" | tr '\n' ' ')" = "model-00001-of-00003 model-00002-of-00003 model-00003-of-00003 " ] \
  && echo "ok: ... lists them in order" || { echo "FAIL: shard order: $(head -5 "$tmp/out")" >&2; fails=$((fails + 1)); }
expect 0 "inspect --json of it" -- "$M" inspect "$tmp/s3" --json
json_check "... JSON shards in order" "[s['file'] for s in d['shards']] == sorted(s['file'] for s in d['shards'])"
mkdir -p "$tmp/dbrx"
python3 - "$tmp/dbrx/model.safetensors" <<'PY'
import json, struct, sys
names = {"transformer.blocks.0.ffn.experts.mlp.w1": [8, 4], "transformer.blocks.0.ffn.router.layer.weight": [2, 4]}
h, off = {}, 0
for n, sh in names.items():
    h[n] = {"dtype": "BF16", "shape": sh, "data_offsets": [off, off + 2 * sh[0] * sh[1]]}
    off += 2 * sh[0] * sh[1]
t = json.dumps(h).encode()
t += b" " * (-len(t) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(t)) + t + bytes(off))
PY
expect 0 "inspect of flattened stacked experts (DBRX's ffn.experts.mlp.w1)" -- "$M" inspect "$tmp/dbrx" --json
json_check "... expert_layout packed" "d['expert_layout'] == 'packed'"

# hints never repeat the message; a preset matching none of the experts is an error (issue 17)
expect 1 "pack into an existing DST" -- "$M" pack "$tmp/lfm" "$tmp/lfm-c"
[ "$(grep -o -- "--force" "$tmp/err" | wc -l)" = 1 ] && echo "ok: ... says --force once" \
  || { echo "FAIL: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
# an empty argument (`moepack pack "$SRC" "$OUT"` with OUT unset) and a DST ending in '.' or '..'
# are usage errors, nothing written (they used to stage ./..moepack-tmp.* and fail at the rename)
expect 2 "an empty DST" -- "$M" pack "$tmp/lfm" "" -q
grep -q "argument 2 is empty" "$tmp/err" && echo "ok: ... names the empty argument" \
  || { echo "FAIL: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
expect 2 "an empty SRC" -- "$M" hash ""
"$M" pack "$tmp/lfm" "$tmp/dot" -q
sum_before=$(cd "$tmp/dot" && ls -A | sort | md5sum)
expect 2 "--force into '.'" -- sh -c "cd '$tmp/dot' && exec '$M' pack '$tmp/lfm' . --force -q"
sum_after=$(cd "$tmp/dot" && ls -A | sort | md5sum)
grep -q "must end in the name of the directory" "$tmp/err" && [ "$sum_after" = "$sum_before" ] \
  && echo "ok: ... says why, DST untouched (no staging directory in it either)" \
  || { echo "FAIL: $(cat "$tmp/err"); $(ls -A "$tmp/dot")" >&2; fails=$((fails + 1)); }
expect 2 "pack with an unknown preset (a usage error)" -- "$M" pack "$tmp/lfm" "$tmp/x" --preset bogus
[ "$(grep -c "moepack presets" "$tmp/err")" = 1 ] && echo "ok: ... names 'moepack presets' once" \
  || { echo "FAIL: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
expect 1 "pack with a preset that matches none of the experts" -- "$M" pack "$tmp/ds" "$tmp/x" --preset mixtral
grep -q "matches none of the expert tensors" "$tmp/err" && [ ! -e "$tmp/x" ] && echo "ok: ... said, nothing written" \
  || { echo "FAIL: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }

# every --json report carries a "schema"; plan --json is JSON; the manifest records how DST was
# made and verify DST prints it (issue 17)
expect 0 "plan --json" -- "$M" plan "$tmp/lfm" --json
json_check "plan --json: schema, outputs with sources and ops" "d['schema'] == 'moepack.plan/1' and d['shapes_checked'] and any(o['name'].endswith('feed_forward.experts.gate_up_proj') and len(o['sources']) == 16 and o['ops'] == ['merge(dim=0)', 'concat(dim=1)'] for o in d['outputs'])"
expect 0 "pack --json" -- "$M" pack "$tmp/lfm" "$tmp/lfm-p" --json
json_check "pack --json schema" "d['schema'] == 'moepack.convert/1'"
for c in "inspect $tmp/lfm-p" "hash $tmp/lfm-p" "verify $tmp/lfm $tmp/lfm-p" "diff $tmp/lfm $tmp/lfm-p" "verify $tmp/lfm-p"; do
  expect 0 "$c --json" -- "$M" $c --json
  json_check "$c --json has its schema" "d['schema'] == 'moepack.' + {'inspect': 'inspect', 'hash': 'manifest', 'verify': 'verify', 'diff': 'diff'}['$c'.split()[0]] + '/1'"
done
expect 0 "compress --json" -- "$M" compress "$tmp/lfm" "$tmp/lfm-z" --json
json_check "compress --json schema" "d['schema'] == 'moepack.compress/1'"
expect 0 "gpucheck --json" -- "$M" gpucheck --synthetic 4,32,16 --tokens 3 --cpu --json
json_check "gpucheck --json schema" "d['schema'] == 'moepack.gpucheck/1'"
python3 - "$tmp/lfm-p/moepack.manifest.json" "$tmp/lfm" <<'PY' && echo "ok: the manifest records the provenance" || { echo "FAIL: manifest provenance" >&2; fails=$((fails + 1)); }
import json, sys
m = json.load(open(sys.argv[1]))
p = m["provenance"]
assert m["schema"] == "moepack.manifest/1"
assert p["command"] == "pack" and p["preset"] == "lfm2_moe" and len(p["spec_xxh3_128"]) == 32
assert p["source"] == "" and len(p["source_xxh3_128"]) == 32 and p["moepack_version"]  # no local path
assert p["options"]["quantize"] == "keep" and p["options"]["compress"] is False
PY
# (issue 46) the same conversion from two folders gives the same manifest: no local path in it
cp -r "$tmp/lfm" "$tmp/lfm-elsewhere"
"$M" pack -q "$tmp/lfm-elsewhere" "$tmp/lfm-p2b"
cmp -s "$tmp/lfm-p/moepack.manifest.json" "$tmp/lfm-p2b/moepack.manifest.json" \
  && echo "ok: the same manifest from another folder" || { echo "FAIL: the manifests of two folders differ" >&2; fails=$((fails + 1)); }
grep -q "$tmp" "$tmp/lfm-p2b/moepack.manifest.json" && { echo "FAIL: a local path in the manifest" >&2; fails=$((fails + 1)); } \
  || echo "ok: ... and no local path in it"
expect 0 "verify DST prints the provenance" -- "$M" verify "$tmp/lfm-p"
grep -q "made by: moepack .*, pack, preset lfm2_moe" "$tmp/out" && grep -q "^source: files xxh3-128 " "$tmp/out" \
  && echo "ok: ... it does" || { echo "FAIL: verify DST: $(cat "$tmp/out")" >&2; fails=$((fails + 1)); }

# diff and verify across dtypes and layouts: a packed BF16 checkpoint against its FP8 twin,
# a per-expert BF16 source against the FP8 packing: error figures, never false missing/extra
# or dtype/shape differences (issue 17)
expect 0 "pack the BF16 deepseek_v3" -- "$M" pack "$tmp/ds" "$tmp/dsp" -q
expect 0 "verify packed BF16 against packed FP8" -- "$M" verify "$tmp/dsp" "$tmp/dsq" --json
json_check "... identical (the quantization recomputed)" "d['identical'] and d['compared'] > 0"
for pair in "$tmp/dsp $tmp/dsq" "$tmp/ds $tmp/dsq"; do
  expect 3 "diff $(basename ${pair% *}) vs its FP8 packing at zero tolerance" -- "$M" diff $pair --json
  json_check "... only content differences with error figures" "d['differences'] and all(x['kind'] == 'content' and 0 < x['max_abs'] < 0.01 and x['cosine'] > 0.999 for x in d['differences'])"
  expect 0 "... within --atol 0.01" -- "$M" diff $pair --atol 0.01
done

# progress on a terminal (script(1) gives the command one) for every command that reads a lot;
# no ETA before a rate is known; none off a terminal or with -q (issue 17)
if command -v script >/dev/null 2>&1; then
  for c in "pack $tmp/ds $tmp/tty-p" "hash $tmp/ds" "verify $tmp/ds $tmp/dsq" "diff $tmp/ds $tmp/dsp" "compress $tmp/ds $tmp/tty-z" "unpack $tmp/dsp $tmp/tty-u"; do
    name=${c%% *}
    script -qec "$M $c" /dev/null < /dev/null | tr '\r' '\n' > "$tmp/tty"
    grep -q "^$name: \[#*\.*\] 100.0%" "$tmp/tty" && ! grep -q "  0.0% .*ETA 0s" "$tmp/tty" \
      && echo "ok: $name shows progress on a terminal" \
      || { echo "FAIL: $name progress: $(head -c 400 "$tmp/tty")" >&2; fails=$((fails + 1)); }
  done
  script -qec "$M hash $tmp/ds -q" /dev/null < /dev/null | tr '\r' '\n' > "$tmp/tty"
  ! grep -q "100.0%" "$tmp/tty" && echo "ok: -q hides it" || { echo "FAIL: hash -q shows progress" >&2; fails=$((fails + 1)); }
else
  echo "skip: no script(1) to give a command a terminal"
fi
"$M" hash "$tmp/ds" 2>"$tmp/err" >/dev/null
! grep -q "%" "$tmp/err" && echo "ok: no progress off a terminal" || { echo "FAIL: progress off a terminal" >&2; fails=$((fails + 1)); }

# the man page and the bash completion come from the command table (issue 17)
"$M" help --man > "$tmp/moepack.1"
head -1 "$tmp/moepack.1" | grep -q '^\.TH MOEPACK 1' || { echo "FAIL: help --man" >&2; fails=$((fails + 1)); }
for c in $cmds; do
  grep -q "^\.SS $c\$" "$tmp/moepack.1" || { echo "FAIL: the man page lacks $c" >&2; fails=$((fails + 1)); }
done
"$M" completion bash > "$tmp/completion.bash"
if command -v bash >/dev/null 2>&1; then
  got=$(PATH=$(dirname "$M"):$PATH bash -c '. "$1"; COMP_WORDS=(moepack pack --max); COMP_CWORD=2; _moepack; echo "${COMPREPLY[*]}"; COMP_WORDS=(moepack ver); COMP_CWORD=1; _moepack; echo "${COMPREPLY[*]}"' _ "$tmp/completion.bash")
  [ "$(echo $got | tr ' ' '\n' | sort | tr '\n' ' ')" = "--max-shard-size verify version " ] && echo "ok: bash completion completes commands and options" \
    || { echo "FAIL: completion gave: $got" >&2; fails=$((fails + 1)); }
fi
# the measurement and tuning options, before the command: completed there, each in 'moepack help'
# and the man page, a bad value a usage error
tuning=$(sed -n 's/^ *local i=1 tuning="\(.*\)"$/\1/p' "$tmp/completion.bash")
[ "$(echo $tuning | wc -w)" -ge 9 ] || { echo "FAIL: the completion lists no tuning options: $tuning" >&2; fails=$((fails + 1)); }
"$M" help > "$tmp/help"
for o in $tuning; do
  grep -q -- "^  $o\b" "$tmp/help" && grep -q -- "$(echo "$o" | sed 's/-/\\\\-/g')" "$tmp/moepack.1" \
    || { echo "FAIL: help or the man page does not mention $o" >&2; fails=$((fails + 1)); }
done
if command -v bash >/dev/null 2>&1; then
  got=$(PATH=$(dirname "$M"):$PATH bash -c '. "$1"; COMP_WORDS=(moepack --no-s); COMP_CWORD=1; _moepack; echo "${COMPREPLY[*]}"; COMP_WORDS=(moepack --direct all --no-simd ver); COMP_CWORD=4; _moepack; echo "${COMPREPLY[*]}"; COMP_WORDS=(moepack --xxh generic pack --max); COMP_CWORD=4; _moepack; echo "${COMPREPLY[*]}"' _ "$tmp/completion.bash")
  [ "$(echo $got | tr ' ' '\n' | sort | tr '\n' ' ')" = "--max-shard-size --no-simd --no-splice verify version " ] \
    && echo "ok: bash completion completes the tuning options, then commands and their options" \
    || { echo "FAIL: tuning completion gave: $got" >&2; fails=$((fails + 1)); }
fi
expect 2 "a tuning option with a bad value" -- "$M" --direct sometimes pack "$tmp/lfm" "$tmp/x"
grep -q "direct takes off|large|all, not 'sometimes'" "$tmp/err" || { echo "FAIL: --direct's usage error" >&2; fails=$((fails + 1)); }
expect 2 "a tuning option without its value" -- "$M" --write-piece
expect 0 "tuning options before a command" -- "$M" --no-simd --xxh=generic --io-engine pread --write-piece 4KiB version
expect 2 "completion without a shell" -- "$M" completion

expect 0 "version --json" -- "$M" version --json
json_check "version --json: schema, version, features" "d['schema'] == 'moepack.version/1' and d['version'] and isinstance(d['features'], list)"
expect 0 "synth --json" -- "$M" synth --arch gpt_oss --json "$tmp/gj"
json_check "synth --json says what it wrote" "d['schema'] == 'moepack.synth/1' and d['expert_layout'] == 'packed' and 'U8' in d['dtypes']"

# error paths of this session's additions: each gives its exit status and names its cause
expect 0 "synth dbrx" -- "$M" synth --arch dbrx "$tmp/dbrx-s"
rm "$tmp/dbrx-s/config.json"
expect 1 "dbrx without config.json: the reshape's E and I are unknown" -- "$M" pack "$tmp/dbrx-s" "$tmp/x" --preset dbrx
grep -q "named after config.json" "$tmp/err" && [ ! -e "$tmp/x" ] && echo "ok: ... says so, nothing written" \
  || { echo "FAIL: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
"$M" presets dbrx | python3 -c "import json, sys; s = json.load(sys.stdin); s['converters'][1]['ops'][0]['shape'] = ['E', 'X', 'H']; json.dump(s, open(sys.argv[1], 'w'))" "$tmp/badspec.json"
expect 0 "synth dbrx" -- "$M" synth --arch dbrx "$tmp/db-none"
expect 1 "a reshape size that is neither a number nor a config name" -- "$M" plan "$tmp/db-none" --spec "$tmp/badspec.json"
grep -q "converters\[1\].ops\[0\].shape.*E, I, H" "$tmp/err" && echo "ok: ... names the JSON path and the names allowed" \
  || { echo "FAIL: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
: > "$tmp/afile"
expect 2 "synth under a path whose parent is a file" -- "$M" synth "$tmp/afile/x/out"
grep -q "cannot create" "$tmp/err" || { echo "FAIL: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
expect 2 "completion for an unknown shell" -- "$M" completion zsh

# ERNIE-4.5-VL: one expert list cut into a text part and a vision part (issue 16)
expect 0 "synth ernie4_5_vl_moe" -- "$M" synth --arch ernie4_5_vl_moe --experts 4 "$tmp/evl"
mkdir "$tmp/evl-names"
cp "$tmp/evl/config.json" "$tmp/evl-names/"
python3 -c "import json, sys; j = json.load(open(sys.argv[1])); del j['weight_map']['model.layers.1.mlp.experts.6.up_proj.weight']; json.dump(j, open(sys.argv[2], 'w'))" \
  "$tmp/evl/model.safetensors.index.json" "$tmp/evl-names/model.safetensors.index.json"
expect 1 "plan: a vision expert missing from the index (shards absent)" -- "$M" plan "$tmp/evl-names"
grep -q "expert 6 is missing: no tensor 'model.layers.1.mlp.experts.6.up_proj.weight' (have expert 4-5, 7 of 4-7)" "$tmp/err" \
  && echo "ok: ... names the vision expert by its number in the checkpoint" || { echo "FAIL: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
mkdir "$tmp/evl-odd"
cp "$tmp/evl/config.json" "$tmp/evl-odd/"
python3 - "$tmp/evl-odd/model.safetensors" <<'PY'
import json, struct, sys
H, I = 64, 32
shapes = {"model.language_model.layers.0.mlp.text_moe.experts.gate_up_proj": [4, 2 * I, H],
          "model.language_model.layers.0.mlp.vision_moe.experts.gate_up_proj": [3, I, H]}
h, off = {}, 0
for k, s in shapes.items():
    n = 2 * s[0] * s[1] * s[2]
    h[k] = {"dtype": "BF16", "shape": s, "data_offsets": [off, off + n]}
    off += n
t = json.dumps(h).encode()
t += b" " * (-len(t) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(t)) + t + bytes(off))
PY
expect 1 "unpack: text and vision parts of different expert counts" -- "$M" unpack "$tmp/evl-odd" "$tmp/x"
grep -q "vision_moe.experts.gate_up_proj' makes 3 expert tensors but .*text_moe.experts.gate_up_proj' makes 4" "$tmp/err" \
  && [ ! -e "$tmp/x" ] && echo "ok: ... says which part differs, nothing written" || { echo "FAIL: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }

# a terminating signal while a command writes DST (issue 45, item 12): whatever the signal, what
# the command staged (DIR/.NAME.moepack-tmp.*, synth's NAME.synth-src-*) is removed and the
# process ends by that signal (the shell sees 128+N); nothing at DST. Each command is stopped at
# its 2nd write-path call (MOEPACK_FAULT=2:stop: its staging directory made, before any worker
# starts, so that pack's cancel flag is seen before the last unit is written whatever the
# machine's speed), signalled, continued; compress also deep inside its run. A script's background job
# starts with SIGINT and SIGQUIT ignored (and moepack leaves ignored signals ignored): env
# --default-signal gives them back their default where env can
sg=$tmp/sig
mkdir "$sg"
"$M" synth --layers 4 --experts 16 --hidden 512 --intermediate 256 "$sg/src" >/dev/null \
  && "$M" pack -q "$sg/src" "$sg/pk" && "$M" compress -q "$sg/src" "$sg/z" && "$M" presets mixtral > "$sg/spec.json" \
  || { echo "FAIL: the signal tests' checkpoints" >&2; fails=$((fails + 1)); }
dflt=
# a background job ignores INT and QUIT (no job control), and HUP where the tests run under nohup:
# moepack keeps a disposition it inherits as ignored, so the signalled commands get them back
env --default-signal=INT true 2>/dev/null && dflt="env --default-signal=INT,QUIT,HUP"
# signalled SIG COMMAND...: runs COMMAND stopped at its ${at}th write-path call, sends it SIG,
# continues it; "ok" when it ended by SIG and left no staging directory and nothing at $sg/out
at=2
# wait_stopped PID: until the process is stopped (MOEPACK_FAULT=N:stop) or gone, 20 s at most
wait_stopped() {
  i=0
  while kill -0 "$1" 2>/dev/null && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != T ] && [ $i -lt 2000 ]; do
    sleep 0.01
    i=$((i + 1))
  done
}
signalled() {
  sig=$1
  shift
  MOEPACK_FAULT=$at:stop $dflt "$M" "$@" >"$tmp/out" 2>"$tmp/err" &
  pid=$!
  wait_stopped $pid
  kill -s "$sig" $pid 2>/dev/null
  kill -s CONT $pid 2>/dev/null
  { wait $pid; } 2>/dev/null
  rc=$?
  left=$(ls -A "$sg" | grep -e 'moepack-tmp' -e 'synth-src' | tr '\n' ' ')
  if [ "$rc" -gt 128 ] && [ "$(kill -l $rc)" = "$sig" ] && [ -z "$left" ] && [ ! -e "$sg/out" ]; then
    echo "ok: $1 (stopped at write $at) ended by SIG$sig, staging removed, nothing at DST"
  else
    echo "FAIL: $* sent SIG$sig: exit $rc ($(kill -l $rc 2>/dev/null)), left: '$left'$([ -e "$sg/out" ] && echo ', DST written'); $(head -c 300 "$tmp/err")" >&2
    fails=$((fails + 1))
  fi
  rm -rf "$sg/out" "$sg"/.out.moepack-tmp.* "$sg"/out.synth-src-*
}
every="HUP TERM PIPE ALRM USR1 USR2 XCPU VTALRM PROF IO PWR RTMIN+6 $([ -n "$dflt" ] && echo INT QUIT)"
# pack stops through the library's cancel flag, compress through the handler itself. (The
# library sees the flag while units are left to write: one thread and a 57 MB source leave it
# time enough after the continue; it lands a run whose units are all written.)
for sig in $every; do
  signalled $sig pack -q --threads 1 "$sg/src" "$sg/out"
  signalled $sig compress -q "$sg/src" "$sg/out"
done
for sig in HUP PIPE XCPU; do
  signalled $sig unpack -q --threads 1 "$sg/pk" "$sg/out"
  signalled $sig convert -q --threads 1 "$sg/src" "$sg/out" --spec "$sg/spec.json"
  signalled $sig decompress -q "$sg/z" "$sg/out"
  signalled $sig synth --layers 2 --experts 8 --hidden 256 --intermediate 128 "$sg/out"
  signalled $sig synth --layers 2 --experts 8 --hidden 256 --intermediate 128 --layout packed "$sg/out"
done
for at in 30 60; do
  signalled TERM compress -q "$sg/src" "$sg/out"
  signalled HUP synth --layers 2 --experts 8 --hidden 256 --intermediate 128 --layout packed "$sg/out"
done
# SIGXFSZ stays ignored (a write past the size limit fails with EFBIG, reported, cleaned up)
MOEPACK_FAULT=2:stop "$M" pack -q "$sg/src" "$sg/out" &
pid=$!
wait_stopped $pid
kill -s XFSZ $pid
kill -s CONT $pid
wait $pid && "$M" verify -q "$sg/src" "$sg/out" >/dev/null && echo "ok: SIGXFSZ is ignored: pack completes" \
  || { echo "FAIL: pack sent SIGXFSZ" >&2; fails=$((fails + 1)); }
rm -rf "$sg/out"
# a real SIGPIPE: stdout and stderr a pipe nobody reads, the warnings of a SRC holding a file named
# as a staging record written to it: the process ends by SIGPIPE with no staging left (it used
# to die there, inside the run, its staging directory left)
cp -r "$sg/src" "$sg/mk" && echo x > "$sg/mk/moepack.run"
for c in pack compress; do
  rc=$(python3 -c "
import os, subprocess, sys
r, w = os.pipe()
os.close(r)
print(subprocess.run(sys.argv[1:], stdout=w, stderr=w).returncode)" "$M" $c "$sg/mk" "$sg/out")
  left=$(ls -A "$sg" | grep -e 'moepack-tmp' | tr '\n' ' ')
  # (pack warns while it lands, past its last cancel point: DST may be complete)
  if [ "$rc" = -13 ] && [ -z "$left" ] && { [ ! -e "$sg/out" ] || "$M" verify -q "$sg/mk" "$sg/out" >/dev/null 2>&1; }; then
    echo "ok: $c into a closed pipe: ended by SIGPIPE, no staging left"
  else
    echo "FAIL: $c into a closed pipe: exit $rc, left '$left'" >&2
    fails=$((fails + 1))
  fi
  rm -rf "$sg/out" "$sg"/.out.moepack-tmp.*
done

if [ "$fails" -ne 0 ]; then
  echo "$fails check(s) failed" >&2
  exit 1
fi
