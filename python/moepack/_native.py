"""Loading libmoepack and declaring what the binding calls (ctypes, no compiled extension).

The library is looked for, in order: $MOEPACK_LIB (a path; when set, nothing else is tried),
the path recorded when this package was installed (_libpath.py, written by `meson install` or
`pip install`), then the system's search path (libmoepack.so.0). None loading is an ImportError
saying what to do.
"""
import ctypes
import ctypes.util
import os

_SONAME = "libmoepack.so.0"


def _candidates():
    env = os.environ.get("MOEPACK_LIB")
    if env:
        return [("$MOEPACK_LIB", env)]
    out = []
    try:
        from . import _libpath
    except ImportError:
        pass
    else:
        out += [("recorded at install", p) for p in _libpath.paths()]
    out.append(("the system's library path", ctypes.util.find_library("moepack") or _SONAME))
    return out


def _load():
    tried = []
    for how, path in _candidates():
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path} ({how}): {e}")
    raise ImportError("moepack: cannot load the libmoepack shared library; tried " + "; ".join(tried) +
                      ". Install it (meson install from the moepack sources, then ldconfig), or set "
                      "MOEPACK_LIB to the path of libmoepack.so.0", name="moepack")


lib = _load()

libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]
libc.free.restype = None


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("sys_errno", ctypes.c_int), ("where", ctypes.c_char * 512),
                ("msg", ctypes.c_char * 1024), ("field", ctypes.c_int)]


PROGRESS = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_double)
WARN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)


class ConvertReq(ctypes.Structure):
    _fields_ = [("src", ctypes.c_char_p), ("dst", ctypes.c_char_p), ("spec", ctypes.c_char_p),
                ("direction", ctypes.c_int), ("quant", ctypes.c_int), ("flags", ctypes.c_uint),
                ("max_shard_size", ctypes.c_uint64), ("mem", ctypes.c_uint64), ("threads", ctypes.c_int),
                ("io", ctypes.c_int), ("layout_like", ctypes.c_char_p), ("progress", PROGRESS), ("warn", WARN),
                ("ctx", ctypes.c_void_p), ("cancel", ctypes.POINTER(ctypes.c_int)), ("compress_level", ctypes.c_int),
                ("direct", ctypes.c_int), ("bounce", ctypes.c_int)]  # measurement switches (defaults)


class CompareReq(ctypes.Structure):
    _fields_ = [("src", ctypes.c_char_p), ("dst", ctypes.c_char_p), ("spec", ctypes.c_char_p),
                ("quant", ctypes.c_int), ("atol", ctypes.c_double), ("rtol", ctypes.c_double),
                ("progress", PROGRESS), ("ctx", ctypes.c_void_p), ("cancel", ctypes.POINTER(ctypes.c_int))]


class CompressReq(ctypes.Structure):
    _fields_ = [("src", ctypes.c_char_p), ("dst", ctypes.c_char_p), ("level", ctypes.c_int), ("threads", ctypes.c_int),
                ("chunk_size", ctypes.c_uint64), ("flags", ctypes.c_uint), ("warn", WARN), ("ctx", ctypes.c_void_p),
                ("progress", PROGRESS), ("cancel", ctypes.POINTER(ctypes.c_int))]


class HashReq(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char_p), ("flags", ctypes.c_uint), ("progress", PROGRESS), ("ctx", ctypes.c_void_p),
                ("cancel", ctypes.POINTER(ctypes.c_int))]


class SynthOpts(ctypes.Structure):
    _fields_ = [("arch", ctypes.c_char_p), ("layers", ctypes.c_int), ("experts", ctypes.c_int),
                ("hidden", ctypes.c_int), ("intermediate", ctypes.c_int), ("vocab", ctypes.c_int),
                ("dtype", ctypes.c_int), ("shards", ctypes.c_int), ("seed", ctypes.c_uint64),
                ("packed", ctypes.c_bool), ("fp8", ctypes.c_bool)]


