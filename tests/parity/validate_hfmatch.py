#!/usr/bin/env python3
"""Checks hfmatch.py (the re-implementation crosscheck.py relies on) against the installed
transformers itself: for every model type of the installed conversion mapping with expert
conversions, the synthetic tensor names crosscheck.py writes are renamed by transformers'
own `rename_source_key` (renamings, then converters; keys in `dot_natural_key` order, as its
loader visits them) and by hfmatch, and the two names and matched converter patterns must agree.
Settles what the stored sources leave open (issue 48): whether `ngram_embedding.shard_*.weight`
matches shard names, first-occurrence replacement, GroupWeightRename's guard.
Needs transformers (the GPU machine: gpu/device_run.sh hfmatch); not in CI.
Usage: validate_hfmatch.py [--json FILE] [--dry-run]
  --dry-run  without transformers: hfmatch against itself (no difference expected) and against a
             matcher altered to apply no renaming (differences expected), to check this script's
             comparison.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crosscheck  # noqa: E402
import hfmatch  # noqa: E402

# names whose handling the stored sources leave open, added to every type's synthetic names
PROBES = ["model.language_model.ngram_embedding.shard_0.weight", "model.language_model.ngram_embedding.shard_10.weight",
          "model.layers.0.mlp.experts.3.gate_proj.weight_scale_inv", "x_norm.y.norm.weight"]


def installed_mapping():
    """{model type: entries} of the installed transformers, as dump_mapping.py writes them, and a
    renamer(mt) giving transformers' own (key -> (name, pattern)) for a model type."""
    from transformers import conversion_mapping as cm
    from transformers.core_model_loading import WeightConverter, rename_source_key
    import dump_mapping
    built = cm._build_checkpoint_conversion_mapping()
    entries = {mt: [dump_mapping.describe(x) for x in items] for mt, items in built.items()}

    def renamer(mt):
        conv = list(cm.get_checkpoint_conversion_mapping(mt) or []) + list(cm.get_checkpoint_conversion_mapping("legacy") or [])
        renamings = [c for c in conv if not isinstance(c, WeightConverter)]
        converters = [c for c in conv if isinstance(c, WeightConverter)]
        return lambda key: rename_source_key(key, renamings, converters)
    return entries, renamer


def own_renamer(entries_of, drop_renamings=False):
    """hfmatch as the reference (--dry-run); drop_renamings alters it on purpose."""
    def renamer(mt):
        m = hfmatch.Mapping(entries_of[mt], entries_of.get("legacy", []))
        if drop_renamings:
            m.renamings = []
        return lambda key: m.rename_key(key)[::2]
    return renamer


def compare_type(mt, entries, reference):
    """Differences between hfmatch and the reference renamer on the type's names."""
    names = sorted(set(crosscheck.instantiate(mt, entries)) | set(PROBES), key=hfmatch.dot_natural_key)
    mine = hfmatch.Mapping(entries, ENTRIES.get("legacy", []))
    diffs = []
    for key in names:
        want_name, want_pattern = reference(key)
        got_name, _, got_pattern = mine.rename_key(key)
        if (got_name, got_pattern) != (want_name, want_pattern):
            diffs.append({"key": key, "transformers": [want_name, want_pattern], "hfmatch": [got_name, got_pattern]})
    return diffs


ENTRIES = {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    if a.dry_run:
        ENTRIES.update(json.load(open(crosscheck.DUMP))["mapping"])
        runs = [("itself", own_renamer(ENTRIES), False), ("no-renamings", own_renamer(ENTRIES, True), True)]
    else:
        entries, renamer = installed_mapping()
        ENTRIES.update(entries)
        runs = [("transformers", renamer, False)]
    report, bad = {}, 0
    for label, make, expect_diffs in runs:
        total = 0
        for mt in crosscheck.expert_types(ENTRIES):
            diffs = compare_type(mt, ENTRIES[mt], make(mt))
            total += len(diffs)
            report.setdefault(label, {})[mt] = diffs
            print(f"{label:12s} {mt:24s} {'OK' if not diffs else f'{len(diffs)} differ, first: {diffs[0]}'}")
        bad += (total == 0) if expect_diffs else (total > 0)
        print(f"{label}: {total} differences{' (expected some)' if expect_diffs else ''}")
    if a.json:
        json.dump(report, open(a.json, "w"), indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
