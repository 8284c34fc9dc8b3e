"""The one exception type of the client, so that callers can branch on a stable code instead of a message."""


class DmaloadError(Exception):
    """A failed request. `code` is stable: the server's own (ERR_...), the client's (ERR_SHARE_REPLY,
    ERR_SHARE_UNTRUSTED_SERVER, ERR_INVALID_MODEL, ...) or an errno name (ENOENT)."""

    def __init__(self, code, message, errno_=None, syscall=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.errno = errno_
        self.syscall = syscall
