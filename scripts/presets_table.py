#!/usr/bin/env python3
"""Print the presets table of docs/presets.md from `moepack presets --json`.

Usage: python3 scripts/presets_table.py [MOEPACK] [--write docs/presets.md]

MOEPACK defaults to build/moepack. Without --write the Markdown table goes to stdout; with it,
the lines between the markers <!-- presets-table:begin --> and <!-- presets-table:end --> in
the given file are replaced (the rest of the file is left as it is).
"""
import json
import subprocess
import sys

BEGIN = "<!-- presets-table:begin -->"
END = "<!-- presets-table:end -->"


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def table(moepack):
    out = subprocess.run([moepack, "presets", "--json"], check=True, capture_output=True, text=True).stdout
    presets = json.loads(out)
    rows = ["| name | model types | description |", "|---|---|---|"]
    for p in sorted(presets, key=lambda p: p["name"]):
        types = ", ".join(f"`{t}`" for t in p.get("model_types", []))
        rows.append(f"| `{p['name']}` | {types} | {cell(p.get('description', ''))} |")
    return rows


def main(argv):
    args = argv[1:]
    target = None
    if "--write" in args:
        i = args.index("--write")
        if i + 1 >= len(args):
            sys.exit("presets_table.py: --write needs a file")
        target = args[i + 1]
        del args[i:i + 2]
    moepack = args[0] if args else "build/moepack"
    rows = table(moepack)
    if target is None:
        print("\n".join(rows))
        return
    with open(target, encoding="utf-8") as f:
        lines = f.read().split("\n")
    try:
        b, e = lines.index(BEGIN), lines.index(END)
    except ValueError:
        sys.exit(f"presets_table.py: {target} has no {BEGIN} ... {END} markers")
    if e < b:
        sys.exit(f"presets_table.py: {target}: the end marker comes before the begin marker")
    lines[b + 1:e] = rows
    with open(target, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv)
