"""moepack — Mixture-of-Experts safetensors checkpoints: pack, unpack, verify, read.

A ctypes binding over the shared library libmoepack (no compiled extension). `meson install`
and `pip install ./python` record where the library is; $MOEPACK_LIB (a path) overrides that.

    import moepack
    report = moepack.pack("model-per-expert", "model-packed")     # preset from config.json
    moepack.verify("model-per-expert", "model-packed")["identical"]  # True
    moepack.unpack("model-packed", "model-back")
    with moepack.open("model-packed", layout="per-expert") as f:   # no copy on disk
        w = f.get_tensor("model.layers.0.mlp.experts.3.up_proj.weight")

Every call returns the report as a dict (the document `moepack CMD --json` prints); failures
raise moepack.Error subclasses that are also the matching built-in exceptions
(FileNotFoundError, FileExistsError, PermissionError, ValueError, ...), carrying status, file,
tensor and errno. Ctrl-C stops a conversion: KeyboardInterrupt, nothing written at dst.
docs/python.md is the reference.
"""
import ctypes
import os

from . import _checks as _c
from ._calls import Call as _Call, report as _report
from ._native import (CompareReq as _CompareReq, CompressReq as _CompressReq, ConvertReq as _ConvertReq,
                      HashReq as _HashReq, PROGRESS as _PROGRESS, SynthOpts as _SynthOpts, WARN as _WARN, _Error, P as _P,
                      lib as _lib, libc as _libc)
from .errors import (DestinationExists, Error, IOFailure, IsADirectory, NotFound, OutOfMemory, PermissionDenied,
                     UsageError, VerificationFailed, from_c as _from_c)
from .tensors import CheckpointReader, TensorSlice, open  # noqa: A004 (not in __all__: the built-in open stays)

# no name here shadows a built-in (from moepack import * leaves hash and open alone): hash_file,
# and moepack.open, reached by its module's name
__all__ = ["Error", "NotFound", "DestinationExists", "PermissionDenied", "IsADirectory", "UsageError",
           "OutOfMemory", "IOFailure", "VerificationFailed", "CheckpointReader", "TensorSlice",
           "pack", "unpack", "convert", "compress", "decompress", "inspect", "hash_file", "verify", "diff", "synth",
           "presets", "version", "features", "resolve"]

# enum values of moepack.h
_DIRECTION = {"pack": 0, "unpack": 1}
_QUANT = {None: 0, "dequantize": 1, "fp8-block128": 2, "nvfp4": 3, "mxfp4": 4}
# the quantize= words (moepack.h's mpk_quant less keep and dequantize)
_QUANTIZE = {None: 0, "fp8-block128": 2, "nvfp4": 3, "mxfp4": 4}
_IO = {"auto": 0, "io_uring": 1, "pread": 2}
_DTYPES = {"F16": 13, "BF16": 14, "F32": 17}
_PROGRESS_ARGS = (lambda done, total, s: (done, total, s))
_WARN_ARGS = (lambda msg: (msg.decode(errors="replace"),))


def convert(src, dst, spec="auto", reverse=False, *, max_shard_size=50_000_000_000, mem=1 << 30, threads=0,
            force=False, resume=False, copy_links=False, fsync=True, manifest=True, copy_range=True,
            quantize=None, dequantize=False, io="auto", layout_like=None, progress=None, warn=None,
            compress=False, level=0, pass_unknown=False, _func="convert"):
    """Converts checkpoint src into the new directory dst with spec (a preset name, "auto" for
    the one matching src's config.json, or a spec JSON file); reverse undoes the spec.
    Unpacking gives back the source release pack recorded, byte for byte; layout_like (an
    index file) makes the output follow that index's files instead. compress lands every shard
    as a NAME.safetensors.mpkz container (zstd level `level`, 0: the default).
    max_shard_size and mem are bytes: an int or a string with a unit ("2GB", "512MiB").
    progress(done_bytes, total_bytes, seconds) and warn(message) are called as it runs (from a
    worker thread); an exception either raises stops the conversion and is raised here.
    Ctrl-C stops it too (KeyboardInterrupt): nothing is left at dst.
    A tensor the spec does not understand (a per-expert leftover, a scale it does not move) is
    moepack.Error with status "not-understood"; pass_unknown copies such tensors as they are (the
    report's passed_unknown lists them). Paths (src, dst, spec, layout_like) are str, bytes or
    os.PathLike."""
    f = _func
    req = _ConvertReq()
    _lib.mpk_convert_req_init(ctypes.byref(req), None, None)
    # fields set here keep their bytes alive
    req.src, req.dst = _c.path(src, f, "src"), _c.path(dst, f, "dst")
    req.spec = _c.path(spec, f, "spec" if f == "convert" else "preset", optional=True)
    quant = _c.choice(quantize, f, "quantize", _QUANTIZE)
    if quant and dequantize:
        raise ValueError(f"{f}: quantize and dequantize cannot be combined")
    req.direction = _DIRECTION["unpack" if reverse else "pack"]
    req.quant = _QUANT["dequantize"] if dequantize else quant
    req.flags = ((bool(force) and 1) | (bool(resume) and 2) | (bool(copy_links) and 4) | ((not fsync) and 8)
                 | ((not copy_range) and 16) | ((not manifest) and 32) | (bool(compress) and 64)
                 | (bool(pass_unknown) and 128))
    req.max_shard_size = _c.size(max_shard_size, f, "max_shard_size")
    req.mem = _c.size(mem, f, "mem")
    req.threads = _c.integer(threads, f, "threads", _c.INT32)
    req.io = _c.choice(io, f, "io", _IO)
    req.layout_like = _c.path(layout_like, f, "layout_like", optional=True)
    req.compress_level = _c.integer(level, f, "level", _c.INT32)
    call = _Call()
    req.progress = call.wrap(_PROGRESS, _c.callback(progress, f, "progress"), _PROGRESS_ARGS)
    req.warn = call.wrap(_WARN, _c.callback(warn, f, "warn"), _WARN_ARGS)
    req.cancel = ctypes.pointer(call.cancel)
    return _report(call, _lib.mpk_convert, ctypes.byref(req))


