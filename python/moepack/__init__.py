"""moepack — Mixture-of-Experts safetensors checkpoints: pack, unpack, verify.

A ctypes binding over the shared library libmoepack (no compiled extension). The library is
found through $MOEPACK_LIB (a path), else the system's search path (libmoepack.so.0).

    import moepack
    report = moepack.pack("model-per-expert", "model-packed")     # preset from config.json
    moepack.verify("model-per-expert", "model-packed")["identical"]  # True
    moepack.unpack("model-packed", "model-back")

Every call returns the report as a dict (the document `moepack CMD --json` prints); failures
raise moepack.Error, which carries the status name (e.g. "destination-exists"), the message
(naming the file, the tensor and the rule broken), and errno for I/O failures.
"""
import ctypes
import ctypes.util
import json
import numbers
import operator
import os

__all__ = ["Error", "pack", "unpack", "convert", "compress", "decompress", "inspect", "hash", "verify", "diff", "synth", "presets",
           "version", "features", "resolve"]


def _load():
    path = os.environ.get("MOEPACK_LIB") or ctypes.util.find_library("moepack") or "libmoepack.so.0"
    return ctypes.CDLL(path)


_lib = _load()


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("sys_errno", ctypes.c_int), ("where", ctypes.c_char * 512),
                ("msg", ctypes.c_char * 1024), ("field", ctypes.c_int)]


_PROGRESS = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_double)
_WARN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)


class _ConvertReq(ctypes.Structure):
    _fields_ = [("src", ctypes.c_char_p), ("dst", ctypes.c_char_p), ("spec", ctypes.c_char_p),
                ("direction", ctypes.c_int), ("quant", ctypes.c_int), ("flags", ctypes.c_uint),
                ("max_shard_size", ctypes.c_uint64), ("mem", ctypes.c_uint64), ("threads", ctypes.c_int),
                ("io", ctypes.c_int), ("layout_like", ctypes.c_char_p), ("progress", _PROGRESS), ("warn", _WARN), ("ctx", ctypes.c_void_p),
                ("cancel", ctypes.POINTER(ctypes.c_int)), ("compress_level", ctypes.c_int)]


class _CompareReq(ctypes.Structure):
    _fields_ = [("src", ctypes.c_char_p), ("dst", ctypes.c_char_p), ("spec", ctypes.c_char_p),
                ("quant", ctypes.c_int), ("atol", ctypes.c_double), ("rtol", ctypes.c_double),
                ("progress", _PROGRESS), ("ctx", ctypes.c_void_p)]


class _CompressReq(ctypes.Structure):
    _fields_ = [("src", ctypes.c_char_p), ("dst", ctypes.c_char_p), ("level", ctypes.c_int), ("threads", ctypes.c_int),
                ("chunk_size", ctypes.c_uint64), ("flags", ctypes.c_uint), ("warn", _WARN), ("ctx", ctypes.c_void_p),
                ("progress", _PROGRESS)]


class _SynthOpts(ctypes.Structure):
    _fields_ = [("arch", ctypes.c_char_p), ("layers", ctypes.c_int), ("experts", ctypes.c_int),
                ("hidden", ctypes.c_int), ("intermediate", ctypes.c_int), ("vocab", ctypes.c_int),
                ("dtype", ctypes.c_int), ("shards", ctypes.c_int), ("seed", ctypes.c_uint64),
                ("packed", ctypes.c_bool), ("fp8", ctypes.c_bool)]


