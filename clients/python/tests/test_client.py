"""The client against fake servers: who the server is (SO_PEERCRED) is checked before any fd leaves; every malformed
reply is refused with ERR_SHARE_REPLY and leaks no fd and no mapping; a buffer of more than 64 parts arrives over
LoadReply + LoadReplyMore messages; memfds reopened O_RDONLY (as the server hands them out) map fine; an idle close is
survived; the command line's errors are one `dmaload_client: CODE: message` line naming the socket, and its --help
names the command as it was run. Needs no dmaload server; the uid check needs root (it runs a listener as another
user)."""
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from _helpers import SERVED_SEALS, FakeServer, LeakCheck, Msg, Push, memfd, open_fds

import dmaload_client
from dmaload_client import Client, DmaloadError

CLIENT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(dmaload_client.__file__)))

PAGE = os.sysconf("SC_PAGE_SIZE")
LOAD_REPLY, STATUS_REPLY, LOAD_REPLY_MORE, ERROR = 2, 4, 5, 15
NOBODY = 65534


def reply(size=PAGE, target="memfd", parts=None, **extra):
    body = {"size": size, "target": target, "parts": parts if parts is not None else [{"offset": 0, "size": size}], "cached": False, "stats": {}}
    body.update(extra)
    return body


def one_memfd(data=b"x" * PAGE, **kw):
    return lambda: [memfd(data, **kw)]


class TempFile:
    """A small file to ask for (the fake servers ignore it, but the client opens and sends it)."""

    def setUp(self):
        fd, self.file = tempfile.mkstemp(prefix="dmaload-client-test-")
        os.write(fd, b"hello")
        os.close(fd)

    def tearDown(self):
        os.unlink(self.file)


def nobody_python():
    """An interpreter that uid 65534 may run, or None."""
    for exe in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if exe and subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", exe, "-c", "pass"], capture_output=True).returncode == 0:
            return exe
    return None


LISTENER = r"""
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(sys.argv[1]); s.listen(1); s.settimeout(20)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(5)
messages = fds = 0
try:
    while True:
        raw, got, _, _ = socket.recv_fds(c, 70000, 64)
        for fd in got: os.close(fd)
        if not raw and not got: break
        messages += 1; fds += len(got)
        break  # never answers: it only counts what it was sent
except OSError:
    pass
print(json.dumps({"messages": messages, "fds": fds}), flush=True)
"""


@unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root: runs a listener as uid 65534 (setpriv) to play a server of another user")
@unittest.skipUnless(shutil.which("setpriv"), "needs setpriv (util-linux) to run a listener as uid 65534")
class ServerUid(TempFile, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.python = nobody_python()
        if self.python is None:
            self.skipTest("no Python interpreter that uid 65534 may run")
        # In /tmp: TMPDIR may be a private folder (0700) that uid 65534 cannot reach.
        self.dir = tempfile.mkdtemp(prefix="dmaload-nobody-", dir="/tmp" if os.path.isdir("/tmp") else None)
        os.chown(self.dir, NOBODY, NOBODY)
        self.sock = os.path.join(self.dir, "s.sock")
        self.proc = subprocess.Popen(
            ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", self.python, "-c", LISTENER, self.sock],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.assertEqual(self.proc.stdout.readline().strip(), "ready")

    def tearDown(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        super().tearDown()

    def listener_saw(self):
        out, _ = self.proc.communicate(timeout=30)
        return json.loads(out)

    def test_a_server_of_another_user_is_refused_before_any_fd_is_sent(self):
        with LeakCheck(self):
            with self.assertRaises(DmaloadError) as cm:
                with Client(self.sock) as c:
                    c.load(self.file)
        e = cm.exception
        self.assertEqual(e.code, "ERR_SHARE_UNTRUSTED_SERVER")
        self.assertIn(self.sock, e.message)
        self.assertIn(f"uid {NOBODY}", e.message)
        self.assertIn(f"server_uid={NOBODY}", e.message)
        self.assertEqual(self.listener_saw(), {"messages": 0, "fds": 0})

    def test_server_uid_trusts_that_user(self):
        # The same listener, named as trusted: the load is sent (with its fd); the listener never answers.
        with Client(self.sock, server_uid=NOBODY, timeout=10) as c:
            self.assertEqual(c.server_uid, NOBODY)
            with self.assertRaises(DmaloadError) as cm:
                c.load(self.file)
            self.assertEqual(cm.exception.code, "ERR_SHARE_SERVER_GONE")
        self.assertEqual(self.listener_saw(), {"messages": 1, "fds": 1})

    def test_the_command_line_refuses_it_too(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [CLIENT_DIR, os.environ.get("PYTHONPATH")] if p))
        r = subprocess.run([sys.executable, "-m", "dmaload_client", self.sock, self.file], capture_output=True, text=True, env=env, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("ERR_SHARE_UNTRUSTED_SERVER", r.stderr)
        self.assertIn(f"--server-uid {NOBODY}", r.stderr)
        self.assertEqual(self.listener_saw(), {"messages": 0, "fds": 0})


class OwnServer(TempFile, unittest.TestCase):
    def test_a_server_of_this_user_is_trusted_and_o_rdonly_memfds_map(self):
        data = os.urandom(PAGE + 100)
        with LeakCheck(self), FakeServer([[Msg(LOAD_REPLY, reply(len(data)), one_memfd(data, rdonly=True))]]) as srv:
            with Client(srv.path) as c:
                self.assertEqual(c.server_uid, os.geteuid())
                with c.load(self.file) as buf:
                    self.assertEqual(bytes(buf.view()), data)
                    self.assertEqual(buf.sha256(), hashlib.sha256(data).hexdigest())
        self.assertEqual((srv.requests, srv.received_fds), (1, 1))

    def test_server_uid_must_be_an_int(self):
        with self.assertRaises(TypeError):
            Client("/nonexistent", server_uid="0")


def pipe_read_end():
    r, w = os.pipe()
    os.close(w)
    return [r]


def nested(n):
    return b"[" * n + b"]" * n


# (name, messages answering one load): every one must end in ERR_SHARE_REPLY, with all fds closed.
MALFORMED = [
    ("30,000 nested [", [Msg(LOAD_REPLY, b"[" * 30000, one_memfd())]),
    ("30,000 nested [] in a part", [Msg(LOAD_REPLY, b'{"size": 4096, "target": "memfd", "parts": ' + nested(30000) + b"}", one_memfd())]),
    ("body not an object", [Msg(LOAD_REPLY, [1, 2], one_memfd())]),
    ("body a string", [Msg(LOAD_REPLY, "memfd", one_memfd())]),
    ("body not UTF-8", [Msg(LOAD_REPLY, b'{"size": "\xff"}', one_memfd())]),
    ("body not JSON", [Msg(LOAD_REPLY, b"{size: 4096}", one_memfd())]),
    ("bad magic", [Msg(None, None, one_memfd(), raw=b"XXXX" + b"\x01\x00\x02\x00\x01\x00\x00\x00\x02\x00\x00\x00{}")]),
    ("body length disagrees", [Msg(None, None, one_memfd(), raw=b"DMLD" + b"\x01\x00\x02\x00\x01\x00\x00\x00\x09\x00\x00\x00{}")]),
    ("shorter than a header", [Msg(None, None, one_memfd(), raw=b"DMLD\x01")]),
    ("parts a string", [Msg(LOAD_REPLY, reply(parts="x"), one_memfd())]),
    ("parts of numbers", [Msg(LOAD_REPLY, reply(parts=[5]), one_memfd())]),
    ("parts of lists", [Msg(LOAD_REPLY, reply(parts=[[0, PAGE]]), one_memfd())]),
    ("part size a string", [Msg(LOAD_REPLY, reply(parts=[{"offset": 0, "size": str(PAGE)}]), one_memfd())]),
    ("part size a float", [Msg(LOAD_REPLY, reply(parts=[{"offset": 0, "size": float(PAGE)}]), one_memfd())]),
    ("part size a boolean", [Msg(LOAD_REPLY, reply(size=1, parts=[{"offset": 0, "size": True}]), one_memfd())]),
    ("part size huge", [Msg(LOAD_REPLY, reply(size=2**70, parts=[{"offset": 0, "size": 2**70}]), one_memfd())]),
    ("part offset not 0", [Msg(LOAD_REPLY, reply(size=2 * PAGE, parts=[{"offset": PAGE, "size": PAGE}]), one_memfd())]),
    ("no parts", [Msg(LOAD_REPLY, reply(parts=[]), one_memfd())]),
    ("two parts for one fd", [Msg(LOAD_REPLY, reply(size=2 * PAGE, target="udmabuf", parts=[{"offset": 0, "size": PAGE}, {"offset": PAGE, "size": PAGE}]), one_memfd())]),
    ("parts end short of size", [Msg(LOAD_REPLY, reply(size=PAGE + 1, parts=[{"offset": 0, "size": PAGE}]), one_memfd())]),
    ("size a string", [Msg(LOAD_REPLY, reply(size=str(PAGE), parts=[{"offset": 0, "size": PAGE}]), one_memfd())]),
    ("size negative", [Msg(LOAD_REPLY, reply(size=-1, parts=[{"offset": 0, "size": PAGE}]), one_memfd())]),
    ("target a list", [Msg(LOAD_REPLY, reply(target=["memfd"]), one_memfd())]),
    ("target unknown", [Msg(LOAD_REPLY, reply(target="tape"), one_memfd())]),
    ("cached a string", [Msg(LOAD_REPLY, reply(cached="yes"), one_memfd())]),
    ("stats a number", [Msg(LOAD_REPLY, reply(stats=5), one_memfd())]),
    ("more a string", [Msg(LOAD_REPLY, reply(more="1"), one_memfd())]),
    ("more a boolean", [Msg(LOAD_REPLY, reply(more=True), one_memfd())]),
    ("more negative", [Msg(LOAD_REPLY, reply(more=-1), one_memfd())]),
    ("no fd", [Msg(LOAD_REPLY, reply())]),
    ("a memfd shorter than its part", [Msg(LOAD_REPLY, reply(size=3 * PAGE), one_memfd(b"x" * PAGE))]),
    ("a memfd not sealed", [Msg(LOAD_REPLY, reply(), one_memfd(seals=0))]),
    ("a memfd sealed against writes only", [Msg(LOAD_REPLY, reply(), one_memfd(seals=SERVED_SEALS & ~fcntl.F_SEAL_SHRINK))]),
    ("a pipe for a memfd", [Msg(LOAD_REPLY, reply(size=0, parts=[{"offset": 0, "size": 0}]), lambda: pipe_read_end())]),
    ("a memfd reply of two fds", [Msg(LOAD_REPLY, reply(size=2 * PAGE, parts=[{"offset": 0, "size": PAGE}, {"offset": PAGE, "size": PAGE}]), lambda: [memfd(b"x" * PAGE), memfd(b"y" * PAGE)])]),
    ("a status reply to a load", [Msg(STATUS_REPLY, {"pid": 1}, one_memfd())]),
    ("a LoadReplyMore without its LoadReply", [Msg(LOAD_REPLY_MORE, {"index": 1}, one_memfd())]),
    ("an Error reply whose code is not a string, with an fd", [Msg(ERROR, {"code": 5, "message": "x"}, one_memfd())]),
]


class MalformedReplies(TempFile, unittest.TestCase):
    def test_each_is_refused_with_every_fd_closed(self):
        for name, msgs in MALFORMED:
            with self.subTest(name):
                with LeakCheck(self), FakeServer([msgs]) as srv:
                    with Client(srv.path, timeout=10) as c:
                        with self.assertRaises(DmaloadError) as cm:
                            c.load(self.file)
                        self.assertEqual(cm.exception.code, "ERR_SHARE_REPLY", str(cm.exception))

    def test_an_error_reply_keeps_its_code_and_its_stray_fd_is_closed(self):
        err = {"code": "ERR_MEMORY_BUDGET", "message": "too big\x1b[2J", "errno": None}
        with LeakCheck(self), FakeServer([[Msg(ERROR, err, one_memfd())]]) as srv:
            with Client(srv.path, timeout=10) as c:
                with self.assertRaises(DmaloadError) as cm:
                    c.load(self.file)
        self.assertEqual(cm.exception.code, "ERR_MEMORY_BUDGET")
        self.assertNotIn("\x1b", str(cm.exception))

    def test_a_reply_for_another_id_is_dropped_with_its_fd(self):
        data = b"z" * PAGE
        msgs = [Msg(LOAD_REPLY, reply(), one_memfd(), id_=777), Msg(LOAD_REPLY, reply(), one_memfd(data))]
        with LeakCheck(self), FakeServer([msgs]) as srv:
            with Client(srv.path, timeout=10) as c, c.load(self.file) as buf:
                self.assertEqual(bytes(buf.view()), data)

    def test_after_a_refused_layout_the_connection_still_serves(self):
        with LeakCheck(self), FakeServer([[Msg(LOAD_REPLY, reply(target="tape"), one_memfd())], [Msg(STATUS_REPLY, {"pid": 42})]]) as srv:
            with Client(srv.path, timeout=10) as c:
                with self.assertRaises(DmaloadError):
                    c.load(self.file)
                self.assertEqual(c.status(), {"pid": 42})

    def test_after_an_undecodable_message_the_connection_is_given_up(self):
        with LeakCheck(self), FakeServer([[Msg(LOAD_REPLY, b"[" * 30000, one_memfd())]]) as srv:
            with Client(srv.path, timeout=10) as c:
                with self.assertRaises(DmaloadError):
                    c.load(self.file)
                with self.assertRaises(DmaloadError) as cm:
                    c.status()
                self.assertEqual(cm.exception.code, "ERR_SHARE_SERVER_GONE")


N_PARTS = 200


def part_bytes(i):
    return bytes([i % 251]) * 17 + os.urandom(PAGE - 17)


def multipart_script(data, more=None, chunks=None, tweak=None):
    """A LoadReply of len(data) one-page udmabuf "parts" (memfds here) and the LoadReplyMore messages with the fds
    past the first 64. `chunks`: fds per message; `tweak(msgs)` spoils the sequence."""
    n = len(data)
    chunks = chunks or [64] * (n // 64) + ([n % 64] if n % 64 else [])
    starts = [sum(chunks[:k]) for k in range(len(chunks))]
    parts = [{"offset": i * PAGE, "size": PAGE} for i in range(n)]
    body = reply(size=n * PAGE, target="udmabuf", parts=parts, more=len(chunks) - 1 if more is None else more)

    def fds(start, count):
        return lambda: [memfd(data[i]) for i in range(start, min(start + count, n))]

    msgs = [Msg(LOAD_REPLY, body, fds(0, chunks[0]))]
    msgs += [Msg(LOAD_REPLY_MORE, {"index": k}, fds(starts[k], chunks[k])) for k in range(1, len(chunks))]
    return tweak(msgs) if tweak else msgs


class ManyParts(TempFile, unittest.TestCase):
    def test_200_parts_over_four_messages_map_as_one_view_and_close(self):
        data = [part_bytes(i) for i in range(N_PARTS)]
        with LeakCheck(self), FakeServer([multipart_script(data)]) as srv:
            with Client(srv.path, timeout=10) as c:
                buf = c.load(self.file)
                fds = list(buf.fds)
                self.assertEqual(len(set(fds)), N_PARTS, "one fd per part")
                self.assertTrue(set(fds) <= set(open_fds()))
                self.assertEqual((buf.size, buf.target, len(buf.parts)), (N_PARTS * PAGE, "udmabuf", N_PARTS))
                self.assertEqual(bytes(buf.view()), b"".join(data))
                self.assertEqual([bytes(c) for c in buf.chunks()], data)
                view = buf.view()
                buf.close()
                self.assertFalse(set(fds) & set(open_fds()), "close() closes every fd at once")
                # A view taken before close() keeps the mapping (never a dangling one)...
                self.assertEqual(view[PAGE * 7 : PAGE * 7 + 17], data[7][:17])
                self.assertTrue(view.readonly)
                del view  # ...until it goes: LeakCheck then finds nothing mapped.

    def test_a_chunk_size_other_than_64_is_fine(self):
        data = [part_bytes(i) for i in range(70)]
        with LeakCheck(self), FakeServer([multipart_script(data, chunks=[10, 30, 30])]) as srv:
            with Client(srv.path, timeout=10) as c, c.load(self.file) as buf:
                self.assertEqual(bytes(buf.view()), b"".join(data))

    def test_inconsistent_sequences_are_refused_with_every_fd_closed(self):
        data = [part_bytes(i) for i in range(N_PARTS)]
        swap = lambda m: [m[0], m[2], m[1], m[3]]  # noqa: E731
        cases = [
            ("fewer fds than parts", multipart_script(data, chunks=[64, 64, 64, 7])),
            ("more fds than parts", multipart_script(data, chunks=[64, 64, 64, 8], tweak=lambda m: m[:-1] + [Msg(LOAD_REPLY_MORE, {"index": 3}, lambda: [memfd(b"q" * PAGE) for _ in range(9)])])),
            ("messages out of order", multipart_script(data, tweak=swap)),
            ("an index that is a string", multipart_script(data, tweak=lambda m: m[:1] + [Msg(LOAD_REPLY_MORE, {"index": "1"}, m[1].fds)] + m[2:])),
            ("an index that is a boolean", multipart_script(data, tweak=lambda m: m[:1] + [Msg(LOAD_REPLY_MORE, {"index": True}, m[1].fds)] + m[2:])),
            ("a LoadReplyMore without fds", multipart_script(data, tweak=lambda m: m[:2] + [Msg(LOAD_REPLY_MORE, {"index": 2})] + m[2:])),
            ("a LoadReply in place of a LoadReplyMore", multipart_script(data, tweak=lambda m: m[:1] + [Msg(LOAD_REPLY, {"index": 1}, m[1].fds)] + m[2:])),
            ("more than the parts could need", multipart_script(data, more=1000)),
            ("more on a memfd reply", [Msg(LOAD_REPLY, reply(more=1), one_memfd()), Msg(LOAD_REPLY_MORE, {"index": 1}, one_memfd())]),
            ("a LoadReplyMore body not an object", multipart_script(data, tweak=lambda m: m[:1] + [Msg(LOAD_REPLY_MORE, [1], m[1].fds)] + m[2:])),
        ]
        for name, msgs in cases:
            with self.subTest(name):
                # The status request after the failure proves the leftovers (same id) are dropped, fds closed.
                with LeakCheck(self), FakeServer([msgs, [Msg(STATUS_REPLY, {"pid": 1})]]) as srv:
                    with Client(srv.path, timeout=10) as c:
                        with self.assertRaises(DmaloadError) as cm:
                            c.load(self.file)
                        self.assertIn(cm.exception.code, ("ERR_SHARE_REPLY",), str(cm.exception))
                        if name != "a LoadReplyMore body not an object":
                            self.assertEqual(c.status(), {"pid": 1})

    def test_an_error_in_the_middle_closes_what_came(self):
        data = [part_bytes(i) for i in range(N_PARTS)]
        script = multipart_script(data, tweak=lambda m: m[:2] + [Msg(ERROR, {"code": "ERR_FILE_CHANGED", "message": "changed"})])
        with LeakCheck(self), FakeServer([script]) as srv:
            with Client(srv.path, timeout=10) as c:
                with self.assertRaises(DmaloadError) as cm:
                    c.load(self.file)
        self.assertEqual(cm.exception.code, "ERR_FILE_CHANGED")


class IdleClose(unittest.TestCase):
    def test_the_next_request_connects_again_after_an_idle_close(self):
        idle = Push([Msg(ERROR, {"code": "ERR_SHARE_IDLE", "message": "it sent nothing for 10 ms"}, id_=0)], hang_up=True)
        with LeakCheck(self), FakeServer([[Msg(STATUS_REPLY, {"n": 1})], idle, [Msg(STATUS_REPLY, {"n": 2})]]) as srv:
            with Client(srv.path, timeout=10) as c:
                self.assertEqual(c.status(), {"n": 1})
                self.assertTrue(idle.done.wait(10))
                time.sleep(0.05)
                self.assertEqual(c.status(), {"n": 2})

    def test_another_notice_is_raised_and_the_client_stays_gone(self):
        gone = Push([Msg(ERROR, {"code": "ERR_SHARE_TOO_MANY_CONNECTIONS", "message": "limit"}, id_=0)])
        with LeakCheck(self), FakeServer([gone]) as srv:
            with Client(srv.path, timeout=10) as c:
                self.assertTrue(gone.done.wait(10))
                with self.assertRaises(DmaloadError) as cm:
                    c.status()
                self.assertEqual(cm.exception.code, "ERR_SHARE_TOO_MANY_CONNECTIONS")
                with self.assertRaises(DmaloadError) as cm:
                    c.status()
                self.assertEqual(cm.exception.code, "ERR_SHARE_SERVER_GONE")


def cli(args, argv0=None, timeout=30):
    """Runs the command line (`python -m dmaload_client ARGS`, or the script `argv0`) from the source folder."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [CLIENT_DIR, os.environ.get("PYTHONPATH")] if p))
    cmd = [argv0] if argv0 else [sys.executable, "-m", "dmaload_client"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=timeout)


class CommandLine(TempFile, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="dmaload-cli-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        super().tearDown()

    def assertFails(self, r, code, *contains):
        """Exit 1 and one line on stderr, `dmaload_client: CODE: message`, the message naming each of `contains`."""
        self.assertEqual(r.returncode, 1, r.stderr)
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertRegex(lines[0], r"^dmaload_client: [A-Z][A-Z0-9_]+: ")
        self.assertTrue(lines[0].startswith(f"dmaload_client: {code}: "), lines[0])
        for s in contains:
            self.assertIn(s, lines[0])

    def test_errors_name_a_code_and_the_socket(self):
        missing = os.path.join(self.dir, "none.sock")
        self.assertFails(cli([missing, self.file]), "ENOENT", f"'{missing}'", "dmaload serve")
        dead = os.path.join(self.dir, "dead.sock")  # a socket file that nobody listens on
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(dead)
        s.close()
        self.assertFails(cli([dead, self.file]), "ECONNREFUSED", f"'{dead}'", "dmaload serve")
        self.assertFails(cli([dead, "--status"]), "ECONNREFUSED", f"'{dead}'")
        gone = os.path.join(self.dir, "no-such-file")
        with FakeServer([]) as srv:
            self.assertFails(cli([srv.path, gone]), "ENOENT", f"'{gone}'", f"'{srv.path}'")
        with FakeServer([]) as srv:
            self.assertFails(cli([srv.path, self.dir]), "EISDIR", f"'{self.dir}'", f"'{srv.path}'")
        with FakeServer([[Msg(ERROR, {"code": "ERR_MEMORY_BUDGET", "message": "over the budget"})]]) as srv:
            self.assertFails(cli([srv.path, self.file]), "ERR_MEMORY_BUDGET", "over the budget", f"'{srv.path}'")
        with FakeServer([[Msg(LOAD_REPLY, reply(target="tape"), one_memfd())]]) as srv:
            self.assertFails(cli([srv.path, self.file]), "ERR_SHARE_REPLY", f"'{srv.path}'")

    def test_help_names_the_command_as_it_was_run(self):
        r = cli(["--help"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith(f"usage: {os.path.basename(sys.executable)} -m dmaload_client "), r.stdout)
        # The console script pip installs as `dmaload-client` calls main() the same way.
        script = os.path.join(self.dir, "dmaload-client")
        with open(script, "w") as f:
            f.write(f"#!{sys.executable}\nimport sys\nfrom dmaload_client.__main__ import main\nsys.exit(main())\n")
        os.chmod(script, 0o755)
        r = cli(["--help"], argv0=script)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("usage: dmaload-client "), r.stdout)


if __name__ == "__main__":
    unittest.main()
