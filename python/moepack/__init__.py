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
import os

__all__ = ["Error", "pack", "unpack", "convert", "compress", "decompress", "inspect", "hash", "verify", "diff", "synth", "presets",
           "version", "features"]


def _load():
    path = os.environ.get("MOEPACK_LIB") or ctypes.util.find_library("moepack") or "libmoepack.so.0"
    return ctypes.CDLL(path)


_lib = _load()


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("sys_errno", ctypes.c_int), ("where", ctypes.c_char * 512),
                ("msg", ctypes.c_char * 1024)]


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
        ("mpk_spec_model_type", ctypes.c_char_p, [_P, ctypes.c_size_t])]:
    fn = getattr(_lib, name)
    fn.restype, fn.argtypes = res, args

# enum values of moepack.h
_DIRECTION = {"pack": 0, "unpack": 1}
_QUANT = {None: 0, "dequantize": 1, "fp8-block128": 2}
_IO = {"auto": 0, "io_uring": 1, "pread": 2}
_FLAGS = {"force": 1, "resume": 2, "copy_links": 4}
_DTYPES = {"F16": 13, "BF16": 14, "F32": 17}


class Error(Exception):
    """A libmoepack failure: status (its name), code, message, where and errno."""

    def __init__(self, err):
        self.code = err.code
        self.status = _lib.mpk_status_str(err.code).decode()
        self.message = err.msg.decode(errors="replace")
        self.where = err.where.decode(errors="replace")
        self.errno = err.sys_errno
        super().__init__(f"{self.status}: {self.message}")


def _b(s):
    return None if s is None else os.fsencode(s)


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
            compress=False, level=0):
    """Converts checkpoint src into the new directory dst with spec (a preset name, "auto" for
    the one matching src's config.json, or a spec JSON file); reverse undoes the spec.
    Unpacking gives back the source release pack recorded, byte for byte; layout_like (an
    index file) makes the output follow that index's files instead. compress lands every shard
    as a NAME.safetensors.mpkz container (zstd level `level`, 0: the default).
    progress(done_bytes, total_bytes, seconds) and warn(message) are called as it runs."""
    if quantize not in (None, "fp8-block128"):
        raise ValueError("quantize takes None or 'fp8-block128'")
    if quantize and dequantize:
        raise ValueError("quantize and dequantize cannot be combined")
    req = _ConvertReq()
    _lib.mpk_convert_req_init(ctypes.byref(req), None, None)
    req.src, req.dst, req.spec = _b(src), _b(dst), _b(spec)  # fields set here keep their bytes alive
    req.direction = _DIRECTION["unpack" if reverse else "pack"]
    req.quant = _QUANT["dequantize" if dequantize else quantize]
    req.flags = ((force and 1) | (resume and 2) | (copy_links and 4) | ((not fsync) and 8)
                 | ((not copy_range) and 16) | ((not manifest) and 32) | (compress and 64))
    req.max_shard_size, req.mem, req.threads, req.io = max_shard_size, mem, threads, _IO[io]
    req.layout_like = _b(layout_like)
    req.compress_level = level
    # the callbacks must outlive the call: keep them in locals
    pcb = _PROGRESS(lambda ctx, done, total, s: progress(done, total, s)) if progress else _PROGRESS()
    wcb = _WARN(lambda ctx, msg: warn(msg.decode(errors="replace"))) if warn else _WARN()
    req.progress, req.warn = pcb, wcb
    return _call(_lib.mpk_convert, ctypes.byref(req))


def pack(src, dst, preset="auto", **options):
    """Per-expert -> packed ([E, 2I, H] gate_up_proj, [E, H, I] down_proj per layer)."""
    return convert(src, dst, preset, False, **options)


def unpack(src, dst, preset="auto", **options):
    """Packed -> per-expert (the preset reversed)."""
    return convert(src, dst, preset, True, **options)


def _compressing(fn, src, dst, level, threads, chunk_size, force):
    req = _CompressReq(_b(src), _b(dst), level, threads, chunk_size, 1 if force else 0, _WARN(), None)
    return _call(fn, ctypes.byref(req))


def compress(src, dst, *, level=1, threads=0, chunk_size=4 << 20, force=False):
    """Every NAME.safetensors of src as dst/NAME.safetensors.mpkz (formats/MPKZ.md)."""
    return _compressing(_lib.mpk_compress, src, dst, level, threads, chunk_size, force)


def decompress(src, dst, *, threads=0, force=False):
    """The .mpkz containers of src back into their .safetensors files, byte for byte."""
    return _compressing(_lib.mpk_decompress, src, dst, 3, threads, 4 << 20, force)


def inspect(path):
    """Shards, tensors, dtypes, config.json facts and expert layout of a checkpoint."""
    return _call(_lib.mpk_inspect, _b(path))


def hash(path, write=False):
    """XXH3-128 of every tensor and the sharding-independent digest (the manifest document);
    write=True stores it as path/moepack.manifest.json."""
    return _call(_lib.mpk_hash, _b(path), 1 if write else 0)


def _compare(fn, src, dst, spec, quantize, dequantize, atol, rtol):
    req = _CompareReq()
    _lib.mpk_compare_req_init(ctypes.byref(req), None, None)
    req.src, req.dst, req.spec = _b(src), _b(dst), _b(spec)
    req.quant = _QUANT["dequantize" if dequantize else quantize]
    req.atol = atol
    req.rtol = -1.0 if rtol is None else rtol
    return _call(fn, ctypes.byref(req))


def verify(src, dst=None, spec=None, *, quantize=None, dequantize=False, atol=0.0, rtol=None):
    """Proves dst is the conversion of src (recomputed with the reference ops); with one path,
    checks it against its manifest. The dict's "identical" says the verdict."""
    if dst is None:
        src, dst = None, src
    return _compare(_lib.mpk_verify, src, dst, spec, quantize, dequantize, atol, rtol)


def diff(a, b, spec=None, *, quantize=None, dequantize=False, atol=0.0, rtol=None):
    """Every float tensor compared by value: max abs/rel error, RMSE, cosine."""
    return _compare(_lib.mpk_diff, a, b, spec, quantize, dequantize, atol, rtol)


def synth(dst, arch="mixtral", *, layers=2, experts=8, hidden=64, intermediate=32, vocab=128, dtype="BF16",
          shards=2, seed=0, packed=False, fp8=False):
    """Writes a small random checkpoint with the preset's real tensor names (seed as the CLI's
    --seed: the same seed gives the same bytes)."""
    o = _SynthOpts()
    _lib.mpk_synth_opts_init(ctypes.byref(o))
    o.arch = _b(arch)
    o.layers, o.experts, o.hidden, o.intermediate, o.vocab = layers, experts, hidden, intermediate, vocab
    o.dtype, o.shards, o.seed, o.packed, o.fp8 = _DTYPES[dtype], shards, seed + 1, packed, fp8
    err = _Error()
    if _lib.mpk_synth(ctypes.byref(o), _b(dst), ctypes.byref(err)) != 0:
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