_P = ctypes.c_void_p
_ERR = ctypes.POINTER(_Error)
for name, res, args in [
        ("mpk_status_str", ctypes.c_char_p, [ctypes.c_int]),
        ("mpk_field_name", ctypes.c_char_p, [ctypes.c_int]),
        ("mpk_version", ctypes.c_char_p, []),
        ("mpk_features", ctypes.c_char_p, []),
        ("mpk_convert_req_init", None, [ctypes.POINTER(_ConvertReq), ctypes.c_char_p, ctypes.c_char_p]),
        ("mpk_convert", ctypes.c_int, [ctypes.POINTER(_ConvertReq), ctypes.POINTER(_P), _ERR]),
        ("mpk_compare_req_init", None, [ctypes.POINTER(_CompareReq), ctypes.c_char_p, ctypes.c_char_p]),
        ("mpk_verify", ctypes.c_int, [ctypes.POINTER(_CompareReq), ctypes.POINTER(_P), _ERR]),
        ("mpk_diff", ctypes.c_int, [ctypes.POINTER(_CompareReq), ctypes.POINTER(_P), _ERR]),
        ("mpk_inspect", ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(_P), _ERR]),
        ("mpk_hash", ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint, ctypes.POINTER(_P), _ERR]),
        ("mpk_compress", ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(_P), _ERR]),
        ("mpk_decompress", ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(_P), _ERR]),
        ("mpk_synth_opts_init", None, [ctypes.POINTER(_SynthOpts)]),
        ("mpk_synth", ctypes.c_int, [ctypes.POINTER(_SynthOpts), ctypes.c_char_p, _ERR]),
        ("mpk_report_json", ctypes.c_char_p, [_P]),
        ("mpk_report_free", None, [_P]),
        ("mpk_preset_name", ctypes.c_char_p, [ctypes.c_size_t]),
        ("mpk_spec_load", ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_bool, ctypes.POINTER(_P), _ERR]),
        ("mpk_spec_free", None, [_P]),
        ("mpk_spec_description", ctypes.c_char_p, [_P]),
        ("mpk_spec_model_type_count", ctypes.c_size_t, [_P]),
        ("mpk_spec_model_type", ctypes.c_char_p, [_P, ctypes.c_size_t]),
        ("mpk_resolve_source", ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), _ERR])]:
    fn = getattr(_lib, name)
    fn.restype, fn.argtypes = res, args

# enum values of moepack.h
_DIRECTION = {"pack": 0, "unpack": 1}
_QUANT = {None: 0, "dequantize": 1, "fp8-block128": 2}
_IO = {"auto": 0, "io_uring": 1, "pread": 2}
_FLAGS = {"force": 1, "resume": 2, "copy_links": 4}
_DTYPES = {"F16": 13, "BF16": 14, "F32": 17}


# What to do about a failure, by the request field the library says it is about (mpk_field_name:
# the C request's word) and the status: worded with this module's keywords (the moepack program
# words the same facts with its options, --force). A field missing here gives no hint.
_HINTS = {
    ("force", "destination-exists"): "pass force=True to replace it",
    ("mem", "memory-budget"): "raise mem= or lower threads=",
    ("pass_unknown", "not-understood"): "pass_unknown=True copies these tensors as they are (the report's "
                                        "passed_unknown lists them), if you know they need no conversion; "
                                        "or cover them with a spec (spec=FILE)",
    ("spec", "not-understood"): "write a spec for this model (a preset's JSON is a start) and convert with "
                                "spec=FILE",
    ("spec", "preset"): "moepack.presets() lists them; name one with preset=NAME (spec=NAME for convert)",
    ("spec", "already-converted"): "name the preset that converts it (preset=NAME)",
    ("resume", "usage"): "leave out resume=True",
    ("dst", "overlap"): "write to another dst, outside src",
    ("dst", "destination-exists"): "write to another dst (force=True would not replace this one)",
    ("dst", "destination-not-checkpoint"): "write to another dst (force=True replaces only a checkpoint "
                                           "directory or an empty one)",
    ("quant", "quant-layout"): "dequantize=True writes BF16 experts, which pack at any size; or leave out "
                               "quantize=",
}
_KEYWORDS = {"force": "force=True", "resume": "resume=True", "copy_links": "copy_links=True",
             "pass_unknown": "pass_unknown=True", "mem": "mem=", "threads": "threads=", "spec": "spec=",
             "quant": "quantize=/dequantize=", "revision": "revision=", "dst": "dst",
             "compress_level": "level="}


def _hint(field, status):
    """The hint for a failure about request field `field` (mpk_field_name's word, "" for none)
    with status `status`, in this module's keywords; None when there is none."""
    if not field:
        return None
    return _HINTS.get((field, status), f"see the {_KEYWORDS.get(field, field)} argument")


