#!/usr/bin/env python3
"""Mechanical cross-check of moepack's presets against transformers' own conversion mapping
(issue 48, item 4). No GPU, no torch: standard library only.

For every model type of the committed mapping dump (gpu/results/2026-12-04-h200/
transformers-5.17-conversion-mapping.json, written by tests/parity/dump_mapping.py) that has
expert conversions (a pattern naming `experts`; pi0's `paligemma_with_expert` does not), it
1. writes a tiny safetensors checkpoint (bytes written here: 8-byte little-endian header length,
   JSON header, zero data) whose tensor names instantiate the mapping's source patterns (layers
   0..1, experts 0..E-1 under the family's published prefix) plus a few ordinary tensors, and a
   config.json with the model_type and the sizes moepack reads;
2. derives the names, shapes, sources and op chains transformers would produce with hfmatch.py
   (an independent re-implementation of core_model_loading.py's matching and ops);
3. runs `moepack plan DIR --json` (the preset auto) and compares target names, shapes, source
   tensors in order and op chains, and that transformers loading the packed output (the mapping
   applied again, with its fall-back to the name as it is) gets the same names;
4. for a model type moepack has a preset for, does the same on the names `moepack synth --arch
   PRESET` writes (the family's published names: shared experts, routers, norms);
5. with --material DIR (default $MPK_MATERIAL): real releases' config.json + index planned from
   the index alone, compared by names and sources.

One line per model type: OK, MISMATCH (first differences), KNOWN (listed in KNOWN_DIFFERENCES
below, with the reason: still reported, and an error once it passes so the list shrinks) or
NO PRESET (moepack has no preset for the type: `moepack presets --json`). Exit status 1 on a
MISMATCH or on a KNOWN entry that now passes. NO PRESET lines fail only with --require-all (or
MPK_CROSSCHECK_REQUIRE_ALL=1), which CI passes since issue 48's presets for the newest families
(kimi_k25, deepseek_v4, qwen4_exp_text, glm5_next, minimax_m3_vl, kimi_linear, step3p7,
deepseek_ocr2, inkling_mm_model, axk2) landed: a model type of a new dump without a preset fails.
Usage: crosscheck.py --moepack BIN [--mapping FILE] [--require-all] [--only TYPE,...] [--verbose]
       [--expected] (print transformers' derivation of every tensor)
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hfmatch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DUMP = os.path.join(ROOT, "gpu", "results", "2026-12-04-h200", "transformers-5.17-conversion-mapping.json")
H, I, E, L, V, HEADS = 24, 8, 4, 2, 32, 4  # H != 2I: a transpose is never a no-op

# Where each family publishes its decoder layers and the module holding experts and router
# (released checkpoints' index files; ../shared/safetensors-material for deepseek_ocr2), and the
# top-level modules of multimodal releases that sit beside the language model.
FAMILY = {
    "mixtral": {"moe": "block_sparse_moe"}, "minimax": {"moe": "block_sparse_moe"},
    "minimax_m2": {"moe": "block_sparse_moe"}, "phimoe": {"moe": "block_sparse_moe"},
    "kimi_linear": {"moe": "block_sparse_moe"},
    "granitemoe": {"moe": "block_sparse_moe"}, "granitemoehybrid": {"moe": "block_sparse_moe"},
    "granitemoeshared": {"moe": "block_sparse_moe"},
    "jamba": {"moe": "feed_forward"}, "lfm2_moe": {"moe": "feed_forward"},
    "nemotron_h": {"root": "backbone.", "moe": "mixer"},
    "deepseek_v4": {"root": "", "moe": "ffn"},
    "step3p7": {"moe": "moe", "top": ["vision_model", "vit_large_projector"]},
    "qwen3_5_moe_text": {"root": "model.language_model."},
    "qwen4_exp_text": {"root": "model.language_model."},
    "qwen3_vl_moe": {"root": "model.language_model.", "top": ["model.visual"]},
    "glm4v_moe": {"root": "model.language_model.", "top": ["model.visual"]},
    "qwen3_omni_moe": {"root": "thinker.model."},
    "kimi_k25": {"root": "language_model.model.", "top": ["vision_tower", "mm_projector", "language_model"]},
    "minimax_m3_vl": {"root": "language_model.model.", "moe": "block_sparse_moe",
                      "top": ["vision_tower", "multi_modal_projector", "patch_merge_mlp", "language_model"]},
    "deepseek_ocr2": {"top": ["model.sam_model", "model.qwen2_model", "model.projector", "model.view_seperator"]},
    "ernie4_5_vl_moe": {"top": ["vision_model", "model.resampler_model.spatial_linear",
                                "model.resampler_model.temporal_linear"], "experts": 2 * E},
    "inkling_mm_model": {"root": "model.llm.", "top": ["model.audio", "model.visual", "model.llm"]},
}

# Tensors the pattern instantiation cannot place where the release has them (their patterns
# would otherwise be instantiated at a layer): full names, {l} = layer.
EXTRA = {
    "ernie4_5_vl_moe": ["vision_model.blocks.0.attn.qkv.weight", "model.resampler_model.spatial_linear.0.weight",
                        "model.resampler_model.temporal_linear.3.weight"],
    "kimi_k25": ["vision_tower.encoder.blocks.{l}.norm0.weight", "vision_tower.encoder.blocks.{l}.norm1.weight",
                 "vision_tower.encoder.blocks.{l}.mlp.fc0.weight", "vision_tower.encoder.blocks.{l}.mlp.fc1.weight",
                 "vision_tower.encoder.blocks.{l}.wo.weight", "vision_tower.encoder.blocks.{l}.wqkv.weight",
                 "vision_tower.patch_embed.pos_emb.weight", "mm_projector.proj.0.weight", "mm_projector.proj.2.weight",
                 "language_model.lm_head.weight"],
    "deepseek_ocr2": ["model.qwen2_model.model.model.layers.{l}.self_attn.q_proj.weight",
                      "model.qwen2_model.model.model.norm.weight", "model.sam_model.neck.{l}.weight",
                      "model.projector.layers.weight"],
    "minimax_m3_vl": ["language_model.lm_head.weight", "vision_tower.vision_model.encoder.layers.{l}.mlp.fc1.weight",
                      "language_model.model.layers.{l}.mlp.gate_proj.weight",
                      "language_model.model.layers.{l}.mlp.up_proj.weight"],
    "inkling_mm_model": ["model.llm.embed.weight", "model.llm.unembed.weight", "model.llm.norm.weight",
                         "model.visual.layers.linear_{l}.weight", "model.visual.layers.norm_{l}.weight",
                         "model.audio.encoder.weight", "model.audio.final_norm.weight"],
    "qwen4_exp_text": ["model.language_model.ngram_embedding.shard_0.weight",
                       "model.language_model.ngram_embedding.shard_1.weight"],
}

# Shapes by what a name holds (first match wins); E, H, I, 2I as above.
SHAPES = [
    (r"w13_weight$", lambda n: [E, 2 * I, H] if "experts" in n else [H, 2 * I]),
    (r"w2_weight$", lambda n: [E, H, I] if "experts" in n else [H, I]),
    (r"w13_dn\.weight$", lambda n: [2 * I, H]),
    (r"experts\.gate_up_proj$", lambda n: [E, H, 2 * I]),  # published fused and transposed
    (r"experts\.down_proj$", lambda n: [E, I, H]),
    (r"input_linear\.weight$", lambda n: [E, 2 * I, H]),
    (r"output_linear\.weight$", lambda n: [E, H, I]),
    (r"moe\.(gate|up)_proj\.weight$", lambda n: [E, I, H]),
    (r"moe\.down_proj\.weight$", lambda n: [E, H, I]),
    (r"_scale_inv$", lambda n: [E, 1, 1]),
    (r"wqkv\.weight$", lambda n: [3 * H, H]),
    (r"conv1d\.weight$", lambda n: [H, 1, 4]),
    (r"shard_\d+\.weight$", lambda n: [V // 2, H]),
    (r"mlp\.gate\.weight(_1)?$", lambda n: [H, E]),
    (r"moe_statics\.e_score_correction_bias$", lambda n: [2, E]),
    (r"(router|gate)(\.layer)?\.weight$", lambda n: [E, H]),
    (r"(e_score_correction_bias|router_bias|expert_bias)$", lambda n: [E]),
    (r"experts\.\d+\.(gate_proj|up_proj|w1|w3)\.weight$", lambda n: [I, H]),
    (r"experts\.\d+\.(down_proj|w2)\.weight$", lambda n: [H, I]),
    (r"(embed_tokens|embed|lm_head|head|unembed)\.weight$", lambda n: [V, H]),
    (r"(norm|layernorm|norm\d|bias)[^.]*(\.weight|\.bias)?$", lambda n: [H]),
]


def shape_of(name):
    for rx, fn in SHAPES:
        if re.search(rx, name):
            return fn(name)
    return [H, H]


def expert_types(mapping):
    """The model types whose mapping converts experts: a pattern names `experts`."""
    def names_experts(entry):
        return any("experts" in p for p in entry.get("source_patterns", []) + entry.get("target_patterns", []))
    return sorted(mt for mt, items in mapping.items()
                  if mt != "legacy" and any(isinstance(x, dict) and names_experts(x) for x in items))


def literal(pattern, layer, expert):
    """A name the regex pattern matches: anchors dropped, lookarounds removed, (a|b) -> the
    longest branch, (\\d+) -> layer, `.*.` -> .expert., escapes resolved."""
    p = pattern.lstrip("^").rstrip("$")
    p = re.sub(r"\(\?<?[!=][^)]*\)", "", p)
    p = re.sub(r"\(([^()]*\|[^()]*)\)", lambda m: max(m.group(1).split("|"), key=len), p)
    p = p.replace(r"(\d+)", str(layer)).replace(".*.", f".{expert}.")
    return re.sub(r"\\(.)", r"\1", p)


def _place(lit, fam, top):
    """Where a pattern instance sits: (name template, per layer?)."""
    lp = fam.get("root", "model.") + "layers.{l}."
    moe = fam.get("moe", "mlp")
    for t in top:
        head = t.split(".")[-1]
        if lit.startswith(head + ".") or lit == head:
            return t[: len(t) - len(head)] + lit, False
    if lit.startswith("."):
        if not lit[1:].startswith(moe) and re.search(r"experts|gate|e_score|router|shared", lit):
            return lp + moe + lit, True
        return lp[:-1] + lit, True
    if lit.startswith("experts."):
        return lp + moe + "." + lit, True
    return lp + lit, True


def _instance(sp, layer, expert, fam, top):
    lit = literal(sp, layer, expert)
    if sp.startswith("^") or lit.startswith("model."):
        name = lit
    else:
        name = _place(lit, fam, top)[0].format(l=layer)
    # a module path (ending in '.' or an index) gets its parameter
    return name + "weight" if name.endswith(".") else name + ".weight" if re.search(r"\.\d+$", name) else name


def instantiate(mt, entries):
    """{name: shape}: the ordinary tensors, EXTRA's, then one instance of each source pattern
    that none of those matches yet (expert patterns always: experts 0..n-1), layers 0..L-1."""
    fam = FAMILY.get(mt, {})
    root = fam.get("root", "model.")
    top = fam.get("top", [])
    n_exp = fam.get("experts", E)
    lp = root + "layers.{l}."
    tmpl = [root + "embed_tokens.weight", root + "norm.weight", lp + "input_layernorm.weight",
            lp + "self_attn.q_proj.weight", lp + fam.get("moe", "mlp") + ".gate.weight"]
    if not any(t.startswith("language_model") or t == "model.llm" for t in top):
        tmpl.append("thinker.lm_head.weight" if root.startswith("thinker.") else "lm_head.weight")
    tmpl += EXTRA.get(mt, [])
    names = {t.format(l=l) for t in tmpl for l in range(L)}
    ordinary = set(names)
    for k, entry in enumerate(entries):
        before = hfmatch.Mapping(entries[:k])  # what the earlier transforms make of a name
        for sp in entry["source_patterns"]:
            star = ".*." in sp
            rx = hfmatch.compile_sources([sp])
            if not star and any(rx.search(before.rename_key(n)[0]) for n in sorted(names)):
                continue
            for l in range(L):
                for e in range(n_exp if star else 1):
                    name = _instance(sp, l, e, fam, top)
                    if rx.search(name):  # 'shard_*.weight' has none ('_*' is a regex repeat)
                        names.add(name)
    # an ordinary tensor the release names otherwise (hy_v3's router is mlp.router.gate.weight,
    # renamed to mlp.gate.weight) would be a second source of one target: left out
    fresh = hfmatch.Mapping(entries)
    renamed = {fresh.rename_key(n)[0] for n in names - ordinary}
    return {n: shape_of(n) for n in names if n not in ordinary or n not in renamed}


def config_for(mt):
    c = {"model_type": mt, "hidden_size": H, "intermediate_size": I, "moe_intermediate_size": I,
         "num_hidden_layers": L, "num_local_experts": E, "num_experts": E, "n_routed_experts": E,
         "moe_num_experts": E, "num_experts_per_tok": 2, "vocab_size": V, "num_attention_heads": HEADS,
         "num_key_value_heads": HEADS, "vision_config": {"num_attention_heads": 2}}
    if mt == "ernie4_5_vl_moe":  # text experts 0..E-1, vision experts E..2E-1, their own I
        c["moe_intermediate_size"] = [I, I]
    return c


def write_checkpoint(folder, shapes, config):
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name in sorted(shapes):
        dtype, size = ("F32", 4) if name.endswith("_scale_inv") else ("BF16", 2)
        n = size
        for d in shapes[name]:
            n *= d
        header[name] = {"dtype": dtype, "shape": shapes[name], "data_offsets": [off, off + n]}
        off += n
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + bytes(off))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)


def compare(expected, outputs):
    """The differences between transformers' derivation and moepack's plan, as text lines."""
    got = {o["name"]: o for o in outputs}
    diffs = []
    for name in sorted(expected, key=hfmatch.dot_natural_key):
        x, g = expected[name], got.get(name)
        if g is None:
            diffs.append(f"missing {name} (transformers: from {x['sources'][0]}{' ...' if len(x['sources']) > 1 else ''})")
            continue
        if list(g["shape"]) != x["shape"]:
            diffs.append(f"{name}: shape {g['shape']}, transformers {x['shape']}")
        ops = [hfmatch.norm_op(o, x.get("target_index")) for o in g.get("ops") or []]
        ops = [o for o in ops if o is not None]
        if ops != x["ops"]:
            diffs.append(f"{name}: ops {ops}, transformers {x['ops']}")
        if g["sources"] != x["sources"]:
            diffs.append(f"{name}: sources {g['sources'][:4]}, transformers {x['sources'][:4]}")
    for name in sorted(set(got) - set(expected), key=hfmatch.dot_natural_key):
        diffs.append(f"unexpected {name} (moepack: from {got[name]['sources'][0]})")
    return diffs


def reload_diffs(entries, legacy, expected, outputs):
    """transformers loading moepack's packed checkpoint applies the mapping again: each packed
    name must load as the runtime name of the tensor it holds (the model's names being the
    expected ones: a renaming that matches its own output falls back to the name as it is)."""
    again = hfmatch.Mapping(entries, legacy)
    want = {}
    for n, x in expected.items():
        want.setdefault(tuple(x["sources"]), set()).add(n)
    diffs = []
    for o in sorted(outputs, key=lambda o: hfmatch.dot_natural_key(o["name"])):
        names = want.get(tuple(o["sources"]))
        got = again.load_name(o["name"], expected)
        if names is not None and got not in names:
            diffs.append(f"reloaded by transformers, packed {o['name']} loads as {got}, not {sorted(names)[0]}")
    return diffs


# Model types whose preset is known to differ from transformers' mapping, with why (details in
# /work/notes/crosscheck-findings.md). Issue 48's spec-language work removes entries; an entry
# that passes is reported as an error so that it is removed here too.
KNOWN_DIFFERENCES = {
    # transformers' PrefixChange strips model.language_model. -> model. from every key of a
    # text-only Qwen3.5-MoE release; the qwen3_5_moe preset keeps the release's prefix (which
    # transformers strips again when it loads the packed checkpoint)
    "qwen3_5_moe_text": "keeps model.language_model. (transformers: PrefixChange to model.; it loads either)",
    # the n-gram shards: the preset concatenates them (the mapping's Concatenate, num_shards_attribute
    # split_ngram_parts); hfmatch follows the stored source whose regex shard_*.weight matches no
    # shard_N.weight (shards pass through). Undecided until 5.17 runs on the GPU machine
    # (docs/spec.md, "Reordering ops"); a concatenated ngram_embedding.weight loads either way
    "qwen4_exp_text": "concatenates ngram_embedding.shard_* (hfmatch: the pattern matches no shard; 5.17 unverified)",
}


def plan(moepack, folder):
    r = subprocess.run([moepack, "plan", folder, "--json"], capture_output=True, text=True, timeout=120)
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        return None, f"exit {r.returncode}, no JSON: {r.stderr.strip()[:300]}"
    if r.returncode != 0 or "outputs" not in doc:
        return None, f"exit {r.returncode}: {doc.get('status')}: {doc.get('message', '')[:300]}"
    return doc, None


def read_shapes(folder):
    """{name: shape} from the safetensors headers in folder."""
    shapes = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with open(os.path.join(folder, f), "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n))
            shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def synth_pass(moepack, preset, mt, entries, legacy, tmp):
    """The same comparison on the names `moepack synth` writes for the preset's family (its
    published names: shared experts, routers, norms), config.json's model_type set to mt."""
    folder = os.path.join(tmp, mt + "-synth")
    r = subprocess.run([moepack, "synth", "--arch", preset, "--experts", str(E), "--hidden", str(H),
                        "--intermediate", str(I), "--layers", str(L), "--vocab", str(V), "--shards", "1", folder],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return None, f"synth --arch {preset}: exit {r.returncode}: {r.stderr.strip()[:200]}"
    cfg_path = os.path.join(folder, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["model_type"] = mt
    cfg.pop("architectures", None)
    json.dump(cfg, open(cfg_path, "w"))
    shapes = read_shapes(folder)
    expected = hfmatch.Mapping(entries, legacy).convert(shapes)
    doc, err = plan(moepack, folder)
    if doc is None:
        return None, "synth names: " + err
    diffs = compare(expected, doc["outputs"]) + reload_diffs(entries, legacy, expected, doc["outputs"])
    return ["synth names: " + d for d in diffs], len(expected)


def check_type(moepack, mt, entries, legacy, tmp, preset=None):
    """(expected, diffs or None when moepack's plan failed, error text, tensors compared)."""
    shapes = instantiate(mt, entries)
    expected = hfmatch.Mapping(entries, legacy).convert(shapes)
    folder = os.path.join(tmp, mt)
    os.makedirs(folder)
    write_checkpoint(folder, shapes, config_for(mt))
    doc, err = plan(moepack, folder)
    if doc is None:
        return expected, None, err, 0
    diffs = compare(expected, doc["outputs"]) + reload_diffs(entries, legacy, expected, doc["outputs"])
    n = len(expected)
    if preset is not None:
        more, got = synth_pass(moepack, preset, mt, entries, legacy, tmp)
        if more is None:
            return expected, None, got, n
        diffs += more
        n += got
    return expected, diffs, None, n


def material_pass(moepack, material, mapping, claimed, tmp):
    """Real releases' config.json + index (../shared/safetensors-material): planned from the
    index alone (names, not shapes); each of a claimed model type with expert conversions is
    compared by target names and sources. Returns (lines, failures)."""
    lines, failed = [], 0
    for d in sorted(os.listdir(material)) if material and os.path.isdir(material) else []:
        src = os.path.join(material, d)
        if not os.path.exists(os.path.join(src, "model.safetensors.index.json")):
            continue
        mt = json.load(open(os.path.join(src, "config.json"))).get("model_type")
        if mt not in claimed or mt not in mapping or mt not in expert_types({mt: mapping[mt]}):
            lines.append(f"material {d}: {mt}: not compared (no preset, or no expert conversion in the mapping)")
            continue
        names = json.load(open(os.path.join(src, "model.safetensors.index.json")))["weight_map"]
        expected = hfmatch.Mapping(mapping[mt], mapping.get("legacy", [])).convert({n: [4, 4, 4] for n in names})
        doc, err = plan(moepack, src)
        got = {} if doc is None else {o["name"]: o["sources"] for o in doc["outputs"]}
        diffs = [err] if err else []
        diffs += [f"missing {n}" for n in expected if n not in got and not err]
        diffs += [f"unexpected {n}" for n in got if n not in expected]
        diffs += [f"{n}: sources differ" for n in expected if n in got and got[n] != expected[n]["sources"]]
        word = "KNOWN" if diffs and mt in KNOWN_DIFFERENCES else "MISMATCH" if diffs else "OK"
        failed += word == "MISMATCH" or (not diffs and mt in KNOWN_DIFFERENCES)
        lines.append(f"material {d}: {mt}: {word}: {len(expected)} tensors"
                     + (f"; {len(diffs)} differences, first: {diffs[0]}" if diffs else ""))
    return lines, failed


def claimed_types(moepack):
    """{model type: preset name} from `moepack presets --json`."""
    r = subprocess.run([moepack, "presets", "--json"], capture_output=True, text=True, check=True)
    return {mt: p["name"] for p in json.loads(r.stdout) for mt in p["model_types"]}


def verdict(mt, claimed, diffs, err, require_all):
    """(status word, failed?)"""
    if mt not in claimed:
        return "NO PRESET", require_all
    bad = err is not None or bool(diffs)
    if mt in KNOWN_DIFFERENCES:
        return ("KNOWN" if bad else "KNOWN BUT OK (remove it from KNOWN_DIFFERENCES)"), not bad
    return ("MISMATCH" if bad else "OK"), bad


def report(mt, word, expected, diffs, err, n, a):
    """One line per model type; with --verbose every difference, with --expected the derivation."""
    detail = err or ("; ".join(diffs[:3]) + (f"; ... {len(diffs) - 3} more" if len(diffs) > 3 else "")
                     if diffs else f"{n} tensors")
    if mt in KNOWN_DIFFERENCES and diffs is not None and not err:
        detail = f"{KNOWN_DIFFERENCES[mt]} | {detail}"
    print(f"{mt:24s} {word}: {detail}")
    if a.verbose and diffs:
        for d in diffs:
            print("    " + d)
    if a.expected:
        for name in sorted(expected, key=hfmatch.dot_natural_key):
            x = expected[name]
            more = " ..." if len(x["sources"]) > 1 else ""
            print(f"    {name} {x['shape']} {x['ops']} <- {x['sources'][0]}{more}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moepack", required=True)
    ap.add_argument("--mapping", default=DUMP)
    ap.add_argument("--require-all", action="store_true",
                    default=os.environ.get("MPK_CROSSCHECK_REQUIRE_ALL", "") not in ("", "0"))
    ap.add_argument("--only", default="")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--expected", action="store_true", help="print transformers' derivation per type")
    ap.add_argument("--material", default=os.environ.get("MPK_MATERIAL", ""),
                    help="folder of real config.json + index pairs (default $MPK_MATERIAL)")
    a = ap.parse_args()
    dump = json.load(open(a.mapping))
    mapping = dump["mapping"]
    types = expert_types(mapping)
    print(f"transformers {dump['transformers']}: {len(types)} model types with expert conversions: {' '.join(types)}")
    claimed = claimed_types(a.moepack)
    outside = sorted(set(claimed) - set(types))
    if a.only:
        types = [t for t in types if t in a.only.split(",")]
    print(f"moepack's presets also cover, outside that list (not checked here): {' '.join(outside)}")
    counts, failed = {}, 0
    with tempfile.TemporaryDirectory(prefix="mpk-crosscheck-") as tmp:
        for mt in types:
            expected, diffs, err, n = check_type(a.moepack, mt, mapping[mt], mapping.get("legacy", []), tmp,
                                                 claimed.get(mt))
            word, bad = verdict(mt, claimed, diffs, err, a.require_all)
            failed += bad
            counts[word.split(" (")[0]] = counts.get(word.split(" (")[0], 0) + 1
            report(mt, word, expected, diffs, err, n, a)
        lines, bad = material_pass(a.moepack, a.material, mapping, claimed, tmp)
        for line in lines:
            print(line)
        failed += bad
    summary = ", ".join(f"{n} {w}" for w, n in sorted(counts.items()))
    print(f"summary: {len(types)} model types: {summary}; {failed} failing"
          f"{'' if a.require_all else ' (NO PRESET tolerated: lenient mode, --require-all to fail on them)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
