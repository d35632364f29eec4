#!/bin/sh
# files.sh MOEPACK — what users give moepack that is not quite a checkpoint directory (issue 46,
# items 4, 5 and 6): a .safetensors file as SRC (one shard of an indexed checkpoint is refused, a
# single-file checkpoint converts its directory), files that are no safetensors, typos, errors as
# JSON documents under --json, JUnit reports of verify and diff.
set -u
M=$1
tmp=$(mktemp -d /tmp/mpk-files-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/shlib.sh"
has() { grep -q -- "$2" "$tmp/$1" && ok "... $1 says '$2'" || bad "$1 does not say '$2'"; }

"$M" synth --shards 3 "$tmp/three" >/dev/null || exit 1
"$M" synth --shards 1 "$tmp/one" >/dev/null || exit 1
echo '{"bos": 1}' > "$tmp/one/tokenizer_config.json"

# ---- item 4: a .safetensors file as SRC
shard=$tmp/three/model-00001-of-00003.safetensors
for cmd in pack plan; do
  dst=$tmp/dst-pack
  [ $cmd = plan ] && dst=
  expect 1 "$cmd of one shard of an indexed checkpoint is refused" -- "$M" $cmd "$shard" $dst
  has err "$shard is one shard of the checkpoint in $tmp/three (its index names 3 shards): give the directory $tmp/three"
done
[ ! -e "$tmp/dst-pack" ] && ok "... nothing at DST" || bad "pack of a shard left $tmp/dst-pack"
expect 0 "inspect of one shard still inspects the file" -- "$M" inspect "$shard"
expect 0 "hash of one shard still hashes the file" -- "$M" hash "$shard"

expect 0 "pack of a single-file checkpoint's model.safetensors" -- "$M" pack "$tmp/one/model.safetensors" "$tmp/p1"
has out "SRC is a file: converted its directory $tmp/one"
[ -f "$tmp/p1/config.json" ] && cmp -s "$tmp/one/tokenizer_config.json" "$tmp/p1/tokenizer_config.json" &&
  ok "... config.json and the other files copied" || bad "config.json or tokenizer_config.json missing from $tmp/p1"
"$M" pack -q "$tmp/one" "$tmp/p1dir" || exit 1
for f in "$tmp/p1dir"/*; do
  [ "${f##*/}" = moepack.manifest.json ] || cmp -s "$f" "$tmp/p1/${f##*/}" || bad "${f##*/} differs from packing the directory"
done
[ "$(ls "$tmp/p1")" = "$(ls "$tmp/p1dir")" ] && ok "... the same files as packing the directory" || bad "file lists differ"
expect 0 "pack --json of a file names its directory" -- "$M" pack --json "$tmp/one/model.safetensors" "$tmp/p1j"
has out "\"source_directory\": \"$tmp/one\""

# an index beside it naming only this file: that directory too
mkdir "$tmp/idx1" && cp "$tmp/one/config.json" "$tmp/one/model.safetensors" "$tmp/idx1/"
python3 - "$tmp/idx1" <<'PY' || exit 1
import json, struct, sys
d = sys.argv[1]
raw = open(d + "/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
names = [k for k in json.loads(raw[8:8 + n]) if k != "__metadata__"]
json.dump({"metadata": {}, "weight_map": {k: "model.safetensors" for k in names}},
          open(d + "/model.safetensors.index.json", "w"))
PY
expect 0 "pack of the one shard an index names" -- "$M" pack "$tmp/idx1/model.safetensors" "$tmp/p2"
has out "SRC is a file: converted its directory $tmp/idx1"
[ -f "$tmp/p2/config.json" ] && ok "... config.json copied" || bad "no config.json in $tmp/p2"

# a lone file, no config.json beside: as before (a file; the preset named)
mkdir "$tmp/lone" && cp "$tmp/one/model.safetensors" "$tmp/lone/x.safetensors"
expect 1 "pack of a lone file without config.json wants a preset" -- "$M" pack "$tmp/lone/x.safetensors" "$tmp/p3"
expect 0 "pack --preset of a lone file" -- "$M" pack --preset mixtral "$tmp/lone/x.safetensors" "$tmp/p3"
grep -q "SRC is a file" "$tmp/out" && bad "a lone file said to be converted as a directory" || ok "... converted as a file"

# ---- item 6: JUnit reports of verify and diff
# st FILE NAME VALUES...: a safetensors file of one F32 tensor
st() {
  python3 - "$@" <<'PY'
import json, struct, sys
path, name, vals = sys.argv[1], sys.argv[2], [float(v) for v in sys.argv[3:]]
data = struct.pack("<%df" % len(vals), *vals)
hdr = json.dumps({name: {"dtype": "F32", "shape": [len(vals)], "data_offsets": [0, len(data)]}}).encode()
hdr += b" " * (-len(hdr) % 8)
open(path, "wb").write(struct.pack("<Q", len(hdr)) + hdr + data)
PY
}
# junit FILE TESTS FAILURES [NAME KIND]: FILE parses, counts as said, the failure on NAME
junit() {
  python3 - "$@" <<'PY'
import sys, xml.etree.ElementTree as ET
path, tests, failures = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
root = ET.parse(path).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
assert len(suites) == 1, suites
s = suites[0]
cases = s.findall("testcase")
assert int(s.get("tests")) == len(cases) == tests, (s.get("tests"), len(cases), tests)
failed = [c for c in cases if c.find("failure") is not None]
assert int(s.get("failures")) == len(failed) == failures, (s.get("failures"), len(failed))
assert all(c.get("classname") in ("verify", "diff") for c in cases)
if len(sys.argv) > 4:
    name, kind = sys.argv[4], sys.argv[5]
    f = [c for c in failed if c.get("name") == name]
    assert f, [c.get("name") for c in failed]
    fl = f[0].find("failure")
    assert fl.get("message").startswith(kind + ":"), fl.get("message")
    assert name in fl.text, fl.text
PY
}
mkdir "$tmp/ja" "$tmp/jb"
odd='model.w<&"'"'"'>'
st "$tmp/ja/model.safetensors" "$odd" 1 2 3 4
st "$tmp/jb/model.safetensors" "$odd" 1 2 3 5
expect 3 "verify with a difference and --junit: exit 3 as without" -- "$M" verify --junit "$tmp/v.xml" "$tmp/ja" "$tmp/jb"
junit "$tmp/v.xml" 1 1 "$odd" content && ok "... JUnit parses, the failure on the right tensor, its name escaped" || bad "JUnit of a failing verify"
ls "$tmp" | grep -q 'v.xml.tmp' && bad "a temporary JUnit file left behind" || ok "... no temporary file left"
expect 3 "diff with a difference and --junit" -- "$M" diff --junit "$tmp/d.xml" "$tmp/ja" "$tmp/jb"
junit "$tmp/d.xml" 1 1 "$odd" content && ok "... diff's JUnit too" || bad "JUnit of a failing diff"
expect 0 "a clean verify with --junit" -- "$M" verify --junit "$tmp/v0.xml" "$tmp/one" "$tmp/p1"
junit "$tmp/v0.xml" 1 0 && ok "... zero failures" || bad "JUnit of a clean verify"
expect 0 "a clean verify of DST against its manifest, --junit and --json" -- "$M" verify --json --junit "$tmp/v1.xml" "$tmp/p1"
junit "$tmp/v1.xml" 1 0 && ok "... zero failures" || bad "JUnit of a clean manifest verify"
cp -r "$tmp/p1" "$tmp/pm"
last=$(python3 - "$tmp/pm/model.safetensors" <<'PY'
import json, struct, sys
raw = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n]); h.pop("__metadata__", None)
name = max(h, key=lambda k: h[k]["data_offsets"][1])
raw[8 + n + h[name]["data_offsets"][1] - 1] ^= 0x40
open(sys.argv[1], "wb").write(raw)
print(name)
PY
)
expect 3 "verify of a changed DST against its manifest, --junit" -- "$M" verify --junit "$tmp/vm.xml" "$tmp/pm"
junit "$tmp/vm.xml" 2 1 "$last" content && ok "... one failure on $last, one case for the tensors that matched" || bad "JUnit of a changed DST"
expect 1 "--junit into a folder that is not there: exit 1" -- "$M" verify --junit "$tmp/no/such/v.xml" "$tmp/p1"
has err "junit"

