"""Reading tensors: moepack.open(path, layout=None), in the manner of safetensors' safe_open.

    with moepack.open("model-packed", layout="per-expert") as f:
        f.keys()                                   # names, natural order
        f.metadata()                               # the (first) shard's __metadata__
        w = f.get_tensor("model.layers.0.mlp.experts.3.up_proj.weight")   # numpy array
        rows = f.get_slice("model.layers.0.mlp.experts.3.up_proj.weight")[:4]  # reads 4 rows

A checkpoint directory (index + shards), a single .safetensors file or .mpkz containers, read in
place through libmoepack's readers. layout "packed" / "per-expert" views the checkpoint in that
expert layout whichever it is stored in: the tensors pack / unpack would write (same names,
dtypes, shapes, bytes), computed when read, nothing written (mpk_view_open). numpy is needed
here only (Debian: python3-numpy).

dtypes: numpy's own where it has one; BF16 as its raw bits in uint16, the FP8 formats in uint8
(F4/F6: their packed bytes in uint8, the last dimension in bytes), unless the ml_dtypes package is
importable (then bfloat16, float8_e4m3fn, ...). get_tensor(name, dtype="float32") converts
F16, BF16 and the FP8 formats exactly (every value they hold is a float32).
"""
import ctypes
import operator

from . import _checks as _c, errors
from ._native import TensorDesc, _Error, lib

try:
    import numpy as np
except ImportError:  # moepack works without it; open() says what it needs
    np = None
try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None

# mpk_dtype (moepack.h's order) -> (name, numpy raw type, ml_dtypes attribute, bits)
_DTYPES = [("BOOL", "?", None, 8), ("F4", "u1", "float4_e2m1fn", 4), ("F6_E2M3", "u1", None, 6),
           ("F6_E3M2", "u1", None, 6), ("U8", "u1", None, 8), ("I8", "i1", None, 8),
           ("F8_E5M2", "u1", "float8_e5m2", 8), ("F8_E4M3", "u1", "float8_e4m3fn", 8),
           ("F8_E8M0", "u1", "float8_e8m0fnu", 8), ("F8_E4M3FNUZ", "u1", "float8_e4m3fnuz", 8),
           ("F8_E5M2FNUZ", "u1", "float8_e5m2fnuz", 8), ("I16", "<i2", None, 16), ("U16", "<u2", None, 16),
           ("F16", "<f2", None, 16), ("BF16", "<u2", "bfloat16", 16), ("I32", "<i4", None, 32),
           ("U32", "<u4", None, 32), ("F32", "<f4", None, 32), ("C64", "<c8", None, 64),
           ("F64", "<f8", None, 64), ("I64", "<i8", None, 64), ("U64", "<u8", None, 64)]


def _fp8_table(exp_bits, bias, fnuz):
    """The 256 values of an 8-bit float with exp_bits exponent bits (the rest mantissa) as
    float32, from the format's definition: subnormals at exponent 0; FN (e4m3fn): only
    S.1111.111 is NaN, no infinities; FNUZ: 0x80 is the only NaN, no negative zero."""
    man_bits = 7 - exp_bits
    out = np.empty(256, np.float32)
    for b in range(256):
        s, e, m = b >> 7, (b >> man_bits) & ((1 << exp_bits) - 1), b & ((1 << man_bits) - 1)
        if (fnuz and b == 0x80) or (not fnuz and e == (1 << exp_bits) - 1 and m == (1 << man_bits) - 1):
            out[b] = np.nan
            continue
        mag = (m / (1 << man_bits)) * 2.0 ** (1 - bias) if e == 0 else (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
        out[b] = -mag if s else mag
    return out


def _to_float32(raw, name):
    """raw (the stored bits) as float32, exactly."""
    if name == "F32":
        return raw.astype(np.float32)
    if name == "F16":
        return raw.astype(np.float32)
    if name == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if name == "F8_E5M2":  # the top byte of an IEEE half
        return (raw.astype(np.uint16) << 8).view(np.float16).astype(np.float32)
    if name == "F8_E8M0":  # 2^(e - 127); 0xFF NaN
        t = np.ldexp(np.float32(1), np.arange(256) - 127).astype(np.float32)
        t[255] = np.nan
        return t[raw]
    tables = {"F8_E4M3": (4, 7, False), "F8_E4M3FNUZ": (4, 8, True), "F8_E5M2FNUZ": (5, 16, True)}
    if name in tables:
        return _fp8_table(*tables[name])[raw]
    raise ValueError(f"get_tensor: dtype='float32' converts F32, F16, BF16 and the FP8 formats exactly, "
                     f"not {name}")


class TensorSlice:
    """One tensor, to be read in parts: f.get_slice(name)[rows, cols]. Only the bytes of the
    selected range are read (for each run of the leading indices, the span of the last
    dimension that is not taken whole)."""

    def __init__(self, reader, desc):
        self._r = reader
        self._d = desc

    @property
    def shape(self):
        return list(self._d["shape"])

    def get_shape(self):
        return self.shape

    def get_dtype(self):
        return self._d["dtype"]

    def __len__(self):
        return self._d["shape"][0] if self._d["shape"] else 0

    def __getitem__(self, key):
        return self._r._read_slice(self._d, key)


def _index_plan(shape, key):
    """Per dimension (start, count, step, keep) for key (ints, slices, one Ellipsis)."""
    if not isinstance(key, tuple):
        key = (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    if len(key) > len(shape):
        raise IndexError(f"too many indices: {len(key)} for a tensor of {len(shape)} dimensions")
    key = key + (slice(None),) * (len(shape) - len(key))
    plan = []
    for d, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step <= 0:
                raise IndexError("get_slice takes positive steps only (read, then reverse the array)")
            plan.append((start, max(0, (stop - start + step - 1) // step), step, True))
            continue
        try:
            i = operator.index(k)
        except TypeError:
            raise TypeError(f"get_slice takes ints, slices and '...', not {type(k).__name__}") from None
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for dimension {d} of size {n}")
        plan.append((i % n, 1, 1, False))
    return plan


class CheckpointReader:
    """A checkpoint open for reading (moepack.open). Use as a context manager, or close()."""

    def __init__(self, path, layout=None, preset=None):
        if np is None:
            raise ImportError("moepack.open needs numpy (Debian: apt install python3-numpy; or pip install numpy)",
                              name="numpy")
        p = _c.path(path, "open", "path")
        lay = _c.choice(layout, "open", "layout", {None: None, "packed": b"packed", "per-expert": b"per-expert"})
        spec = _c.path(preset, "open", "preset", optional=True)
        self._v = ctypes.c_void_p()
        err = _Error()
        if lib.mpk_view_open(p, lay, spec, ctypes.byref(self._v), ctypes.byref(err)) != 0:
            self._v = None
            raise errors.from_c(err)
        self.path = path
        self.layout = lib.mpk_view_layout(self._v).decode()
        self._descs = {}
        self._names = []
        d = TensorDesc()
        for i in range(lib.mpk_view_tensor_count(self._v)):
            lib.mpk_view_tensor_at(self._v, i, ctypes.byref(d))
            self._names.append(d.name.decode())

    def _view(self):
        if not self._v:
            raise ValueError("moepack.open: the checkpoint is closed")
        return self._v

    def close(self):
        if self._v:
            lib.mpk_view_close(self._v)
            self._v = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_v", None):
            self.close()

    def keys(self):
        """The tensor names, in natural order ("experts.2" before "experts.10")."""
        self._view()
        return list(self._names)

    def __contains__(self, name):
        return name in self._names

    def __iter__(self):
        return iter(self.keys())

    def metadata(self):
        """The __metadata__ of its first shard (a computed layout: the one that conversion writes)."""
        v = self._view()
        out, k, val = {}, ctypes.c_char_p(), ctypes.c_char_p()
        for i in range(lib.mpk_view_metadata_count(v)):
            lib.mpk_view_metadata_at(v, i, ctypes.byref(k), ctypes.byref(val))
            out[k.value.decode()] = val.value.decode()
        return out

    def _desc(self, name):
        if name in self._descs:
            return self._descs[name]
        _c.string(name, "get_tensor", "name")
        d = TensorDesc()
        if not lib.mpk_view_find_tensor(self._view(), name.encode(), ctypes.byref(d)):
            raise KeyError(f"no tensor {name!r} in {self.path!r} (layout {self.layout})")
        dname, raw, mlname, bits = _DTYPES[d.dtype]
        shape = [int(d.shape[i]) for i in range(d.ndim)]
        if bits < 8:  # packed sub-byte codes: their bytes, the last dimension in bytes
            if not shape or shape[-1] * bits % 8:
                shape = [int(d.nbytes)]
            else:
                shape[-1] = shape[-1] * bits // 8
        ml = getattr(ml_dtypes, mlname, None) if ml_dtypes is not None and mlname and bits >= 8 else None
        desc = {"name": name, "dtype": dname, "shape": shape, "raw": np.dtype(raw),
                "np": np.dtype(ml) if ml is not None else np.dtype(raw), "nbytes": int(d.nbytes)}
        self._descs[name] = desc
        return desc

    def _read(self, name, off, buf, nbytes):
        err = _Error()
        if lib.mpk_view_read(self._view(), name.encode(), off, nbytes, buf, ctypes.byref(err)) != 0:
            raise errors.from_c(err)

    def get_tensor(self, name, dtype=None):
        """The whole tensor as a numpy array (see the module's note on dtypes)."""
        d = self._desc(name)
        conv = _choice_dtype(dtype)
        out = np.empty(d["shape"], d["raw"])
        assert out.nbytes == d["nbytes"], (out.nbytes, d["nbytes"])
        if d["nbytes"]:
            self._read(name, 0, out.ctypes.data, d["nbytes"])
        return _finish(out, d, conv)

    def get_slice(self, name):
        return TensorSlice(self, self._desc(name))

    def _read_slice(self, d, key):
        shape = d["shape"]
        plan = _index_plan(shape, key)
        item = d["raw"].itemsize
        counts = [c for _, c, _, _ in plan]
        # the last dimension not taken whole: each read covers its selected span, the rest whole
        k = max((i for i, (s, c, st, keep) in enumerate(plan) if not (s == 0 and c == shape[i] and st == 1)),
                default=-1)
        strides = [item] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        if 0 in counts:
            return _finish(_drop(np.empty(counts, d["raw"]), plan), d, None)
        if k < 0:  # every dimension whole (an int on a dimension of 1 drops it)
            whole = np.empty(shape, d["raw"])
            self._read(d["name"], 0, whole.ctypes.data, d["nbytes"])
            return _finish(_drop(whole, plan), d, None)
        s_k, c_k, st_k, _ = plan[k]
        span = (c_k - 1) * st_k + 1
        inner = strides[k]  # bytes of one index of dimension k
        outer = counts[:k]
        buf = np.empty(outer + [span] + shape[k + 1:], d["raw"])
        nb = span * inner
        for n, idx in enumerate(np.ndindex(*outer)):
            off = sum((plan[i][0] + j * plan[i][2]) * strides[i] for i, j in enumerate(idx)) + s_k * inner
            self._read(d["name"], off, buf.ctypes.data + n * nb, nb)
        out = buf[(slice(None),) * k + (slice(None, None, st_k),)] if st_k > 1 else buf
        return _finish(_drop(np.ascontiguousarray(out), plan), d, None)


def _drop(arr, plan):
    """arr with the dimensions indexed by an int removed."""
    return arr[tuple(slice(None) if keep else 0 for _, _, _, keep in plan)]


def _choice_dtype(dtype):
    if dtype is None:
        return None
    if dtype in ("float32", np.float32) or (isinstance(dtype, np.dtype) and dtype == np.float32):
        return "float32"
    raise ValueError(f"get_tensor: dtype takes None (as stored) or 'float32', not {dtype!r}")


def _finish(raw, d, conv):
    if conv == "float32":
        return _to_float32(raw, d["dtype"])
    return raw.view(d["np"]) if d["np"] != d["raw"] else raw


def open(path, layout=None, *, preset=None):  # noqa: A001 (moepack.open; not exported by *)
    """A checkpoint (directory, .safetensors file, .mpkz) open for reading tensors, as stored or,
    with layout "packed" / "per-expert", in that expert layout (computed when read; preset: the
    conversion's, default the one config.json names). A context manager."""
    return CheckpointReader(path, layout, preset)

