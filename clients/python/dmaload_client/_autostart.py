"""The user's own dmaload server, started on demand: a Python user loads without starting anything by hand.

When no socket is named (no socket=, no DMALOAD_SOCKET), safe_open() and load_file() use the per-user socket
`$XDG_RUNTIME_DIR/dmaload/serve.sock` (else `/tmp/dmaload-UID/serve.sock`), in a folder only this user can enter,
checked before use. If no server answers there, one is started — `dmaload serve --exit-when-idle 10m` from the
installed npm package (DMALOAD_CLI, else `dmaload` on PATH) — under a lock, so that processes starting at once end up
with one server; it exits by itself once unused for the idle time (DMALOAD_IDLE_EXIT). A stale socket is replaced by
the new server. The client only ever talks to a server of its own user or root (SO_PEERCRED, as always)."""

import errno
import fcntl
import os
import shutil
import stat
import subprocess
import time

from .errors import DmaloadError

ENV_CLI = "DMALOAD_CLI"
ENV_IDLE = "DMALOAD_IDLE_EXIT"
START_TIMEOUT = 15.0
# Every failure to start says how to do without: a server of one's own choosing.
BY_HAND = "or start `dmaload serve --socket PATH` yourself and pass socket=PATH or set DMALOAD_SOCKET=PATH"


def runtime_dir():
    """This user's private folder for the socket, created if needed (mode 0700) and checked: a real folder (not a
    link), owned by this user, that nobody else can enter or write. ERR_SHARE_UNSAFE_FOLDER otherwise."""
    uid = os.getuid()
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base) and _private(base, uid):
        folder = os.path.join(base, "dmaload")
    else:
        folder = f"/tmp/dmaload-{uid}"
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    if not _private(folder, uid):
        raise DmaloadError(
            "ERR_SHARE_UNSAFE_FOLDER",
            f"'{folder}' is not a folder only uid {uid} can enter (a link, another owner, or open to others): the per-user "
            "dmaload socket cannot live there; remove it, or name a socket with DMALOAD_SOCKET",
        )
    return folder


def _private(path, uid):
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and (st.st_mode & 0o077) == 0


def default_socket():
    """The per-user socket's path (its folder created and checked)."""
    return os.path.join(runtime_dir(), "serve.sock")


def _command():
    """How to run the dmaload CLI: DMALOAD_CLI (a path; a .js file is run with node), else `dmaload` on PATH."""
    given = os.environ.get(ENV_CLI)
    if given:
        if given.endswith((".js", ".mjs")):
            node = shutil.which("node")
            if node is None:
                raise DmaloadError("ERR_SHARE_NO_SERVER", f"{ENV_CLI}={given} is a script, but `node` is not on PATH: install Node.js (20 or newer), {BY_HAND}")
            return [node, given]
        return [given]
    found = shutil.which("dmaload")
    if found is None:
        raise DmaloadError(
            "ERR_SHARE_NO_SERVER",
            "no dmaload server is running and the `dmaload` command is not on PATH to start one: install it with "
            f"`npm install -g dmaload` (Node.js 20 or newer), or set DMALOAD_CLI to its bin/dmaload.js, {BY_HAND}",
        )
    return [found]


def ensure_server(connect):
    """A Client of the user's own server: `connect(path)` to the per-user socket, starting the server first when
    nobody answers there. Two processes at once: the second waits for the first's server (a lock, not a race)."""
    sock = default_socket()
    try:
        return connect(sock)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    folder = os.path.dirname(sock)
    # The lock is the private folder itself (flock works on a folder's fd): nothing to create, nothing left behind.
    lock = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Someone may have started it while this process waited for the lock.
        try:
            return connect(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        log_path = os.path.join(folder, "serve.log")
        argv = _command() + ["serve", "--socket", sock, "--exit-when-idle", os.environ.get(ENV_IDLE) or "10m"]
        # This start's log only (read back if it fails), private like the folder.
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600), "wb") as log:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
            except OSError as e:
                raise DmaloadError("ERR_SHARE_NO_SERVER", f"could not start `{' '.join(argv)}` ({e.strerror}): set DMALOAD_CLI to dmaload's bin/dmaload.js, {BY_HAND}") from e
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                return connect(sock)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            code = proc.poll()
            if code is not None:
                raise DmaloadError("ERR_SHARE_NO_SERVER", f"`{' '.join(argv)}` exited with status {code} before it listened ({BY_HAND}): {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise DmaloadError("ERR_SHARE_NO_SERVER", f"`{' '.join(argv)}` did not listen at '{sock}' within {START_TIMEOUT:.0f} s ({BY_HAND}): {_tail(log_path)}")
            time.sleep(0.02)
    finally:
        os.close(lock)


def _tail(path, n=600):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace").strip() or "(its log is empty)"
    except OSError as e:
        return f"(its log {path} cannot be read: {errno.errorcode.get(e.errno, e.errno)})"
