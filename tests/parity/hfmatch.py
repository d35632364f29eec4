"""An independent re-implementation, in plain Python, of how transformers v5 renames and converts
checkpoint keys at load time (`core_model_loading.py`, the version with GroupWeightRename and
PrefixChange; read from its source, not from moepack's planner), working on names and shapes only.

What it follows, rule by rule (the transformers function each rule is read from in brackets):
- Patterns are Python regular expressions. The only rewrite is `.*.` -> `\\..*\\.` (so `*` is a
  wildcard only between two dots: `mlp.experts.*.gate_proj.weight`); every unescaped `.` stays
  "any character" [WeightTransform.__init__].
- The source patterns of one transform form one alternation `(?P<g0>p0)|(?P<g1>p1)|...`, applied
  with `re.search`: the leftmost position wins, and at it the first branch that matches
  [WeightTransform.__init__, _scoped_match].
- Replacement: target_patterns[0] (GroupWeightRename: the target of the member that matched);
  `\\N` in it is group N counted inside the matched branch; then
  `key.replace(match.group(0), replacement, 1)`: the FIRST occurrence of the matched text is
  replaced, which is not always where the match was (a lookbehind can skip an earlier one)
  [WeightTransform.rename_source_key].
- GroupWeightRename: one match per key (its members never chain), and members other than the
  first apply only once a key matching the first member has been seen; keys are visited in
  `dot_natural_key` order (segments split on '.', all-digit segments compared as numbers and
  before words) [GroupWeightRename.rename_source_key, convert_and_load_state_dict_in_model].
- Order [rename_source_key]: every renaming (WeightRenaming, GroupWeightRename, PrefixChange, in
  mapping order, then the `legacy` ones) is tried once, each on the output of the one before
  (they chain); then the converters in mapping order on the renamed key: the first that matches
  renames it (source pattern -> target_patterns[0]) and the others are skipped.
- Keys whose renamed name is the same and that one converter matched are one conversion; per
  source pattern the tensors are listed in visit order [convert_and_load_state_dict_in_model].
- Ops [MergeModulelist, Concatenate, Chunk, Transpose, Interleave, PermuteForRope,
  ErnieFuseAndSplitTextVisionExperts .convert]: see `_op_*` below. The output names are
  `prefix + key + suffix`, prefix and suffix taken around the first output key found in the
  renamed name [WeightConverter.convert].
- Given the model's parameter names (`load_name`): a key whose renamed name the model does not
  have but which the model has as it is keeps its name [convert_and_load_state_dict_in_model].
Not modelled (they need the instantiated model): the base_model_prefix add/strip against the
model's state dict, scope_prefix of sub-model mappings, dropping keys the model does not have,
Transpose(check_dims=True)'s no-op when the tensor already has the model's shape (callers give
shapes where the two differ), quantizer hooks. The dump (tests/parity/dump_mapping.py) records
each transform's patterns after its __init__ processing, which is what is matched here.
"""
import re


