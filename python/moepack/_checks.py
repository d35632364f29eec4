"""Every argument checked before it reaches C: ctypes would pass None as NULL, cut a path at an
embedded NUL, and wrap an int that does not fit its C field. TypeError for a wrong type,
ValueError for a wrong value, OverflowError for an int past its C field."""
import numbers
import operator
import os
import re

INT32 = (-(1 << 31), (1 << 31) - 1)
UINT64 = (0, (1 << 64) - 1)


def path(value, func, name, optional=False):
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


def string(value, func, name):
    """A name argument (preset, dtype...): a str without NUL."""
    if not isinstance(value, str):
        raise TypeError(f"{func}: {name} should be str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{func}: embedded null character in {name}")
    return value


def integer(value, func, name, limits):
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


# the command line's units (cli/util.c mpk_parse_size): decimal K/M/G/T(B), binary KiB..TiB
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def size(value, func, name):
    """A size in bytes: an int, or a str with a unit as the command line takes it ("2GB" = 2*10^9,
    "512MiB" = 512*2^20, "1.5G"; units KB MB GB TB, KiB MiB GiB TiB, case-insensitive but for
    the binary ones' 'i'). ValueError for a malformed string, naming the units."""
    if isinstance(value, str):
        m = _SIZE.fullmatch(value)
        unit = m and (m.group(2) if m.group(2) in _UNITS else m.group(2).lower())
        if not m or unit not in _UNITS or (unit.lower() in ("kib", "mib", "gib", "tib") and unit != m.group(2)):
            raise ValueError(f"{func}: {name} {value!r} is not a size: an int of bytes, or a number with a "
                             "unit (B, KB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: powers of 1024)")
        from fractions import Fraction
        value = round(Fraction(m.group(1)) * _UNITS[unit])
    elif isinstance(value, float) and not isinstance(value, bool) and value.is_integer():
        value = int(value)
    return integer(value, func, name, UINT64)


def real(value, func, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: {name} should be a real number, not {type(value).__name__}")
    return float(value)


def choice(value, func, name, table):
    """One of table's keys (a str, or None where the table has it)."""
    if value is not None or None not in table:
        string(value, func, name)
    if value not in table:
        raise ValueError(f"{func}: {name} takes " + ", ".join(repr(k) for k in table) + f", not {value!r}")
    return table[value]


def callback(value, func, name):
    if value is not None and not callable(value):
        raise TypeError(f"{func}: {name} should be callable or None, not {type(value).__name__}")
    return value