MAX_DIMS = 16


class TensorDesc(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int), ("ndim", ctypes.c_int),
                ("shape", ctypes.c_int64 * MAX_DIMS), ("nbytes", ctypes.c_uint64), ("file", ctypes.c_char_p)]


P = ctypes.c_void_p
ERR = ctypes.POINTER(_Error)
_PP = ctypes.POINTER(P)
_STR = ctypes.c_char_p
_SZ = ctypes.c_size_t
_DESC = ctypes.POINTER(TensorDesc)
_PROTOS = [
    ("mpk_status_str", _STR, [ctypes.c_int]),
    ("mpk_field_name", _STR, [ctypes.c_int]),
    ("mpk_version", _STR, []),
    ("mpk_features", _STR, []),
    ("mpk_dtype_name", _STR, [ctypes.c_int]),
    ("mpk_convert_req_init", None, [ctypes.POINTER(ConvertReq), _STR, _STR]),
    ("mpk_convert", ctypes.c_int, [ctypes.POINTER(ConvertReq), _PP, ERR]),
    ("mpk_compare_req_init", None, [ctypes.POINTER(CompareReq), _STR, _STR]),
    ("mpk_verify", ctypes.c_int, [ctypes.POINTER(CompareReq), _PP, ERR]),
    ("mpk_diff", ctypes.c_int, [ctypes.POINTER(CompareReq), _PP, ERR]),
    ("mpk_inspect", ctypes.c_int, [_STR, _PP, ERR]),
    ("mpk_hash", ctypes.c_int, [_STR, ctypes.c_uint, _PP, ERR]),
    ("mpk_hash_req_init", None, [ctypes.POINTER(HashReq), _STR]),
    ("mpk_hash_run", ctypes.c_int, [ctypes.POINTER(HashReq), _PP, ERR]),
    ("mpk_compress", ctypes.c_int, [ctypes.c_void_p, _PP, ERR]),
    ("mpk_decompress", ctypes.c_int, [ctypes.c_void_p, _PP, ERR]),
    ("mpk_synth_opts_init", None, [ctypes.POINTER(SynthOpts)]),
    ("mpk_synth", ctypes.c_int, [ctypes.POINTER(SynthOpts), _STR, ERR]),
    ("mpk_report_json", _STR, [P]),
    ("mpk_report_free", None, [P]),
    ("mpk_preset_name", _STR, [_SZ]),
    ("mpk_spec_load", ctypes.c_int, [_STR, _STR, ctypes.c_bool, _PP, ERR]),
    ("mpk_spec_free", None, [P]),
    ("mpk_spec_description", _STR, [P]),
    ("mpk_spec_model_type_count", _SZ, [P]),
    ("mpk_spec_model_type", _STR, [P, _SZ]),
    ("mpk_resolve_source", ctypes.c_int, [_STR, _STR, ctypes.POINTER(ctypes.c_void_p), ERR]),
]
_VIEW_PROTOS = [  # lib/view.c: checkpoints read tensor by tensor, in either layout
    ("mpk_view_open", ctypes.c_int, [_STR, _STR, _STR, _PP, ERR]),
    ("mpk_view_close", None, [P]),
    ("mpk_view_layout", _STR, [P]),
    ("mpk_view_tensor_count", _SZ, [P]),
    ("mpk_view_tensor_at", ctypes.c_bool, [P, _SZ, _DESC]),
    ("mpk_view_find_tensor", ctypes.c_bool, [P, _STR, _DESC]),
    ("mpk_view_read", ctypes.c_int, [P, _STR, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p, ERR]),
    ("mpk_view_metadata_count", _SZ, [P]),
    ("mpk_view_metadata_at", ctypes.c_bool, [P, _SZ, ctypes.POINTER(_STR), ctypes.POINTER(_STR)]),
]
for _name, _res, _args in _PROTOS + _VIEW_PROTOS:
    _fn = getattr(lib, _name)
    _fn.restype, _fn.argtypes = _res, _args
