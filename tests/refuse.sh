#!/bin/sh
# refuse.sh MOEPACK — nothing half-converted, ever (issue 46, item 2): a tensor, a quantization
# or a model the spec does not understand refuses plan/pack/unpack (exit 1, not-understood, every
# offender named, nothing at DST) instead of passing through with exit 0; --pass-unknown copies
# such tensors as they are and the summary lists them.
set -u
M=$1
tmp=$(mktemp -d /tmp/mpk-refuse-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/shlib.sh"
says() { grep -qF -- "$1" "$tmp/err" && ok "... says '$1'" || bad "message lacks '$1'"; }
outsays() { grep -qF -- "$1" "$tmp/out" && ok "... output says '$1'" || bad "output lacks '$1'"; }
nodst() { [ ! -e "$1" ] && ok "... nothing at DST" || bad "DST $1 written"; }

# addt DIR NAME DTYPE DIM... : a zero tensor added to DIR's first shard (and its index)
addt() {
  python3 - "$@" <<'EOF'
import glob, json, os, struct, sys
d, name, dt = sys.argv[1:4]
shape = [int(x) for x in sys.argv[4:]]
width = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "F8_E4M3": 1, "I32": 4}[dt]
n = width
for s in shape:
    n *= s
path = sorted(glob.glob(os.path.join(d, "*.safetensors")))[0]
b = open(path, "rb").read()
hl = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + hl])
data = b[8 + hl:]
h[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + n]}
t = json.dumps(h, separators=(",", ":")).encode()
t += b" " * (-len(t) % 8)
open(path, "wb").write(struct.pack("<Q", len(t)) + t + data + bytes(n))
ix = os.path.join(d, "model.safetensors.index.json")
if os.path.exists(ix):
    j = json.load(open(ix))
    j["weight_map"][name] = os.path.basename(path)
    json.dump(j, open(ix, "w"), indent=2)
EOF
}

"$M" synth --arch mixtral "$tmp/s" >/dev/null || exit 1

# 1. a per-expert bias no mixtral rule consumes: was packed gate_up_proj + a per-expert leftover
cp -r "$tmp/s" "$tmp/bias"
addt "$tmp/bias" model.layers.0.block_sparse_moe.experts.0.w1.bias BF16 32
expect 1 "pack refuses a per-expert tensor no rule consumes" -- "$M" pack -q "$tmp/bias" "$tmp/d1"
says "model.layers.0.block_sparse_moe.experts.0.w1.bias"
says "a per-expert tensor that no rule consumes"
says "hint: --pass-unknown copies these tensors as they are"
nodst "$tmp/d1"
expect 1 "plan refuses it the same" -- "$M" plan "$tmp/bias"
says "model.layers.0.block_sparse_moe.experts.0.w1.bias"
expect 0 "plan --pass-unknown lists it" -- "$M" plan --pass-unknown "$tmp/bias"
outsays "unknown model.layers.0.block_sparse_moe.experts.0.w1.bias"
expect 0 "pack --pass-unknown passes it" -- "$M" pack --pass-unknown "$tmp/bias" "$tmp/d1"
outsays "passed through unconverted (as asked: pass unknown)"
outsays "model.layers.0.block_sparse_moe.experts.0.w1.bias"
expect 0 "pack --pass-unknown --json reports it" -- "$M" pack --pass-unknown --json "$tmp/bias" "$tmp/d1j"
python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit([u['name'] for u in r['passed_unknown']] != ['model.layers.0.block_sparse_moe.experts.0.w1.bias'])" "$tmp/out" \
  && ok "... passed_unknown in the JSON report" || bad "passed_unknown"

# 2. an unknown expert linear, and many: each named (the first few, then a count)
cp -r "$tmp/s" "$tmp/w4"
for e in 0 1 2 3 4; do addt "$tmp/w4" "model.layers.1.block_sparse_moe.experts.$e.w4.weight" BF16 32 64; done
expect 1 "plan refuses experts.N.w4.weight (was a plain pass-through)" -- "$M" plan "$tmp/w4"
says "5 tensor(s)"
says "model.layers.1.block_sparse_moe.experts.0.w4.weight"
says "and 2 more"

