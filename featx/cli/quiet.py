"""Keep TensorFlow's native start-up lines off the ``featx`` command's standard error.

TensorFlow's C++ code writes log lines straight to file descriptor 2 ("oneDNN custom operations
are on", "Could not find cuda drivers", "failed call to cuInit"), several of them before absl
logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not hold them all back. Python-level
logging cannot reach them either. :func:`quiet_native_stderr` therefore points descriptor 2 at a
pipe for the duration of a command, drops the lines in the native log format and passes every
other line through; Python's own ``sys.stderr`` (featx's messages, warnings, progress bars)
writes to the real standard error directly, unfiltered and in order.

Only the command line uses this (``featx`` without ``-v``); the library never touches the
process's descriptors, environment or logging configuration.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator

__all__ = ["quiet_native_stderr", "is_native_log_line"]

# glog/absl: "I0000 00:00:1796068568.633239    6249 port.cc:153] message" (also W, E; F is kept:
# a fatal line is the only account of a crash), absl's "All log messages before
# absl::InitializeLog()" banner, and the second line of TensorFlow's CPU-feature notice.
_NATIVE = re.compile(
    rb"^(?:[IWE]\d{4} [\d:.]+\s+\d+ [^\s:]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler"
    rb")"
)


def is_native_log_line(line: bytes) -> bool:
    """Whether ``line`` is one of the native (C++) log lines the command line holds back.

    Examples
    --------
    >>> is_native_log_line(b"I0000 00:00:1796.63    6249 port.cc:153] oneDNN custom operations")
    True
    >>> is_native_log_line(b"featx: error: backbone 'x' is not known")
    False
    """
    return bool(_NATIVE.match(line))


def _pump(read_fd: int, write_fd: int) -> None:
    """Copy lines from ``read_fd`` to ``write_fd``, dropping native log lines, until EOF."""
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not is_native_log_line(line))
        _write_all(write_fd, out)
    if pending and not is_native_log_line(pending):
        _write_all(write_fd, pending)
    os.close(read_fd)
    os.close(write_fd)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError:
            return


def _writes_to_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[None]:
    """Filter native log lines out of file descriptor 2 while the block runs.

    Descriptor 2 is pointed at a pipe whose reader thread passes every line but TensorFlow's
    and absl's native log lines through to the real standard error. ``sys.stderr``, when it
    writes to descriptor 2, is pointed at the real standard error for the block, so Python's
    output is neither delayed nor filtered. Processes started in the block inherit the filter.

    Parameters
    ----------
    enabled : bool, default=True
        ``False`` does nothing (``featx -v`` shows everything).
    """
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_fd, write_fd = os.pipe()
    except OSError:  # no descriptor 2 (a GUI process, ...): nothing to filter
        yield
        return
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, os.dup(real)), daemon=True,
                            name="featx-stderr-filter")
    pump.start()
    saved_stream = sys.stderr
    if _writes_to_fd2(saved_stream):
        encoding = getattr(saved_stream, "encoding", None) or "utf-8"
        sys.stderr = open(  # noqa: SIM115 - closed below
            os.dup(real), "w", encoding=encoding, errors="backslashreplace", buffering=1,
        )
    try:
        yield
    finally:
        if sys.stderr is not saved_stream:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
                sys.stderr.close()
            sys.stderr = saved_stream
        os.dup2(real, 2)  # the pipe's last write end in this process closes: the pump ends
        os.close(real)
        _drain(pump, read_fd)


def _drain(pump: threading.Thread, read_fd: int) -> None:
    """Wait until the pump has passed on what was written, not for child processes' EOF.

    Processes started in the block (joblib's workers) may keep the pipe open long after; the
    pump then lives on as a daemon thread, still passing their lines through.
    """
    try:
        import fcntl
        import termios
    except ImportError:  # pragma: no cover - not POSIX
        pump.join(timeout=0.2)
        return
    pending = bytearray(4)
    for _ in range(200):  # at most ~2 s
        if not pump.is_alive():
            return
        try:
            fcntl.ioctl(read_fd, termios.FIONREAD, pending)
        except OSError:  # the pump reached EOF and closed the pipe
            pump.join(timeout=0.5)
            return
        if int.from_bytes(pending, sys.byteorder) == 0:
            pump.join(timeout=0.05)  # the last chunk read is being written
            return
        pump.join(timeout=0.01)
