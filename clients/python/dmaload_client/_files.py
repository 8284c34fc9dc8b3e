"""Naming and opening files, shared by the client and its format modules (which therefore need not import client.py:
no import cycle between them)."""

import os
import re
import stat
import urllib.parse

from .errors import DmaloadError

_REFERENCE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_reference(path):
    """Whether `path` names a reference (scheme://...) rather than a local file."""
    return isinstance(path, str) and _REFERENCE.match(path) is not None


def redact(ref):
    """A reference as messages may show it: an http(s) URL without user info or query (a signature)."""
    if re.match(r"^https?://", ref, re.I):
        u = urllib.parse.urlsplit(ref)
        host = u.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if u.port:
            host += f":{u.port}"
        return f"{u.scheme}://{host}{u.path}" + ("?…" if u.query else "")
    return ref


def open_regular(path):
    """An O_RDONLY fd of the regular file at `path` (ERR_NOT_REGULAR_FILE / EISDIR otherwise), opened so that a FIFO
    swapped in for it cannot block the open."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # before open(): a FIFO would block it
        raise DmaloadError("EISDIR" if stat.S_ISDIR(st.st_mode) else "ERR_NOT_REGULAR_FILE", f"'{path}' is not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        os.set_blocking(fd, True)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DmaloadError("ERR_NOT_REGULAR_FILE", f"'{path}' is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd
