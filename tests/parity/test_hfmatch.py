#!/usr/bin/env python3
"""Hand-written cases for hfmatch.py, the re-implementation of transformers' key matching that
crosscheck.py relies on. Each expected name is worked out by hand from the rules quoted in
hfmatch's docstring (transformers' core_model_loading.py). Run: python3 test_hfmatch.py"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hfmatch  # noqa: E402


def ren(src, tgt, kind="WeightRenaming"):
    return {"kind": kind, "source_patterns": src if isinstance(src, list) else [src],
            "target_patterns": tgt if isinstance(tgt, list) else [tgt]}


def conv(src, tgt, *ops):
    e = ren(src, tgt, "WeightConverter")
    e["operations"] = [dict(o) for o in ops]
    return e


MERGE0 = {"op": "MergeModulelist", "dim": "0"}
CAT1 = {"op": "Concatenate", "dim": "1", "num_shards_attribute": "None"}


def names(mapping, keys):
    return {k: mapping.rename_key(k)[0] for k in sorted(keys, key=hfmatch.dot_natural_key)}


class Matching(unittest.TestCase):
    def test_group_rename_does_not_chain(self):
        m = hfmatch.Mapping([ren(["blocks.(\\d+).norm0", "blocks.(\\d+).norm1"],
                                 ["blocks.\\1.norm1", "blocks.\\1.norm2"], "GroupWeightRename")])
        got = names(m, ["v.blocks.0.norm0.weight", "v.blocks.0.norm1.weight", "v.blocks.11.norm1.bias"])
        self.assertEqual(got, {"v.blocks.0.norm0.weight": "v.blocks.0.norm1.weight",
                               "v.blocks.0.norm1.weight": "v.blocks.0.norm2.weight",
                               "v.blocks.11.norm1.bias": "v.blocks.11.norm2.bias"})

    def test_group_rename_guard(self):
        # no key matched the first member yet: the second member does not apply
        m = hfmatch.Mapping([ren(["a.norm0", "a.norm1"], ["a.norm1", "a.norm2"], "GroupWeightRename")])
        self.assertEqual(m.rename_key("x.a.norm1.weight")[0], "x.a.norm1.weight")
        self.assertEqual(m.rename_key("x.a.norm0.weight")[0], "x.a.norm1.weight")
        self.assertEqual(m.rename_key("x.a.norm1.weight")[0], "x.a.norm2.weight")

    def test_back_reference(self):
        m = hfmatch.Mapping([ren("sam_model\\.blocks\\.(\\d+)\\.norm1\\.",
                                 "vision_tower.sam_encoder.layers.\\1.layer_norm1.")])
        self.assertEqual(m.rename_key("model.sam_model.blocks.17.norm1.weight")[0],
                         "model.vision_tower.sam_encoder.layers.17.layer_norm1.weight")

    def test_alternation_group_and_empty_capture(self):
        m = hfmatch.Mapping([ren("(^|model\\.)layers\\.", "\\1language_model.layers.")])
        self.assertEqual(m.rename_key("model.layers.3.mlp.gate.weight")[0],
                         "model.language_model.layers.3.mlp.gate.weight")
        self.assertEqual(m.rename_key("layers.3.mlp.gate.weight")[0], "language_model.layers.3.mlp.gate.weight")
        self.assertEqual(m.rename_key("model.vision.layers.3.w")[0], "model.vision.layers.3.w")

    def test_anchors(self):
        m = hfmatch.Mapping([ren("^head\\.weight$", "lm_head.weight")])
        self.assertEqual(m.rename_key("head.weight")[0], "lm_head.weight")
        self.assertEqual(m.rename_key("model.head.weight")[0], "model.head.weight")
        self.assertEqual(m.rename_key("head.weight_scale_inv")[0], "head.weight_scale_inv")

    def test_renamings_chain_in_order(self):
        m = hfmatch.Mapping([ren("vision_tower.encoder", "model.vision_tower"), ren("blocks", "layers")])
        self.assertEqual(m.rename_key("vision_tower.encoder.blocks.0.wo.weight")[0],
                         "model.vision_tower.layers.0.wo.weight")
        # and the reverse order does not chain back
        m = hfmatch.Mapping([ren("blocks", "layers"), ren("layers", "blocks")])
        self.assertEqual(m.rename_key("x.blocks.0.w")[0], "x.blocks.0.w")

    def test_replace_hits_first_occurrence_not_the_match(self):
        # the lookbehind skips 'x_norm.', search finds the second 'norm.', and str.replace then
        # rewrites the FIRST 'norm.' (transformers' key.replace(match.group(0), repl, 1))
        m = hfmatch.Mapping([ren("(?<!_)norm\\.", "ln.")])
        self.assertEqual(m.rename_key("x_norm.y.norm.weight")[0], "x_ln.y.norm.weight")

    def test_star_only_between_dots(self):
        m = hfmatch.Mapping([conv("mlp.experts.*.gate_proj.weight", "mlp.experts.gate_up_proj", MERGE0),
                             conv("ngram_embedding.shard_*.weight", "ngram_embedding.weight", CAT1)])
        key, c, pat = m.rename_key("model.layers.0.mlp.experts.12.gate_proj.weight")
        self.assertEqual((key, pat), ("model.layers.0.mlp.experts.gate_up_proj", "mlp.experts.*.gate_proj.weight"))
        # no '$': the FP8 companion is renamed along (..._scale_inv kept as a suffix)
        self.assertEqual(m.rename_key("m.mlp.experts.1.gate_proj.weight_scale_inv")[0],
                         "m.mlp.experts.gate_up_proj_scale_inv")
        # '_*' is a regex repeat, not a glob: shard_0 does not match
        self.assertIsNone(m.rename_key("model.ngram_embedding.shard_0.weight")[1])

    def test_first_converter_wins(self):
        m = hfmatch.Mapping([conv("mlp.gate.weight_1", "mlp.vision_moe.gate.weight",
                                  {"op": "Transpose", "dim0": "0", "dim1": "1"}),
                             conv("mlp.gate.weight", "mlp.text_moe.gate.weight",
                                  {"op": "Transpose", "dim0": "0", "dim1": "1"})])
        self.assertEqual(m.rename_key("l.0.mlp.gate.weight_1")[0], "l.0.mlp.vision_moe.gate.weight")
        self.assertEqual(m.rename_key("l.0.mlp.gate.weight")[0], "l.0.mlp.text_moe.gate.weight")

    def test_load_name_falls_back_to_the_name_as_it_is(self):
        # '.' is any character: the rename matches its own output (shared_experts -> shared_experts.
        # + '.'); the model has the name as it is, so it loads unchanged
        m = hfmatch.Mapping([ren("mlp.shared_expert.", "mlp.shared_experts.")])
        model = {"l.0.mlp.shared_experts.w"}
        self.assertEqual(m.rename_key("l.0.mlp.shared_experts.w")[0], "l.0.mlp.shared_experts..w")
        self.assertEqual(m.load_name("l.0.mlp.shared_experts.w", model), "l.0.mlp.shared_experts.w")
        self.assertEqual(m.load_name("l.0.mlp.shared_expert.w", model), "l.0.mlp.shared_experts.w")
        self.assertEqual(m.load_name("l.0.mlp.shared_expert.v", model), "l.0.mlp.shared_experts.v")

    def test_natural_order(self):
        keys = ["a.10.w", "a.2.w", "a.shard_10.w", "a.shard_2.w", "a.x.w"]
        self.assertEqual(sorted(keys, key=hfmatch.dot_natural_key),
                         ["a.2.w", "a.10.w", "a.shard_10.w", "a.shard_2.w", "a.x.w"])


class Ops(unittest.TestCase):
    def test_mixtral_like_merge_concat(self):
        m = hfmatch.Mapping([ren(".block_sparse_moe.", ".mlp."),
                             conv([".experts.*.w1.weight", ".experts.*.w3.weight"], ".experts.gate_up_proj",
                                  MERGE0, CAT1),
                             conv(".experts.*.w2.weight", ".experts.down_proj", MERGE0)])
        shapes = {}
        for e in (1, 0, 2):  # out of order on purpose
            p = f"model.layers.0.block_sparse_moe.experts.{e}."
            shapes[p + "w3.weight"] = [8, 24]
            shapes[p + "w1.weight"] = [8, 24]
            shapes[p + "w2.weight"] = [24, 8]
        shapes["model.layers.0.block_sparse_moe.gate.weight"] = [3, 24]
        out = m.convert(shapes)
        gu = out["model.layers.0.mlp.experts.gate_up_proj"]
        self.assertEqual(gu["shape"], [3, 16, 24])
        self.assertEqual(gu["ops"], [("merge", 0), ("concat", 1)])
        self.assertEqual(gu["sources"], [f"model.layers.0.block_sparse_moe.experts.{e}.w{w}.weight"
                                         for w in (1, 3) for e in (0, 1, 2)])
        self.assertEqual(out["model.layers.0.mlp.experts.down_proj"]["shape"], [3, 24, 8])
        self.assertEqual(out["model.layers.0.mlp.gate.weight"], {"shape": [3, 24], "ops": [],
                         "sources": ["model.layers.0.block_sparse_moe.gate.weight"]})
        self.assertEqual(len(out), 3)

    def test_chunk_names_around_first_target(self):
        m = hfmatch.Mapping([conv("wqkv", ["attn.q_proj", "attn.k_proj", "attn.v_proj"],
                                  {"op": "Chunk", "dim": "0"},
                                  {"op": "PermuteForRope", "permute_layer_names": "['q_proj', 'k_proj']"})])
        out = m.convert({"vt.layers.0.wqkv.weight": [48, 16]})
        self.assertEqual(sorted(out), ["vt.layers.0.attn.k_proj.weight", "vt.layers.0.attn.q_proj.weight",
                                       "vt.layers.0.attn.v_proj.weight"])
        self.assertEqual(out["vt.layers.0.attn.q_proj.weight"]["ops"], [("chunk", 0, 3), ("permute_for_rope",)])
        self.assertEqual(out["vt.layers.0.attn.v_proj.weight"]["ops"], [("chunk", 0, 3)])
        self.assertEqual(out["vt.layers.0.attn.v_proj.weight"]["shape"], [16, 16])

    def test_ernie_split_halves(self):
        m = hfmatch.Mapping([conv(["experts.*.gate_proj.weight", "experts.*.up_proj.weight"],
                                  ["text_moe.experts.gate_up_proj", "vision_moe.experts.gate_up_proj"],
                                  {"op": "ErnieFuseAndSplitTextVisionExperts", "stack_dim": "0", "concat_dim": "1"})])
        shapes = {f"m.0.mlp.experts.{e}.{w}_proj.weight": [8, 24] for e in range(4) for w in ("gate", "up")}
        out = m.convert(shapes)
        v = out["m.0.mlp.vision_moe.experts.gate_up_proj"]
        self.assertEqual(v["shape"], [2, 16, 24])
        self.assertEqual(v["sources"], ["m.0.mlp.experts.2.gate_proj.weight", "m.0.mlp.experts.3.gate_proj.weight",
                                        "m.0.mlp.experts.2.up_proj.weight", "m.0.mlp.experts.3.up_proj.weight"])

    def test_norm_op(self):
        self.assertEqual(hfmatch.norm_op("merge(dim=0)"), ("merge", 0))
        self.assertEqual(hfmatch.norm_op("chunk(dim=0, chunks=2)"), ("chunk", 0, 2))
        self.assertEqual(hfmatch.norm_op("transpose(1, 2)"), ("transpose", 1, 2))
        self.assertEqual(hfmatch.norm_op("concat_list(dim=0, items=4)"), ("concat", 0))
        self.assertEqual(hfmatch.norm_op("interleave(dim=1)"), ("interleave", 1))
        self.assertEqual(hfmatch.norm_op("interleave(dim=1, inverse)"), ("deinterleave", 1))
        rope = "permute_for_rope(heads=2, groups=0,1)"
        self.assertEqual(hfmatch.norm_op(rope, 1), ("permute_for_rope",))
        self.assertIsNone(hfmatch.norm_op(rope, 2))
        self.assertEqual(hfmatch.norm_op("permute_for_rope(heads=num_heads)", 2), ("permute_for_rope",))


if __name__ == "__main__":
    unittest.main()