class Error(Exception):
    """A libmoepack failure: status (its name), code, message, where, errno, field (the request
    field the way out is about, as the C request names it: "force", "mem", ... or None) and hint
    (what to do, in this module's keywords: "pass force=True to replace it", or None). str() is
    "status: message", then "(hint: ...)" when there is one."""

    def __init__(self, err):
        self.code = err.code
        self.status = _lib.mpk_status_str(err.code).decode()
        self.message = err.msg.decode(errors="replace")
        self.where = err.where.decode(errors="replace")
        self.errno = err.sys_errno
        name = _lib.mpk_field_name(err.field)
        self.field = name.decode() if name else None
        self.hint = _hint(self.field, self.status)
        super().__init__(f"{self.status}: {self.message}" + (f" (hint: {self.hint})" if self.hint else ""))


# Every argument is checked here, before it reaches C: ctypes would pass None as NULL, cut a
# path at an embedded NUL, and wrap an int that does not fit its C field.
def _path(value, func, name, optional=False):
    """A path argument as the os functions take it (os.fspath: str, bytes or os.PathLike) in the
    file system's encoding; TypeError for any other type (None too, unless optional: then None
    stays NULL), ValueError for an embedded NUL."""
    if value is None and optional:
        return None
    try:
        p = os.fspath(value)
    except TypeError:
        raise TypeError(f"{func}: {name} should be string, bytes or os.PathLike, not "
                        f"{type(value).__name__}") from None
    b = os.fsencode(p)
    if b"\0" in b:
        raise ValueError(f"{func}: embedded null character in {name}")
    return b


def _str(value, func, name):
    """A name argument (preset, dtype...): a str without NUL."""
    if not isinstance(value, str):
        raise TypeError(f"{func}: {name} should be str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{func}: embedded null character in {name}")
    return value


_INT32 = (-(1 << 31), (1 << 31) - 1)
_UINT64 = (0, (1 << 64) - 1)


def _int(value, func, name, limits):
    """An integer argument (int or anything with __index__, not bool) within its C field's range:
    TypeError for another type, OverflowError outside (the library checks what it accepts)."""
    if isinstance(value, bool):
        raise TypeError(f"{func}: {name} should be int, not bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{func}: {name} should be int, not {type(value).__name__}") from None
    if not limits[0] <= v <= limits[1]:
        raise OverflowError(f"{func}: {name} {v} is out of range ({limits[0]}..{limits[1]})")
    return v


