#!/usr/bin/env python3
"""A FUSE file system that misbehaves on purpose, for attacking `dmaload serve` from the tests.

Usage: python3 fuse_daemon.py MOUNTPOINT MODE SIZE

Standard library only: no libfuse, no fusermount. It speaks the kernel's /dev/fuse protocol itself
(include/uapi/linux/fuse.h), mounts with mount(2) through ctypes (so it must run as root), prints
`ready` on stdout once the kernel's FUSE_INIT is answered, and serves until killed.

The file system: a root folder holding one read-only regular file, `data`, of SIZE bytes. Its bytes are
those of test/share/fuse.ts's fuseBytes(): file offset i holds (31*i + 7*(i >> 9)) & 255, except that the
first 8 bytes of each 512-byte sector hold the sector's number as a little-endian uint64 (so a sector read
from the wrong place changes the hash, which a pattern with a short period would not).

MODE:
  ok               answers everything.
  hang-flush       never answers FLUSH (the request close(2) sends); keeps answering the rest.
  eio-flush        answers FLUSH with EIO, so close(2) fails with EIO.
  hang-after-open  once an OPEN of `data` is answered, answers nothing more (it keeps reading requests,
                   so the kernel counts them as sent: their callers wait in D state until the daemon dies).

Attribute and entry timeouts are 0, so every stat, path walk and fstat asks the daemon (in
hang-after-open, an fstat of the open fd hangs rather than being answered from the kernel's cache), and
opens do not keep the page cache (FOPEN_KEEP_CACHE unset), so reads after an open reach the daemon too.

Killing the daemon (any signal; the tests use SIGKILL) closes /dev/fuse, which aborts the connection:
every request still waiting fails with ECONNABORTED/ENOTCONN. The mount itself stays until unmounted;
SIGTERM and SIGINT detach it (umount2 MNT_DETACH) before exiting, and the daemon gets SIGTERM when its
parent dies (PR_SET_PDEATHSIG), so a test runner killed mid-test leaves no mount behind (an orphaned
daemon also removes the mount point, which nobody else is left to do).

Exit status 77 means the system refused (no /dev/fuse, mount(2) failed): the tests skip with the message.
"""

import ctypes
import errno
import os
import signal
import struct
import sys

# Opcodes (enum fuse_opcode).
LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
OPEN, READ, WRITE, STATFS, RELEASE = 14, 15, 16, 17, 18
GETXATTR, LISTXATTR, FLUSH, INIT = 22, 23, 25, 26
OPENDIR, READDIR, RELEASEDIR, ACCESS = 27, 28, 29, 34
INTERRUPT, DESTROY, BATCH_FORGET = 36, 38, 42
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}

ROOT_ID, DATA_ID = 1, 2
SECTOR = 512
PERIOD = 256 * SECTOR  # the pattern without the stamps repeats every 256 sectors
MAX_READ = 1 << 20  # the kernel asks for at most max_pages pages (32 without FUSE_MAX_PAGES)
BUF_SIZE = MAX_READ + 64 * 1024  # >= FUSE_MIN_READ_BUFFER and header + write_in + max_write
TIME = 1_700_000_000  # fixed times: the attributes are the same on every GETATTR

IN_HEADER = struct.Struct('<IIQQIIIHH')  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct('<IiQ')  # len error unique
ATTR = struct.Struct('<QQQQQQIIIIIIIIII')  # struct fuse_attr, 88 bytes
READ_IN = struct.Struct('<QQII')  # fh offset size read_flags (the rest unused here)

MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(None, use_errno=True)


def die(code, msg):
    print(f'fuse_daemon: {msg}', file=sys.stderr, flush=True)
    os._exit(code)


PERIOD_BYTES = bytes((31 * i + 7 * (i >> 9)) & 255 for i in range(PERIOD))


