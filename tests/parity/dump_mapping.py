#!/usr/bin/env python3
"""Prints transformers' own checkpoint conversion mapping (every model_type, every renaming and
converter with its operations) and, for the presets' tiny configs, the runtime names and shapes of
the expert parameters, so the presets can be checked against the installed library.
Usage: dump_mapping.py [--json FILE]"""
import argparse
import json

import transformers
from transformers import conversion_mapping as cm


def describe(x):
    d = {"kind": type(x).__name__}
    for attr in ("source_patterns", "target_patterns", "operations"):
        v = getattr(x, attr, None)
        if v is None:
            continue
        if attr == "operations":
            v = [{"op": type(o).__name__, **{k: repr(w) for k, w in vars(o).items() if not k.startswith("_")}}
                 for o in v]
        d[attr] = v if not isinstance(v, tuple) else list(v)
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    a = ap.parse_args()
    build = getattr(cm, "_build_checkpoint_conversion_mapping")
    mapping = build()
    out = {"transformers": transformers.__version__, "mapping": {}}
    for mt, items in sorted(mapping.items()):
        try:
            out["mapping"][mt] = [describe(x) for x in items]
        except Exception as e:  # a form this script does not know: say so, keep going
            out["mapping"][mt] = [f"error: {e!r}"]
    for mt, items in out["mapping"].items():
        print(f"== {mt}")
        for d in items:
            print("  ", json.dumps(d, default=str))
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1, default=str)


if __name__ == "__main__":
    main()