# ---- item 5: typos get "did you mean" (exit 2)
expect 2 "a mistyped command" -- "$M" pakc "$tmp/one" "$tmp/x"
has err "unknown command 'pakc' (did you mean 'pack'?)"
expect 2 "help of a mistyped command" -- "$M" help inspetc
has err "did you mean 'inspect'?"
expect 2 "the start of a command" -- "$M" insp "$tmp/one"
has err "did you mean 'inspect'?"
expect 2 "a word near no command" -- "$M" xyzzy
grep -q "did you mean" "$tmp/err" && bad "a guess for xyzzy" || ok "... no guess"
expect 2 "a mistyped option of pack" -- "$M" pack --forse "$tmp/one" "$tmp/x"
has err "unknown option '--forse' (did you mean '--force'?)"
expect 2 "a mistyped option of verify" -- "$M" verify --jsno "$tmp/p1"
has err "did you mean '--json'?"
expect 2 "a mistyped option of hash" -- "$M" hash --wirte "$tmp/p1"
has err "did you mean '--write'?"
[ ! -e "$tmp/x" ] && ok "... nothing written" || bad "a mistyped command wrote $tmp/x"

# ---- item 5: inspect of what is no safetensors file; compressed shards said
echo "just some notes" > "$tmp/notes.txt"
printf 'PK\003\004\024\000\000\000\010\000' > "$tmp/pytorch_model.bin"
expect 1 "inspect of a text file" -- "$M" inspect "$tmp/notes.txt"
has err "$tmp/notes.txt: not a safetensors file"
grep -q "header" "$tmp/err" && bad "inspect of a text file talks of a header" || ok "... no header-length complaint"
expect 1 "inspect of a PyTorch .bin (a zip)" -- "$M" inspect "$tmp/pytorch_model.bin"
has err "$tmp/pytorch_model.bin: not a safetensors file (a zip archive"
"$M" compress -q "$tmp/three" "$tmp/threez" || exit 1
expect 0 "inspect of a compressed checkpoint" -- "$M" inspect "$tmp/threez"
has out "model-00001-of-00003.safetensors .*compressed: .mpkz"
has out "compressed: 3 of 3 shard(s) are .mpkz containers, read in place"
expect 0 "inspect --json of a compressed checkpoint" -- "$M" inspect --json "$tmp/threez"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['compressed_shards'] == 3 and all(s['compressed'] and s['stored_as'] == s['file'] + '.mpkz' and 0 < s['stored_size'] for s in d['shards']), d['shards']" "$tmp/out" &&
  ok "... each shard compressed, stored_as NAME.mpkz, in --json" || bad "inspect --json of .mpkz shards"