def pack(src, dst, preset="auto", **options):
    """Per-expert -> packed ([E, 2I, H] gate_up_proj, [E, H, I] down_proj per layer)."""
    return convert(src, dst, preset, False, _func="pack", **options)


def unpack(src, dst, preset="auto", **options):
    """Packed -> per-expert (the preset reversed)."""
    return convert(src, dst, preset, True, _func="unpack", **options)


def _compressing(fn, f, src, dst, level, threads, chunk_size, force, progress):
    call = _Call()
    req = _CompressReq(_c.path(src, f, "src"), _c.path(dst, f, "dst"), _c.integer(level, f, "level", _c.INT32),
                       _c.integer(threads, f, "threads", _c.INT32), _c.size(chunk_size, f, "chunk_size"),
                       1 if force else 0, _WARN(), None,
                       call.wrap(_PROGRESS, _c.callback(progress, f, "progress"), _PROGRESS_ARGS),
                       ctypes.pointer(call.cancel))
    return _report(call, fn, ctypes.byref(req))


def compress(src, dst, *, level=1, threads=0, chunk_size=1 << 20, force=False, progress=None):
    """Every NAME.safetensors of src as dst/NAME.safetensors.mpkz (formats/MPKZ.md)."""
    return _compressing(_lib.mpk_compress, "compress", src, dst, level, threads, chunk_size, force, progress)


def decompress(src, dst, *, threads=0, force=False, progress=None):
    """The .mpkz containers of src back into their .safetensors files, byte for byte."""
    return _compressing(_lib.mpk_decompress, "decompress", src, dst, 3, threads, 4 << 20, force, progress)


def resolve(src, revision=None):
    """The local path src names: a directory or file as it is; a Hugging Face cache folder
    models--ORG--NAME or a repo id "ORG/NAME" (looked up in $HF_HUB_CACHE, else $HF_HOME/hub,
    else ~/.cache/huggingface/hub) its snapshot of revision (a branch, tag or commit; None:
    main). Nothing is downloaded: an id not in the cache raises NotFound naming the
    huggingface-cli command that fetches it. Every function taking a source accepts these forms
    directly (at main)."""
    s = _c.path(src, "resolve", "src")
    r = None if revision is None else _c.string(revision, "resolve", "revision").encode()
    out = ctypes.c_void_p()
    err = _Error()
    if _lib.mpk_resolve_source(s, r, ctypes.byref(out), ctypes.byref(err)) != 0:
        raise _from_c(err)
    try:
        return os.fsdecode(ctypes.string_at(out.value))
    finally:
        _libc.free(out)


def inspect(path):
    """Shards, tensors, dtypes, config.json facts and expert layout of a checkpoint."""
    return _report(_Call(), _lib.mpk_inspect, _c.path(path, "inspect", "path"))


def hash_file(path, write=False, *, progress=None):
    """XXH3-128 of every tensor and the sharding-independent digest (the manifest document);
    write=True stores it as path/moepack.manifest.json. progress(done_bytes, total_bytes,
    seconds) as for convert; Ctrl-C or a progress exception stops it (no manifest written)."""
    f = "hash_file"
    req = _HashReq()
    p = _c.path(path, f, "path")
    _lib.mpk_hash_req_init(ctypes.byref(req), p)
    req.flags = 1 if write else 0
    call = _Call()
    req.progress = call.wrap(_PROGRESS, _c.callback(progress, f, "progress"), _PROGRESS_ARGS)
    req.cancel = ctypes.pointer(call.cancel)
    return _report(call, _lib.mpk_hash_run, ctypes.byref(req))


