"""moepack's exceptions: moepack.Error and its subclasses, each also the built-in exception a
Python caller already catches (a missing checkpoint is a FileNotFoundError, a bad argument a
ValueError), carrying the library's facts: status, file, tensor, errno."""
import errno as _errno
import re

from ._native import lib


class Error(Exception):
    """A libmoepack failure. status: the status name ("not-found", "destination-exists", ...);
    code: its number; message: the library's message (naming the file, tensor and rule broken);
    file and tensor: what the failure is about (None when it is about none); errno: the system's
    errno for an I/O failure (else 0); field: the request field the way out is about, as the C
    request names it ("force", "mem", ...) or None; hint: what to do, in keyword-argument terms
    ("pass force=True to replace it"), or None. str(): "status: message (hint: ...)"."""

    def __init__(self, message, *, status="error", code=None, file=None, tensor=None, errno=0, field=None,
                 hint=None, where=""):
        self.message = message
        self.status = status
        self.code = code
        self.file = file
        self.tensor = tensor
        self.field = field
        self.hint = hint
        self.where = where
        super().__init__(message)
        self.errno = errno  # (after OSError's __init__, which would set it from the arguments)

    def __str__(self):
        text = f"{self.status}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class NotFound(Error, FileNotFoundError):
    """No checkpoint at a path, no such tensor or preset file (status "not-found")."""


class DestinationExists(Error, FileExistsError):
    """The destination exists; force=True replaces a checkpoint there (status "destination-exists")."""


class PermissionDenied(Error, PermissionError):
    """The system refused access (status "io", errno EACCES or EPERM)."""


class IsADirectory(Error, IsADirectoryError):
    """A directory where a file was wanted (status "io", errno EISDIR)."""


class UsageError(Error, ValueError):
    """A request the library refuses as such: a bad combination of arguments, an unknown preset
    (status "usage" or "preset")."""


class OutOfMemory(Error, MemoryError):
    """An allocation failed (status "out-of-memory")."""


class IOFailure(Error, OSError):
    """Another failed system call (status "io"; errno says which)."""


class VerificationFailed(Error):
    """verify(..., check=True) found differences; report holds the whole verify document."""

    def __init__(self, report):
        diffs = report.get("differences") or []
        first = ", ".join(f"{d.get('name')} ({d.get('kind')})" for d in diffs[:3] if isinstance(d, dict))
        n = report.get("difference_count", len(diffs))
        super().__init__(f"{n} difference(s)" + (f": {first}" if first else ""), status="differences",
                         tensor=diffs[0].get("name") if diffs and isinstance(diffs[0], dict) else None)
        self.report = report


# What to do about a failure, by the request field the library says it is about (mpk_error.field,
# mpk_field_name: the C request's word) and the status, worded with this package's keywords (the
# moepack program words the same facts with its options, --force). Another pair: a pointer to the
# keyword argument.
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


def hint(field, status):
    """The hint for a failure about request field `field` (None for none) with status `status`,
    in this package's keywords; None when there is none."""
    if not field:
        return None
    return _HINTS.get((field, status), f"see the {_KEYWORDS.get(field, field)} argument")


_BY_STATUS = {"not-found": NotFound, "destination-exists": DestinationExists, "usage": UsageError,
              "preset": UsageError, "out-of-memory": OutOfMemory}
_BY_ERRNO = {_errno.EACCES: PermissionDenied, _errno.EPERM: PermissionDenied, _errno.EISDIR: IsADirectory,
             _errno.ENOENT: NotFound, _errno.EEXIST: DestinationExists}
_TENSOR = re.compile(r"tensor '([^']*)'")


def from_c(err):
    """The exception for a filled mpk_error."""
    status = lib.mpk_status_str(err.code).decode()
    message = err.msg.decode(errors="replace")
    where = err.where.decode(errors="replace")
    cls = _BY_STATUS.get(status, Error)
    if status == "io":
        cls = _BY_ERRNO.get(err.sys_errno, IOFailure)
    t = _TENSOR.search(message)
    file = where if where and where not in ("exec", "io", "ops") else None
    name = lib.mpk_field_name(err.field)
    field = name.decode() if name else None
    return cls(message, status=status, code=err.code, file=file, tensor=t.group(1) if t else None,
               errno=err.sys_errno, field=field, hint=hint(field, status), where=where)