expect 0 "inspect --json of a plain checkpoint" -- "$M" inspect --json "$tmp/three"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['compressed_shards'] == 0 and not any(s['compressed'] for s in d['shards'])" "$tmp/out" &&
  ok "... no shard compressed" || bad "inspect --json of plain shards"

# ---- item 5: under --json an error is a JSON document on stdout too (and text on stderr)
# jerr STATUS [FILE [TENSOR]]: stdout is one moepack.error/1 document saying so
jerr() {
  python3 - "$tmp/out" "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
want = sys.argv[2:]
assert d["schema"] == "moepack.error/1", d
assert d["status"] == want[0], (d["status"], want[0])
assert d["message"] and set(d) >= {"file", "tensor"}, d
if len(want) > 1:
    assert d["file"] == want[1], (d["file"], want[1])
if len(want) > 2:
    assert d["tensor"] == want[2], (d["tensor"], want[2])
PY
}
python3 - "$tmp/bad.safetensors" <<'PY'
import json, struct, sys
hdr = json.dumps({"model.embed.weight": {"dtype": "F32", "shape": [1]}}).encode()
hdr += b" " * (-len(hdr) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(hdr)) + hdr)
PY
expect 1 "inspect --json of a header missing a field" -- "$M" inspect --json "$tmp/bad.safetensors"
jerr missing-field "$tmp/bad.safetensors" model.embed.weight && ok "... an error document naming file and tensor" || bad "inspect --json error document"
[ -s "$tmp/err" ] && ok "... and the message on stderr" || bad "no message on stderr"
expect 1 "hash --json of a text file" -- "$M" hash --json "$tmp/notes.txt"
jerr header-too-large "$tmp/notes.txt" && ok "... an error document" || bad "hash --json error document"
expect 1 "pack --json of one shard" -- "$M" pack --json "$shard" "$tmp/j1"
jerr not-found "$shard" && ok "... an error document" || bad "pack --json error document"
expect 1 "plan --json of a missing SRC" -- "$M" plan --json "$tmp/nothing"
jerr not-found && ok "... an error document" || bad "plan --json error document"
expect 1 "verify --json of a missing DST" -- "$M" verify --json "$tmp/nothing"
jerr not-found && ok "... an error document" || bad "verify --json error document"
expect 1 "compress --json into an existing DST" -- "$M" compress --json "$tmp/three" "$tmp/threez"
jerr destination-exists && ok "... an error document" || bad "compress --json error document"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert d['field'] == 'force' and d['hint'] == 'pass --force to replace it', d" "$tmp/out" &&
  ok "... naming the request field the way out is about (force) beside the hint" || bad "compress --json error document: field"