# 3. ModelOpt checkpoints: NVFP4 is read, packed and dequantized (tests/nvfp4.py); any other
#    quant_algo is refused, and so are companions no rule moves (was: NVFP4 itself refused, its
#    U8 nibbles packed as if they were weights and the scales left behind)
nvgen() { python3 - "$tmp/s" "$@" <<'EOF'
import glob, json, os, struct, sys
src, dst, algo, zp = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "zp"
os.makedirs(dst)
out, blobs = {}, []
off = 0
def put(name, dt, shape, data):
    global off
    out[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
    blobs.append(data)
    off += len(data)
for path in sorted(glob.glob(os.path.join(src, "*.safetensors"))):
    b = open(path, "rb").read()
    hl = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + hl])
    h.pop("__metadata__", None)
    for name, t in sorted(h.items()):
        a, z = t["data_offsets"]
        if ".experts." in name and name.endswith(".weight"):
            o, i = t["shape"]
            put(name, "U8", [o, i // 2], bytes(o * i // 2))
            base = name[:-len(".weight")]
            put(base + ".weight_scale", "F8_E4M3", [o, i // 16], bytes(o * i // 16))
            put(base + ".weight_scale_2", "F32", [], bytes(4))
            put(base + ".input_scale", "F32", [], bytes(4))
            if zp:
                put(base + ".weight_zero_point", "I8", [o, i // 16], bytes(o * i // 16))
        else:
            put(name, t["dtype"], t["shape"], b[8 + hl + a:8 + hl + z])
t = json.dumps(out, separators=(",", ":")).encode()
t += b" " * (-len(t) % 8)
with open(os.path.join(dst, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(t)) + t + b"".join(blobs))
cfg = json.load(open(os.path.join(src, "config.json")))
cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": algo}
json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
EOF
}
nvgen "$tmp/nv" W4A8_AWQ -
expect 1 "pack refuses a ModelOpt quantization other than NVFP4" -- "$M" pack -q "$tmp/nv" "$tmp/d3"
says "modelopt W4A8_AWQ"
says "hint: moepack does not convert this quantization (--pass-unknown does not cover it)"
nodst "$tmp/d3"
expect 1 "... --pass-unknown does not cover an unknown quantization" -- "$M" pack -q --pass-unknown "$tmp/nv" "$tmp/d3"
nodst "$tmp/d3"
expect 1 "plan refuses it too" -- "$M" plan "$tmp/nv"
says "modelopt W4A8_AWQ"
# NVFP4 with one more companion per expert linear that no rule moves: refused, named
nvgen "$tmp/nvz" NVFP4 zp
expect 1 "pack refuses NVFP4 companions the preset does not move with their weights" -- "$M" pack -q "$tmp/nvz" "$tmp/d3"
says "quantization companion"
says "model.layers.0.block_sparse_moe.experts.0.w1.weight_zero_point"
nodst "$tmp/d3"
# an algorithm declared by ModelOpt's hf_quant_config.json beside config.json
cp -r "$tmp/nvz" "$tmp/nvs"
echo '{"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "W4A8_AWQ"}}' > "$tmp/nvs/hf_quant_config.json"
expect 1 "pack refuses a quantization declared in hf_quant_config.json" -- "$M" pack -q "$tmp/nvs" "$tmp/d3"
says "hf_quant_config.json"
nodst "$tmp/d3"

# 4. a quantization method moepack does not implement, on otherwise plain tensors
for qc in '{"quant_method": "gptq", "bits": 4}' '{"quant_method": "fp8", "weight_block_size": [64, 64]}'; do
  cp -r "$tmp/s" "$tmp/q"
  python3 -c "
import json, sys
c = json.load(open(sys.argv[1])); c['quantization_config'] = json.loads(sys.argv[2]); json.dump(c, open(sys.argv[1], 'w'))" \
    "$tmp/q/config.json" "$qc"
  expect 1 "plan refuses quantization_config $qc" -- "$M" plan "$tmp/q"
  says "quantization_config"
  rm -rf "$tmp/q"
done
cp -r "$tmp/s" "$tmp/q"
python3 -c "
import json, sys
c = json.load(open(sys.argv[1])); c['compression_config'] = {'format': 'pack-quantized'}; json.dump(c, open(sys.argv[1], 'w'))" \
  "$tmp/q/config.json"
expect 1 "plan refuses a compression_config (compressed-tensors)" -- "$M" plan "$tmp/q"
says "compression_config"

# 5. a leftover per-expert tensor in a packed source refuses unpack the same
"$M" pack -q "$tmp/s" "$tmp/p" || exit 1
addt "$tmp/p" model.layers.0.mlp.experts.3.w1.bias BF16 32
expect 1 "unpack refuses a per-expert leftover in a packed source" -- "$M" unpack -q "$tmp/p" "$tmp/d5"
says "model.layers.0.mlp.experts.3.w1.bias"
nodst "$tmp/d5"
expect 0 "unpack --pass-unknown passes it" -- "$M" unpack -q --pass-unknown "$tmp/p" "$tmp/d5"

# 6. a model type shared by different models: DeepSeek-OCR-2 is deepseek_vl_v2 too, and has its
# own preset (deepseek_ocr2, issue 48); an architecture no preset lists is refused
# a synthetic DeepSeek-VL2-typed model with an architecture deepseek_v2 does not list
"$M" synth --arch deepseek_v2 "$tmp/ds" >/dev/null || exit 1
python3 -c "
import json, sys
c = json.load(open(sys.argv[1])); c['model_type'] = 'deepseek_vl_v2'; c['architectures'] = ['DeepseekVL9ForCausalLM']
json.dump(c, open(sys.argv[1], 'w'))" "$tmp/ds/config.json"
expect 1 "pack refuses a model type whose architecture no preset lists" -- "$M" pack -q "$tmp/ds" "$tmp/d6"
says "not architecture DeepseekVL9ForCausalLM"
says "hint: write a spec for this model"
nodst "$tmp/d6"
expect 0 "... --preset deepseek_v2 names the preset that fits" -- "$M" pack -q --preset deepseek_v2 "$tmp/ds" "$tmp/d6"

# 7. a transformers-semantics preset whose renames several names undo to (issue 48): unpack picks
# the one the source record holds; without the record it refuses, naming the candidates
"$M" synth --arch deepseek_ocr2 "$tmp/o" >/dev/null || exit 1
"$M" pack -q "$tmp/o" "$tmp/op" || exit 1
rm "$tmp/op/moepack.source.zst"
expect 1 "unpack without the source record refuses names its renames cannot tell apart" -- "$M" unpack -q "$tmp/op" "$tmp/d7"
says "could have been named any of"
says "'model.projector.layers.bias'"
says "moepack.source.zst"
nodst "$tmp/d7"

echo "$fails failed"
[ "$fails" = 0 ]