def dot_natural_key(name):
    """transformers' sort key for state-dict names."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in name.split(".")]


def compile_sources(patterns):
    star = r"\..*\."
    branches = ["(?P<g%d>%s)" % (i, p.replace(".*.", star)) for i, p in enumerate(patterns)]
    return re.compile("|".join(branches))


class Transform:
    """One entry of the mapping dump: kind, source_patterns, target_patterns, operations."""

    def __init__(self, entry):
        self.kind = entry["kind"]
        self.sources = list(entry["source_patterns"])
        self.targets = list(entry["target_patterns"])
        self.ops = list(entry.get("operations", []))
        self.regex = compile_sources(self.sources)
        self.active = None  # GroupWeightRename's guard

    @property
    def is_converter(self):
        return self.kind == "WeightConverter"

    def rename(self, key):
        """(renamed key, matched source pattern or None)."""
        m = self.regex.search(key)
        if m is None:
            return key, None
        group = next(n for n, v in m.groupdict().items() if v is not None)
        idx = int(group[1:])
        if self.kind == "GroupWeightRename":
            if idx == 0:
                self.active = True
            elif not self.active:
                return key, None
            repl = self.targets[idx]
        else:
            repl = self.targets[0]
        if re.search(r"\\\d", repl):
            start = self.regex.groupindex[group]
            repl = re.sub(r"\\(\d+)", lambda g: m.group(start + int(g.group(1))), repl)
        return key.replace(m.group(0), repl, 1), self.sources[idx]


class Mapping:
    """A model type's transforms as transformers orders them for loading."""

    def __init__(self, entries, legacy=()):
        transforms = [Transform(e) for e in list(entries) + list(legacy)]
        self.renamings = [t for t in transforms if not t.is_converter]
        self.converters = [t for t in transforms if t.is_converter]

    def rename_key(self, key):
        """(renamed key, converter or None, its matched source pattern or None)."""
        for r in self.renamings:
            key, _ = r.rename(key)
        for c in self.converters:
            key, pattern = c.rename(key)
            if pattern is not None:
                return key, c, pattern
        return key, None, None

    def load_name(self, key, model_keys):
        """The name a key loads under when the model's parameter names are known: the renamed
        key, unless that is not a parameter of the model and the key as it is is (then the key
        is kept) [convert_and_load_state_dict_in_model]."""
        renamed = self.rename_key(key)[0]
        return key if renamed not in model_keys and key in model_keys else renamed

    def convert(self, shapes):
        """shapes: {source name: shape list}. Returns {target name: {"shape", "ops", "sources"}}
        where ops are normalized tuples (see `norm_op`) and sources the source names in order."""
        groups = {}
        out = {}
        for name in sorted(shapes, key=dot_natural_key):
            renamed, conv, pattern = self.rename_key(name)
            if conv is None:
                if renamed in out:
                    raise ValueError(f"{name} and {out[renamed]['sources'][0]} both become {renamed}")
                out[renamed] = {"shape": list(shapes[name]), "ops": [], "sources": [name]}
                continue
            g = groups.setdefault(renamed, (conv, {}))
            g[1].setdefault(pattern, []).append(name)
        for renamed, (conv, collected) in groups.items():
            out.update(run_converter(conv, renamed, collected, shapes))
        return out


def _ints(op, *names):
    return [int(op[n]) for n in names]


def _op_merge(op, items, conv):
    dim, = _ints(op, "dim")
    res = {}
    for key, lst in items.items():
        shape = list(lst[0]["shape"])
        shape.insert(dim, len(lst))
        tgt = conv.targets[0] if len(items) == 1 else key
        res[tgt] = [{"shape": shape, "ops": lst[0]["ops"] + [("merge", dim)],
                     "sources": [s for t in lst for s in t["sources"]]}]
    return res


def _op_concat(op, items, conv):
    dim, = _ints(op, "dim")
    parts = [t for p in conv.sources if p in items for t in items[p]]  # the spec's order
    if not parts:
        raise ValueError("Concatenate: no tensor under a source pattern")
    shape = list(parts[0]["shape"])
    shape[dim] = sum(t["shape"][dim] for t in parts)
    ops = parts[0]["ops"] + [("concat", dim)]
    return {conv.targets[0]: [{"shape": shape, "ops": ops, "sources": [s for t in parts for s in t["sources"]]}]}


def _single(items):
    lst = next(iter(items.values()))
    return lst[0]


def _op_chunk(op, items, conv):
    dim, = _ints(op, "dim")
    t = _single(items)
    n = len(conv.targets)
    shape = list(t["shape"])
    shape[dim] //= n
    return {k: [{"shape": shape, "ops": t["ops"] + [("chunk", dim, n)], "sources": t["sources"]}]
            for k in conv.targets}


def _op_transpose(op, items, conv):
    a, b = _ints(op, "dim0", "dim1")
    t = _single(items)
    shape = list(t["shape"])
    shape[a], shape[b] = shape[b], shape[a]
    tgt = conv.targets[0] if len(conv.targets) == 1 else conv.sources[0]
    return {tgt: [{"shape": shape, "ops": t["ops"] + [("transpose", a, b)], "sources": t["sources"]}]}