expect 1 "synth --json of an unknown arch" -- "$M" synth --json --arch nosuch "$tmp/j2"
jerr preset && ok "... an error document" || bad "synth --json error document"
expect 2 "diff --json with a mistyped option" -- "$M" diff --json --atoll 1 "$tmp/ja" "$tmp/jb"
jerr usage && ok "... usage errors too" || bad "diff --json usage error document"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); assert 'field' not in d, d" "$tmp/out" &&
  ok "... with no field where none helps" || bad "diff --json usage error document: a field"
expect 1 "inspect without --json: nothing on stdout" -- "$M" inspect "$tmp/bad.safetensors"
[ ! -s "$tmp/out" ] && ok "... stdout empty" || bad "stdout not empty without --json"

# ---- item 5: the demo without DIR removes its temporary folder, or says where it is
mkdir "$tmp/td"
expect 0 "demo without DIR" -- env TMPDIR="$tmp/td" "$M" demo
[ -z "$(ls -A "$tmp/td")" ] && ok "... its temporary folder removed" || bad "demo left $(ls "$tmp/td")"
has out "demo: removed its temporary directory $tmp/td/moepack-demo-"
expect 1 "demo without DIR that fails" -- env TMPDIR="$tmp/td" MOEPACK_FAULT=40:ENOSPC "$M" demo
kept=$(ls "$tmp/td")
[ -n "$kept" ] && ok "... its folder kept" || bad "a failed demo removed its files"
has err "demo: its files are kept in $tmp/td/$kept"

# ---- item 5: small things users hit
expect 2 "an unknown preset is a usage error" -- "$M" pack "$tmp/one" "$tmp/x" --preset mixtrl
has err "unknown preset 'mixtrl' (did you mean 'mixtral'?)"
[ ! -e "$tmp/x" ] && ok "... nothing at DST" || bad "DST written"
expect 2 "plan with an unknown preset too" -- "$M" plan "$tmp/one" --preset qwen3moe
has err "did you mean 'qwen3_moe'?"
# the --force hint only where --force would work
mkdir -p "$tmp/photos" && echo p > "$tmp/photos/a.jpg"
expect 1 "pack into a folder that is no checkpoint" -- "$M" pack "$tmp/one" "$tmp/photos"
has err "a forced run would not replace it either (not a checkpoint"
grep -q -- "--force" "$tmp/err" && bad "a --force hint where --force would not work" || ok "... no --force hint"
"$M" pack -q "$tmp/one" "$tmp/pk-once"
expect 1 "pack into an existing checkpoint" -- "$M" pack "$tmp/one" "$tmp/pk-once"
has err "hint: pass --force to replace it"
expect 1 "compress into a folder that is no checkpoint" -- "$M" compress "$tmp/one" "$tmp/photos"
grep -q -- "--force" "$tmp/err" && bad "a --force hint where --force would not work" || ok "... no --force hint"
"$M" compress -q "$tmp/pk-once" "$tmp/pkz-once"
expect 1 "compress into an existing checkpoint" -- "$M" compress "$tmp/pk-once" "$tmp/pkz-once"
has err "hint: pass --force to replace it"
# the memory budget: the library names the request field (mem), the command line its options
"$M" synth --arch qwen3_vl_moe --layers 1 --experts 4 --hidden 512 --intermediate 256 --vocab 32 --dtype F32 \
  "$tmp/vl" >/dev/null
expect 1 "pack with a budget below a transpose block" -- "$M" pack -q --mem 2MiB --threads 1 "$tmp/vl" "$tmp/x"
has err "the memory budget gives 2.00 MiB per thread"
has err "hint: raise --mem or lower --threads"
# --quantize nvfp4 quantizes each expert matrix whole: gate_up [2I, H] = 1024 x 1024 BF16 (2 MiB), 6 MiB a thread
"$M" synth --arch qwen3_moe --layers 1 --experts 2 --hidden 1024 --intermediate 512 --vocab 32 "$tmp/q4m" >/dev/null
expect 1 "pack --quantize nvfp4 with a budget below a matrix" -- "$M" pack -q --quantize nvfp4 --mem 4MiB --threads 2 \
  "$tmp/q4m" "$tmp/x"
has err "a matrix transposed or quantized whole needs 6.00 MiB per thread (3 x 2.00 MiB)"
has err "the memory budget gives 2.00 MiB per thread"
expect 0 "pack --quantize nvfp4 within the budget" -- "$M" pack -q --quantize nvfp4 --mem 12MiB --threads 2 "$tmp/q4m" "$tmp/x"
rm -rf "$tmp/x" "$tmp/q4m"
# --quantize on BF16 experts whose sizes are not multiples of 128: what to do
expect 1 "pack --quantize of BF16 experts of I=32" -- "$M" pack "$tmp/one" "$tmp/x" --quantize fp8-block128
has err "hint: --quantize fp8-block128 needs whole 128x128 blocks"
grep -q -- "--dequantize" "$tmp/err" && bad "the hint speaks of --dequantize on a BF16 source" || ok "... not of --dequantize"
# plan --quantize shows the FP8 dtype its JSON shows
"$M" synth --hidden 128 --intermediate 128 --layers 1 "$tmp/q128" >/dev/null
expect 0 "plan --quantize" -- "$M" plan "$tmp/q128" --quantize fp8-block128
has out "gate_up_proj F8_E4M3 \[8, 256, 128\] + _scale_inv F32"
expect 0 "plan --quantize --json" -- "$M" plan "$tmp/q128" --quantize fp8-block128 --json
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); sys.exit(not any(o['name'].endswith('gate_up_proj') and o['dtype'] == 'F8_E4M3' for o in d['outputs']))" "$tmp/out" \
  && ok "... the JSON says F8_E4M3 too" || bad "plan --quantize JSON dtype"

# the "other files" count is the same for pack, unpack and --dequantize (config.json counted
# whether copied, written back or rewritten)
"$M" synth --quant fp8 --hidden 128 --intermediate 128 --layers 1 "$tmp/f8" >/dev/null && echo t > "$tmp/f8/tokenizer.json"
"$M" pack --json "$tmp/f8" "$tmp/f8-p" > "$tmp/c1" && "$M" pack --json --dequantize "$tmp/f8" "$tmp/f8-d" > "$tmp/c2" &&
  "$M" unpack --json "$tmp/f8-p" "$tmp/f8-u" > "$tmp/c3"
python3 -c "import json, sys; n = [json.load(open(f))['other_files']['files'] for f in sys.argv[1:]]; print(n); sys.exit(n != [2, 2, 2])" \
  "$tmp/c1" "$tmp/c2" "$tmp/c3" && ok "other files: 2 for pack, --dequantize and unpack" || bad "other files counts differ"

[ $fails = 0 ] || { echo "$fails failure(s)" >&2; exit 1; }
