"""Read-only shared mappings of received fds, as one contiguous view whose memory lives as long as any view of it.

One part (a memfd, or a single dma-buf): an mmap.mmap, or for a memfd of 2 MiB or more the ctypes range below placed
at a multiple of 2 MiB (the server's huge folios are then mapped whole: a GiB touched in ms instead of a tenth of a
second). Several dma-bufs: one reserved range with each part mapped over its slice (MAP_FIXED, through ctypes, since
the mmap module cannot place a mapping), so that a tensor straddling two parts is still one contiguous view, as in
the Node client. Either way nothing unmaps memory that a view still uses: an mmap.mmap refuses to close while
exported, and the ctypes region is unmapped by its finalizer, which runs only when the last view of it is gone.
"""
import ctypes
import errno
import mmap
import os

PAGE = mmap.PAGESIZE
HUGE = 2 << 20  # a PMD's span on x86-64 and arm64 (4 KiB pages)
_MAP_FIXED = 0x10  # Linux, every architecture
_MAP_FAILED = ctypes.c_void_p(-1).value
_libc = None


def round_up(n):
    return (n + PAGE - 1) // PAGE * PAGE


def _calls():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        mmap_, munmap = libc.mmap, libc.munmap
        mmap_.restype = ctypes.c_void_p
        mmap_.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        munmap.restype = ctypes.c_int
        munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc = (mmap_, munmap)
    return _libc


def _mmap_failed(what):
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def _unmap_region(region):
    try:
        _calls()[1](ctypes.addressof(region), ctypes.sizeof(region))
    except Exception:  # interpreter shutdown: the process is going anyway
        pass


def _readonly_bytes(obj):
    """A read-only memoryview of `obj` with format 'B' (ctypes exports '<B', which memoryview cannot index)."""
    view = memoryview(obj)
    if view.format != "B":
        try:
            view = view.cast("B")
        except (TypeError, ValueError):  # an older memoryview that cannot cast from '<B': slicing and buffers still work
            pass
    return view.toreadonly()


def map_single(fd, size):
    """(owner, view): an mmap.mmap of the first `size` bytes of `fd`, shared and read-only, and a view of it."""
    # A hugetlb memfd (`dmaload serve --huge-pages hugetlb`; its block size is the huge page's) is mapped in whole
    # huge pages: the kernel refuses to unmap part of one, and mmap.close() would leave the mapping behind.
    st = os.fstat(fd)
    length = size
    if st.st_blksize > mmap.PAGESIZE:
        length = min(st.st_size, -(-size // st.st_blksize) * st.st_blksize)
    elif size >= HUGE:
        owner, view = map_parts([fd], [(0, size)], align=HUGE)
        return owner, view[:size]
    m = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    view = _readonly_bytes(m)
    return m, view if length == size else view[:size]


def map_parts(fds, parts, align=PAGE):
    """(owner, view): each (offset, size) part's fd mapped shared and read-only at its offset of one reserved range
    whose address is a multiple of `align`. The range is unmapped once the last view of it is gone."""
    capacity = round_up(parts[-1][0] + parts[-1][1])
    mmap_, munmap = _calls()
    # PROT_NONE: only a reservation, filled part by part below; over-reserved by `align`, the ends trimmed
    extra = align - PAGE if align > PAGE else 0
    base = mmap_(None, capacity + extra, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if base is None or base == _MAP_FAILED:
        raise _mmap_failed(f"mmap of a {capacity}-byte range")
    addr = -(-base // align) * align if extra else base
    if addr > base:
        munmap(base, addr - base)
    if base + extra > addr:
        munmap(addr + capacity, base + extra - addr)
    try:
        for fd, (offset, size) in zip(fds, parts):
            if size:
                r = mmap_(addr + offset, round_up(size), mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
                if r is None or r == _MAP_FAILED:
                    raise _mmap_failed(f"mmap of the part at {offset}")
        region_type = type("_Region", (ctypes.c_ubyte * capacity,), {"__del__": _unmap_region})
        region = region_type.from_address(addr)
    except BaseException:
        munmap(addr, capacity)
        raise
    return region, _readonly_bytes(region)


MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+; the mmap module names it from Python 3.13
_madvise = None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        f = ctypes.CDLL(None, use_errno=True).madvise
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _madvise = f
    return _madvise


def page_ranges(ranges, limit):
    """[start, end) byte ranges rounded out to whole pages (and clipped to `limit`, page-rounded), sorted, with
    ranges that touch or overlap merged: the fewest madvise() calls that cover them."""
    out = []
    for start, end in sorted((s, e) for s, e in ranges if e > s):
        lo, hi = start // PAGE * PAGE, min(round_up(end), round_up(limit))
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        elif hi > lo:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def populate(owner, ranges, size):
    """Makes the pages of `ranges` ([start, end) offsets in the mapping `owner` of `size` bytes) present in this
    process's page tables, one madvise(MADV_POPULATE_READ) per merged range, instead of a page fault per page on
    first touch. Returns the bytes populated, or None where the kernel cannot (before 5.14, or a mapping it refuses:
    EINVAL). Other failures raise OSError."""
    done = 0
    for lo, hi in page_ranges(ranges, size):
        while True:
            try:
                if isinstance(owner, mmap.mmap):
                    owner.madvise(MADV_POPULATE_READ, lo, hi - lo)
                else:
                    if _libc_madvise()(ctypes.addressof(owner) + lo, hi - lo, MADV_POPULATE_READ) != 0:
                        e = ctypes.get_errno()
                        raise OSError(e, f"madvise(MADV_POPULATE_READ): {os.strerror(e)}")
                break
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN):
                    continue
                if e.errno == errno.EINVAL:
                    return None
                raise
        done += hi - lo
    return done


def close_owner(owner):
    """Unmaps now when no view is left; otherwise the mapping goes with the last view (never before it)."""
    if isinstance(owner, mmap.mmap):
        try:
            owner.close()
        except BufferError:  # views are alive: the mmap closes when they are gone
            pass


def errno_name(e):
    return errno.errorcode.get(e.errno or 0, "ERR_SHARE_REPLY")
