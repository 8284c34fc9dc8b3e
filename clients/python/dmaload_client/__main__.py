"""`python3 -m dmaload_client SOCKET FILE... [--sha256]` / `SOCKET --status`: one JSON line per file, for scripts
and tests (it checks what a process that maps the served buffer would see)."""
import argparse
import fcntl
import json
import os
import sys

from .client import Client
from .errors import DmaloadError


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m dmaload_client", description="Load files through a dmaload serve server (one JSON line per file).")
    p.add_argument("socket")
    p.add_argument("files", nargs="*")
    p.add_argument("--sha256", action="store_true", help="hash each file's bytes from the shared mapping")
    p.add_argument("--status", action="store_true", help="print the server's counters")
    p.add_argument("--server-uid", type=int, metavar="UID", help="also trust a server run by this user (root's and your own are trusted)")
    a = p.parse_args(argv)
    try:
        with Client(a.socket, server_uid=a.server_uid) as c:
            if a.status:
                print(json.dumps(c.status()))
            for f in a.files:
                with c.load(f) as buf:
                    out = {"path": f, "size": buf.size, "target": buf.target, "cached": buf.cached, "parts": len(buf.parts), "ino": os.fstat(buf.fd).st_ino}
                    if buf.target == "memfd":
                        out["seals"] = fcntl.fcntl(buf.fd, fcntl.F_GET_SEALS)
                    if a.sha256:
                        out["sha256"] = buf.sha256()
                    print(json.dumps(out), flush=True)
    except DmaloadError as e:
        print(f"dmaload_client: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"dmaload_client: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
