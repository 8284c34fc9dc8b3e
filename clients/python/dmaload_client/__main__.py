"""`python3 -m dmaload_client SOCKET FILE... [--sha256]` / `SOCKET --status`: one JSON line per file, for scripts
and tests (it checks what a process that maps the served buffer would see). Installed, the same command is
`dmaload-client`. A failure is exit code 1 and one line on stderr, `dmaload_client: CODE: message`, the message naming
the socket (and the file)."""
import argparse
import errno
import fcntl
import json
import os
import socket
import sys

from .client import Client
from .errors import DmaloadError


def _prog():
    """The command as it was run: `dmaload-client` (the installed script) or `python3 -m dmaload_client`."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name in ("", "-c", "__main__.py"):
        return f"{os.path.basename(sys.executable) or 'python3'} -m dmaload_client"
    return name


def _code(e):
    """A stable code for an OSError: its errno's name (ENOENT, ECONNREFUSED...)."""
    if e.errno in errno.errorcode:
        return errno.errorcode[e.errno]
    return "ETIMEDOUT" if isinstance(e, (TimeoutError, socket.timeout)) else "ERR_SYSTEM"  # socket.timeout: 3.9


def _fail(e, socket_path, doing):
    """Prints `dmaload_client: CODE: message` for `e`, naming the socket, and returns the exit code 1."""
    server = f"the dmaload server at '{socket_path}'"
    if isinstance(e, DmaloadError):
        code, message = e.code, e.message
        if socket_path not in message:
            message = f"{doing}: {message}"
    else:
        code = _code(e)
        why = e.strerror or str(e) or type(e).__name__
        named = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes)) else None
        if named is not None and f"'{named}'" not in doing:
            why = f"'{named}': {why}"
        message = f"{doing}: {why}"
        if doing.startswith("cannot connect") and code in ("ENOENT", "ECONNREFUSED"):
            message += f" (is `dmaload serve --socket {socket_path}` running?)"
    if socket_path not in message:
        message += f" ({server})"
    print(f"dmaload_client: {code}: {message}", file=sys.stderr)
    return 1


def main(argv=None):
    p = argparse.ArgumentParser(prog=_prog(), description="Load files through a dmaload serve server (one JSON line per file).")
    p.add_argument("socket")
    p.add_argument("files", nargs="*")
    p.add_argument("--sha256", action="store_true", help="hash each file's bytes from the shared mapping")
    p.add_argument("--status", action="store_true", help="print the server's counters")
    p.add_argument("--server-uid", type=int, metavar="UID", help="also trust a server run by this user (root's and your own are trusted)")
    a = p.parse_args(argv)
    doing = f"cannot connect to the dmaload server at '{a.socket}'"
    try:
        with Client(a.socket, server_uid=a.server_uid) as c:
            if a.status:
                doing = f"cannot get the counters of the dmaload server at '{a.socket}'"
                print(json.dumps(c.status()))
            for f in a.files:
                doing = f"cannot load '{f}' through the dmaload server at '{a.socket}'"
                with c.load(f) as buf:
                    out = {"path": f, "size": buf.size, "target": buf.target, "cached": buf.cached, "parts": len(buf.parts), "ino": os.fstat(buf.fd).st_ino}
                    if buf.target == "memfd":
                        out["seals"] = fcntl.fcntl(buf.fd, fcntl.F_GET_SEALS)
                    if a.sha256:
                        out["sha256"] = buf.sha256()
                    print(json.dumps(out), flush=True)
    except (DmaloadError, OSError) as e:
        return _fail(e, a.socket, doing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