def _op_interleave(op, items, conv):
    dim, = _ints(op, "dim")
    t = _single(items)
    name = "deinterleave" if op.get("inverse") == "True" else "interleave"
    return {conv.targets[0]: [dict(t, ops=t["ops"] + [(name, dim)])]}


def _op_permute(op, items, conv):
    # 5.17's PermuteForRope has permute_layer_names (dump): the keys naming one of them are
    # permuted; without the list every key is (the stored source's version)
    names = re.findall(r"'([^']+)'", op.get("permute_layer_names", ""))
    res = {}
    for key, lst in items.items():
        hit = not names or any(n in key for n in names)
        res[key] = [dict(t, ops=t["ops"] + [("permute_for_rope",)]) if hit else t for t in lst]
    return res


def _op_ernie(op, items, conv):
    sdim, cdim = _ints(op, "stack_dim", "concat_dim")
    k = len(conv.targets)
    res = {}
    for p in conv.sources:
        lst = items[p]
        size = -(-len(lst) // k)
        for i, tgt in enumerate(conv.targets):
            chunk = lst[i * size:(i + 1) * size]
            shape = list(chunk[0]["shape"])
            shape.insert(sdim, len(chunk))
            res.setdefault(tgt, []).append({"shape": shape, "sources": [s for t in chunk for s in t["sources"]]})
    out = {}
    for tgt, parts in res.items():
        shape = list(parts[0]["shape"])
        shape[cdim] = sum(t["shape"][cdim] for t in parts)
        ops = [("merge", sdim)] + ([("concat", cdim)] if len(parts) > 1 else [])
        out[tgt] = [{"shape": shape, "ops": ops, "sources": [s for t in parts for s in t["sources"]]}]
    return out


OPS = {"MergeModulelist": _op_merge, "Concatenate": _op_concat, "Chunk": _op_chunk,
       "Transpose": _op_transpose, "Interleave": _op_interleave, "PermuteForRope": _op_permute,
       "ErnieFuseAndSplitTextVisionExperts": _op_ernie}


class UnknownOp(Exception):
    pass


def run_converter(conv, renamed, collected, shapes):
    items = {p: [{"shape": list(shapes[n]), "ops": [], "sources": [n]} for n in names]
             for p, names in collected.items()}
    for op in conv.ops:
        fn = OPS.get(op["op"])
        if fn is None:
            raise UnknownOp(op["op"])
        items = fn(op, items, conv)
    full = renamed.replace(".*.", ".0.") if ".*." in renamed else renamed
    hit = next((k for k in items if k in full), None)
    out = {}
    for k, lst in items.items():
        name = k if hit is None else full.partition(hit)[0] + k + full.partition(hit)[2]
        t = lst[0]
        out[name] = {"shape": t["shape"], "ops": t["ops"], "sources": t["sources"],
                     "target_index": conv.targets.index(k) if k in conv.targets else None}
    return out


def norm_op(text, target_index=None):
    """moepack's op text ('merge(dim=0)', 'chunk(dim=0, chunks=2)', 'transpose(1, 2)',
    'interleave(dim=1, inverse)', 'concat_list(dim=0, items=4)', 'permute_for_rope(heads=2,
    groups=0,1)') as the tuples this module produces; None for a permute_for_rope whose groups
    leave out the converter's target number target_index (it does not touch that output)."""
    m = re.match(r"\s*([A-Za-z_0-9]+)\s*(?:\((.*)\))?", text)
    name, args = m.group(1).lower(), m.group(2) or ""
    name = {"permuteforrope": "permute_for_rope", "permute_rope": "permute_for_rope",
            "rope_permute": "permute_for_rope", "concat_list": "concat"}.get(name, name)
    if name == "permute_for_rope":
        g = re.search(r"groups=([\d,]+)", args)
        if g and target_index is not None and str(target_index) not in g.group(1).split(","):
            return None
        return (name,)
    if name == "interleave" and re.search(r"inverse(?!=false)", args):
        name = "deinterleave"
    ints = tuple(int(x) for x in re.findall(r"-?\d+", args))
    return (name,) + (ints[:1] if name == "concat" else ints)