def hash(path, write=False):  # noqa: A001
    """Deprecated name of hash_file (it shadowed the built-in hash); not exported by *."""
    import warnings
    warnings.warn("moepack.hash is deprecated: use moepack.hash_file", DeprecationWarning, stacklevel=2)
    return hash_file(path, write)


def _compare(fn, f, src, dst, spec, quantize, dequantize, atol, rtol, progress):
    req = _CompareReq()
    _lib.mpk_compare_req_init(ctypes.byref(req), None, None)
    req.src = _c.path(src, f, "src", optional=True)
    req.dst = _c.path(dst, f, "dst")
    req.spec = _c.path(spec, f, "spec", optional=True)
    quant = _c.choice(quantize, f, "quantize", _QUANTIZE)
    if quant and dequantize:
        raise ValueError(f"{f}: quantize and dequantize cannot be combined")
    req.quant = _QUANT["dequantize"] if dequantize else quant
    req.atol = _c.real(atol, f, "atol")
    req.rtol = -1.0 if rtol is None else _c.real(rtol, f, "rtol")
    call = _Call()
    req.progress = call.wrap(_PROGRESS, _c.callback(progress, f, "progress"), _PROGRESS_ARGS)
    req.cancel = ctypes.pointer(call.cancel)
    return _report(call, fn, ctypes.byref(req))


def verify(src, dst=None, spec=None, *, quantize=None, dequantize=False, atol=0.0, rtol=None, check=False,
           progress=None):
    """Proves dst is the conversion of src (recomputed with the reference ops); with one path,
    checks it against its manifest. The dict's "identical" says the verdict; check=True raises
    VerificationFailed (its report: the dict) when there are differences. progress(done_bytes,
    total_bytes, seconds) as for convert; Ctrl-C or a progress exception stops it."""
    if dst is None:
        rep = _compare(_lib.mpk_verify, "verify", None, _c.path(src, "verify", "src"), spec, quantize, dequantize,
                       atol, rtol, progress)
    else:
        rep = _compare(_lib.mpk_verify, "verify", _c.path(src, "verify", "src"), dst, spec, quantize, dequantize,
                       atol, rtol, progress)
    if check and rep.get("differences"):
        raise VerificationFailed(rep)
    return rep


def diff(a, b, spec=None, *, quantize=None, dequantize=False, atol=0.0, rtol=None, progress=None):
    """Every float tensor compared by value: max abs/rel error, RMSE, cosine."""
    return _compare(_lib.mpk_diff, "diff", _c.path(a, "diff", "a"), _c.path(b, "diff", "b"), spec, quantize,
                    dequantize, atol, rtol, progress)


def synth(dst, arch="mixtral", *, layers=2, experts=8, hidden=64, intermediate=32, vocab=128, dtype="BF16",
          shards=2, seed=0, packed=False, fp8=False):
    """Writes a small random checkpoint with the preset's real tensor names (seed as the CLI's
    --seed: the same seed gives the same bytes). dtype: "BF16", "F16" or "F32" (fp8=True for
    F8_E4M3 weights with scale grids)."""
    f = "synth"
    out = _c.path(dst, f, "dst")
    o = _SynthOpts()
    _lib.mpk_synth_opts_init(ctypes.byref(o))
    o.arch = _c.string(arch, f, "arch").encode()
    o.layers, o.experts, o.hidden, o.intermediate, o.vocab = (
        _c.integer(v, f, n, _c.INT32) for v, n in ((layers, "layers"), (experts, "experts"), (hidden, "hidden"),
                                                  (intermediate, "intermediate"), (vocab, "vocab")))
    if isinstance(dtype, str) and dtype.upper().startswith("F8"):
        raise ValueError(f"{f}: dtype takes 'F16', 'BF16', 'F32', not {dtype!r} (FP8 weights: fp8=True)")
    o.dtype = _c.choice(dtype, f, "dtype", _DTYPES)
    o.shards = _c.integer(shards, f, "shards", _c.INT32)
    o.seed = _c.integer(seed, f, "seed", (0, _c.UINT64[1] - 1)) + 1
    o.packed, o.fp8 = bool(packed), bool(fp8)
    err = _Error()
    if _Call().run(_lib.mpk_synth, ctypes.byref(o), out, ctypes.byref(err)) != 0:
        raise _from_c(err)


def presets():
    """The embedded presets: [{"name", "description", "model_types"}]."""
    out, i = [], 0
    while (name := _lib.mpk_preset_name(i)) is not None:
        spec, err = _P(), _Error()
        if _lib.mpk_spec_load(name, None, False, ctypes.byref(spec), ctypes.byref(err)) != 0:
            raise _from_c(err)
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