def _float(value, func, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: {name} should be a real number, not {type(value).__name__}")
    return float(value)


def _choice(value, func, name, table):
    """One of table's keys (a str, or None where the table has it)."""
    if value is not None or None not in table:
        _str(value, func, name)
    if value not in table:
        raise ValueError(f"{func}: {name} takes " + ", ".join(repr(k) for k in table) + f", not {value!r}")
    return table[value]


def _callback(value, func, name):
    if value is not None and not callable(value):
        raise TypeError(f"{func}: {name} should be callable or None, not {type(value).__name__}")
    return value


def _call(fn, *args):
    """Calls fn(*args, &report, &err): the report as a dict, or raises Error."""
    err = _Error()
    rep = _P()
    if fn(*args, ctypes.byref(rep), ctypes.byref(err)) != 0:
        raise Error(err)
    try:
        return json.loads(_lib.mpk_report_json(rep).decode())
    finally:
        _lib.mpk_report_free(rep)


def convert(src, dst, spec="auto", reverse=False, *, max_shard_size=50_000_000_000, mem=1 << 30, threads=0,
            force=False, resume=False, copy_links=False, fsync=True, manifest=True, copy_range=True,
            quantize=None, dequantize=False, io="auto", layout_like=None, progress=None, warn=None,
            compress=False, level=0, pass_unknown=False, _func="convert"):
    """Converts checkpoint src into the new directory dst with spec (a preset name, "auto" for
    the one matching src's config.json, or a spec JSON file); reverse undoes the spec.
    Unpacking gives back the source release pack recorded, byte for byte; layout_like (an
    index file) makes the output follow that index's files instead. compress lands every shard
    as a NAME.safetensors.mpkz container (zstd level `level`, 0: the default).
    progress(done_bytes, total_bytes, seconds) and warn(message) are called as it runs.
    A tensor the spec does not understand (a per-expert leftover, a scale it does not move) is
    moepack.Error with status "not-understood"; pass_unknown copies such tensors as they are (the report's
    passed_unknown lists them). Paths (src, dst, spec, layout_like) are str, bytes or os.PathLike."""
    f = _func
    req = _ConvertReq()
    _lib.mpk_convert_req_init(ctypes.byref(req), None, None)
    # fields set here keep their bytes alive
    req.src, req.dst = _path(src, f, "src"), _path(dst, f, "dst")
    req.spec = _path(spec, f, "spec" if f == "convert" else "preset", optional=True)
    quant = _choice(quantize, f, "quantize", {None: 0, "fp8-block128": 2})
    if quant and dequantize:
        raise ValueError(f"{f}: quantize and dequantize cannot be combined")
    req.direction = _DIRECTION["unpack" if reverse else "pack"]
    req.quant = _QUANT["dequantize"] if dequantize else quant
    req.flags = ((bool(force) and 1) | (bool(resume) and 2) | (bool(copy_links) and 4) | ((not fsync) and 8)
                 | ((not copy_range) and 16) | ((not manifest) and 32) | (bool(compress) and 64)
                 | (bool(pass_unknown) and 128))
    req.max_shard_size = _int(max_shard_size, f, "max_shard_size", _UINT64)
    req.mem = _int(mem, f, "mem", _UINT64)
    req.threads = _int(threads, f, "threads", _INT32)
    req.io = _choice(io, f, "io", _IO)
    req.layout_like = _path(layout_like, f, "layout_like", optional=True)
    req.compress_level = _int(level, f, "level", _INT32)
    _callback(progress, f, "progress")
    _callback(warn, f, "warn")
    # the callbacks must outlive the call: keep them in locals
    pcb = _PROGRESS(lambda ctx, done, total, s: progress(done, total, s)) if progress else _PROGRESS()
    wcb = _WARN(lambda ctx, msg: warn(msg.decode(errors="replace"))) if warn else _WARN()
    req.progress, req.warn = pcb, wcb
    return _call(_lib.mpk_convert, ctypes.byref(req))


def pack(src, dst, preset="auto", **options):
    """Per-expert -> packed ([E, 2I, H] gate_up_proj, [E, H, I] down_proj per layer)."""
    return convert(src, dst, preset, False, _func="pack", **options)


def unpack(src, dst, preset="auto", **options):
    """Packed -> per-expert (the preset reversed)."""
    return convert(src, dst, preset, True, _func="unpack", **options)


def _compressing(fn, f, src, dst, level, threads, chunk_size, force):
    req = _CompressReq(_path(src, f, "src"), _path(dst, f, "dst"), _int(level, f, "level", _INT32),
                       _int(threads, f, "threads", _INT32), _int(chunk_size, f, "chunk_size", _UINT64),
                       1 if force else 0, _WARN(), None)
    return _call(fn, ctypes.byref(req))


def compress(src, dst, *, level=1, threads=0, chunk_size=1 << 20, force=False):
    """Every NAME.safetensors of src as dst/NAME.safetensors.mpkz (formats/MPKZ.md)."""
    return _compressing(_lib.mpk_compress, "compress", src, dst, level, threads, chunk_size, force)


def decompress(src, dst, *, threads=0, force=False):
    """The .mpkz containers of src back into their .safetensors files, byte for byte."""
    return _compressing(_lib.mpk_decompress, "decompress", src, dst, 3, threads, 4 << 20, force)


_libc = ctypes.CDLL(None)
_libc.free.argtypes = [ctypes.c_void_p]
_libc.free.restype = None


def resolve(src, revision=None):
    """The local path src names: a directory or file as it is; a Hugging Face cache folder
    models--ORG--NAME or a repo id "ORG/NAME" (looked up in $HF_HUB_CACHE, else $HF_HOME/hub,
    else ~/.cache/huggingface/hub) its snapshot of revision (a branch, tag or commit; None:
    main). Nothing is downloaded: an id not in the cache raises Error ("not-found") naming the
    huggingface-cli command that fetches it. Every function taking a source accepts these forms
    directly (at main)."""
    s = _path(src, "resolve", "src")
    r = None if revision is None else _str(revision, "resolve", "revision").encode()
    out = ctypes.c_void_p()
    err = _Error()
    if _lib.mpk_resolve_source(s, r, ctypes.byref(out), ctypes.byref(err)) != 0:
        raise Error(err)
    try:
        return os.fsdecode(ctypes.string_at(out.value))
    finally:
        _libc.free(out)


def inspect(path):
    """Shards, tensors, dtypes, config.json facts and expert layout of a checkpoint."""
    return _call(_lib.mpk_inspect, _path(path, "inspect", "path"))


def hash(path, write=False):
    """XXH3-128 of every tensor and the sharding-independent digest (the manifest document);
    write=True stores it as path/moepack.manifest.json."""
    return _call(_lib.mpk_hash, _path(path, "hash", "path"), 1 if write else 0)


def _compare(fn, f, src, dst, spec, quantize, dequantize, atol, rtol):
    req = _CompareReq()
    _lib.mpk_compare_req_init(ctypes.byref(req), None, None)
    req.src = _path(src, f, "src", optional=True)
    req.dst = _path(dst, f, "dst")
    req.spec = _path(spec, f, "spec", optional=True)
    quant = _choice(quantize, f, "quantize", {None: 0, "fp8-block128": 2})
    if quant and dequantize:
        raise ValueError(f"{f}: quantize and dequantize cannot be combined")
    req.quant = _QUANT["dequantize"] if dequantize else quant
    req.atol = _float(atol, f, "atol")
    req.rtol = -1.0 if rtol is None else _float(rtol, f, "rtol")
    return _call(fn, ctypes.byref(req))


def verify(src, dst=None, spec=None, *, quantize=None, dequantize=False, atol=0.0, rtol=None):
    """Proves dst is the conversion of src (recomputed with the reference ops); with one path,
    checks it against its manifest. The dict's "identical" says the verdict."""
    if dst is None:
        return _compare(_lib.mpk_verify, "verify", None, _path(src, "verify", "src"), spec, quantize, dequantize,
                        atol, rtol)
    return _compare(_lib.mpk_verify, "verify", _path(src, "verify", "src"), dst, spec, quantize, dequantize,
                    atol, rtol)


def diff(a, b, spec=None, *, quantize=None, dequantize=False, atol=0.0, rtol=None):
    """Every float tensor compared by value: max abs/rel error, RMSE, cosine."""
    return _compare(_lib.mpk_diff, "diff", _path(a, "diff", "a"), _path(b, "diff", "b"), spec, quantize,
                    dequantize, atol, rtol)


def synth(dst, arch="mixtral", *, layers=2, experts=8, hidden=64, intermediate=32, vocab=128, dtype="BF16",
          shards=2, seed=0, packed=False, fp8=False):
    """Writes a small random checkpoint with the preset's real tensor names (seed as the CLI's
    --seed: the same seed gives the same bytes)."""
    f = "synth"
    out = _path(dst, f, "dst")
    o = _SynthOpts()
    _lib.mpk_synth_opts_init(ctypes.byref(o))
    o.arch = _str(arch, f, "arch").encode()
    o.layers, o.experts, o.hidden, o.intermediate, o.vocab = (
        _int(v, f, n, _INT32) for v, n in ((layers, "layers"), (experts, "experts"), (hidden, "hidden"),
                                           (intermediate, "intermediate"), (vocab, "vocab")))
    o.dtype = _choice(dtype, f, "dtype", _DTYPES)
    o.shards = _int(shards, f, "shards", _INT32)
    o.seed = _int(seed, f, "seed", (0, _UINT64[1] - 1)) + 1
    o.packed, o.fp8 = bool(packed), bool(fp8)
    err = _Error()
    if _lib.mpk_synth(ctypes.byref(o), out, ctypes.byref(err)) != 0:
        raise Error(err)


def presets():
    """The embedded presets: [{"name", "description", "model_types"}]."""
    out, i = [], 0
    while (name := _lib.mpk_preset_name(i)) is not None:
        spec, err = _P(), _Error()
        if _lib.mpk_spec_load(name, None, False, ctypes.byref(spec), ctypes.byref(err)) != 0:
            raise Error(err)
        types = [_lib.mpk_spec_model_type(spec, k).decode() for k in range(_lib.mpk_spec_model_type_count(spec))]
        out.append({"name": name.decode(), "description": _lib.mpk_spec_description(spec).decode(),
                    "model_types": types})
        _lib.mpk_spec_free(spec)
        i += 1
    return out


def version():
    return _lib.mpk_version().decode()


def features():
    return _lib.mpk_features().decode()
