"""Running a long library call so that Ctrl-C and the caller's callbacks can stop it.

The C call runs in a worker thread (ctypes releases the GIL while it runs); the calling thread
waits on it in short steps, so a KeyboardInterrupt (Python runs signal handlers in the main
thread only, between steps of the wait) is seen at once. It then raises the request's cancel
flag, which the library polls: the conversion stops within a fraction of a second, removes
its staging directory and returns MPK_E_CANCELLED, leaving nothing at dst; the
KeyboardInterrupt is raised once the call has returned (also when the call had already landed its
output as the interrupt came: it is a Ctrl-C all the same). An exception raised by a progress or
warn callback (run in the worker thread, inside the C call, where ctypes could only print it)
is kept, raises the cancel flag too, and is raised after the call in the same way.
"""
import ctypes
import json
import signal
import threading

from . import errors
from ._native import P, _Error, lib

_STEP = 0.05  # seconds between looks at the worker: a Ctrl-C is seen within this


class Call:
    """One library call: its cancel flag, the callbacks' first exception, the C callbacks kept
    alive for the duration."""

    def __init__(self):
        self.cancel = ctypes.c_int(0)
        self.raised = None
        self.keep = []

    def wrap(self, cfunctype, fn, convert):
        """fn as a C callback of type cfunctype (NULL for None); convert maps the C arguments
        (ctx dropped) to fn's. Its first exception is kept and cancels the call."""
        if fn is None:
            return cfunctype()

        def trampoline(ctx, *args):
            if self.raised is not None:
                return
            try:
                fn(*convert(*args))
            except BaseException as e:  # noqa: B036 (KeyboardInterrupt, SystemExit too: re-raised)
                self.raised = e
                self.cancel.value = 1
        cb = cfunctype(trampoline)
        self.keep.append(cb)
        return cb

    def run(self, fn, *args):
        """fn(*args) in a worker thread: its return value, or the exception to raise."""
        box = {}
        done = threading.Event()

        def worker():
            # SIGINT blocked here and in the library's threads (they inherit the mask): the kernel
            # then delivers it to a thread that waits in Python (the main one), which raises the
            # flag at once instead of at its next step
            if hasattr(signal, "pthread_sigmask"):
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                box["value"] = fn(*args)
            finally:
                done.set()
        interrupted = None
        t = threading.Thread(target=worker, name="moepack-call", daemon=True)
        t.start()
        while not done.is_set():
            try:
                done.wait(_STEP)
            except KeyboardInterrupt as e:  # raise the flag, then wait for the library to stop
                interrupted = interrupted or e
                self.cancel.value = 1
        t.join()
        if interrupted is not None:
            raise interrupted
        if self.raised is not None:
            raise self.raised
        return box["value"]


def report(call, fn, *args):
    """Calls fn(*args, &report, &err) through call: the report as a dict, or raises moepack.Error."""
    err = _Error()
    rep = P()
    try:
        status = call.run(fn, *args, ctypes.byref(rep), ctypes.byref(err))
    except BaseException:
        lib.mpk_report_free(rep)  # (a call that finished as Ctrl-C came: its report, if any)
        raise
    if status != 0:
        raise errors.from_c(err)
    try:
        return json.loads(lib.mpk_report_json(rep).decode())
    finally:
        lib.mpk_report_free(rep)