def pattern(start, length):
    """Bytes [start, start + length) of the file (whole sectors: start and length are multiples of 512)."""
    reps = (start % PERIOD + length) // PERIOD + 1
    buf = bytearray((PERIOD_BYTES * reps)[start % PERIOD : start % PERIOD + length])
    first = start // SECTOR
    for k in range(length // SECTOR):
        struct.pack_into('<Q', buf, k * SECTOR, first + k)
    return buf


def attr(nodeid, size):
    if nodeid == ROOT_ID:
        return ATTR.pack(ROOT_ID, 0, 0, TIME, TIME, TIME, 0, 0, 0, 0o040755, 2, 0, 0, 0, 4096, 0)
    return ATTR.pack(DATA_ID, size, (size + 511) // 512, TIME, TIME, TIME, 0, 0, 0, 0o100444, 1, 0, 0, 0, 4096, 0)


def dirents(offset):
    """The root's entries from `offset` on, each struct fuse_dirent padded to 8 bytes; off is the next entry's index."""
    out = b''
    for i, (ino, name, dtype) in enumerate([(ROOT_ID, b'.', 4), (ROOT_ID, b'..', 4), (DATA_ID, b'data', 8)]):
        if i < offset:
            continue
        ent = struct.pack('<QQII', ino, i + 1, len(name), dtype) + name
        out += ent + b'\0' * (-len(ent) % 8)
    return out


def main():
    if len(sys.argv) != 4 or sys.argv[2] not in ('ok', 'hang-flush', 'eio-flush', 'hang-after-open'):
        die(2, 'usage: fuse_daemon.py MOUNTPOINT ok|hang-flush|eio-flush|hang-after-open SIZE')
    mnt, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mnt_c = os.fsencode(mnt)

    # Die with the parent (the test runner), detaching the mount on the way out.
    parent = os.getppid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def detach_and_exit(signum, frame):
        libc.umount2(mnt_c, MNT_DETACH)
        if os.getppid() != parent:  # orphaned: nobody is left to remove the mount point the parent made
            try:
                os.rmdir(mnt)
            except OSError:
                pass
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, detach_and_exit)
    signal.signal(signal.SIGINT, detach_and_exit)
    if os.getppid() != parent:
        os._exit(1)

    try:
        fd = os.open('/dev/fuse', os.O_RDWR)  # not inherited (O_CLOEXEC): only this process holds the connection
    except OSError as e:
        die(77, f'open /dev/fuse: {e.strerror}')
    opts = f'fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},allow_other'.encode()
    if libc.mount(b'dmaload-fuse', mnt_c, b'fuse', MS_NOSUID | MS_NODEV, opts) != 0:
        e = ctypes.get_errno()
        die(77, f'mount -t fuse {mnt}: {os.strerror(e)} ({errno.errorcode.get(e, e)})')

    buf = bytearray(BUF_SIZE)
    view = memoryview(buf)
    hung = False
    fh = 0

    def reply(unique, error=0, payload=b''):
        try:
            os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique) + payload)
        except OSError as e:
            # ENOENT: the request was interrupted or aborted meanwhile; nobody waits for this answer.
            if e.errno != errno.ENOENT:
                raise

    while True:
        try:
            n = os.readv(fd, [buf])
        except OSError as e:
            if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                continue
            if e.errno == errno.ENODEV:  # unmounted: the connection is gone
                os._exit(0)
            raise
        length, opcode, unique, nodeid, _uid, _gid, _pid, _extlen, _ = IN_HEADER.unpack_from(buf)
        arg = view[IN_HEADER.size : length]
        if hung or opcode in NO_REPLY:
            continue

        if opcode == INIT:
            major, minor, max_readahead, _flags = struct.unpack_from('<IIII', arg)
            if major != 7:
                die(1, f'kernel offers FUSE protocol {major}.{minor}; this daemon speaks 7.x')
            # struct fuse_init_out (64 bytes): no capability flags (no async reads, no writeback cache, no
            # readdirplus, no posix locks: the kernel handles those itself), max_write 4096, time_gran 1.
            init_out = struct.pack('<IIIIHHIIHHI28x', 7, min(minor, 38), max_readahead, 0, 16, 12, 4096, 1, 0, 0, 0)
            reply(unique, 0, init_out)
            print('ready', flush=True)
        elif opcode == LOOKUP:
            name = bytes(arg).split(b'\0', 1)[0]
            if nodeid == ROOT_ID and name == b'data':
                # struct fuse_entry_out: nodeid generation entry_valid attr_valid entry_nsec attr_nsec attr
                reply(unique, 0, struct.pack('<QQQQII', DATA_ID, 1, 0, 0, 0, 0) + attr(DATA_ID, size))
            else:
                reply(unique, errno.ENOENT)
        elif opcode == GETATTR:
            reply(unique, 0, struct.pack('<QII', 0, 0, 0) + attr(nodeid, size))  # attr_valid 0: never cached
        elif opcode == OPEN:
            if nodeid != DATA_ID:
                reply(unique, errno.EISDIR)
                continue
            if struct.unpack_from('<I', arg)[0] & os.O_ACCMODE != os.O_RDONLY:
                reply(unique, errno.EACCES)  # read-only file system without MS_RDONLY: refuse write opens here
                continue
            fh += 1
            reply(unique, 0, struct.pack('<QII', fh, 0, 0))  # open_flags 0: no FOPEN_KEEP_CACHE, no NOFLUSH
            if mode == 'hang-after-open':
                hung = True
        elif opcode == READ:
            _fh, offset, want, _ = READ_IN.unpack_from(arg)
            end = min(offset + want, size)
            if offset >= end:
                reply(unique, 0, b'')
            else:
                first = offset - offset % SECTOR
                block = pattern(first, (end - first + SECTOR - 1) // SECTOR * SECTOR)
                reply(unique, 0, bytes(block[offset - first : end - first]))
        elif opcode == FLUSH:
            if mode == 'hang-flush':
                continue
            reply(unique, errno.EIO if mode == 'eio-flush' else 0)
        elif opcode in (RELEASE, RELEASEDIR, ACCESS):
            reply(unique)
        elif opcode == OPENDIR:
            if nodeid != ROOT_ID:
                reply(unique, errno.ENOTDIR)
            else:
                fh += 1
                reply(unique, 0, struct.pack('<QII', fh, 0, 0))
        elif opcode == READDIR:
            _fh, offset, want, _ = READ_IN.unpack_from(arg)
            out = dirents(offset)
            # Whole entries only, as many as fit.
            cut = 0
            while cut < len(out):
                namelen = struct.unpack_from('<I', out, cut + 16)[0]
                step = (24 + namelen + 7) // 8 * 8
                if cut + step > want:
                    break
                cut += step
            reply(unique, 0, out[:cut])
        elif opcode == STATFS:
            # struct fuse_kstatfs: blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
            reply(unique, 0, struct.pack('<QQQQQIIII24x', (size + 4095) // 4096, 0, 0, 2, 0, 4096, 255, 4096, 0))
        elif opcode == DESTROY:
            reply(unique)
            os._exit(0)
        else:
            # GETXATTR, LISTXATTR, SETATTR, WRITE, LSEEK, POLL, IOCTL, ...: not implemented. (Never FLUSH:
            # ENOSYS to FLUSH would make the kernel stop sending it for good.)
            reply(unique, errno.ENOSYS)


if __name__ == '__main__':
    main()
