"""Exceptions shared by every layer. Each carries a one-line message meant for the user."""


def printable(text: str, keep: str = "") -> str:
    """``text`` with control characters (and any other unprintable ones) escaped as Python
    writes them (``\\x1b``, ``\\n``): what a host or a guest printed, shown to a person or in a
    report, cannot drive their terminal. ``keep``: characters left as they are (e.g. newline
    in a multi-line log)."""
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


class KvmError(Exception):
    """Base class for every error pytest-kvm raises on purpose."""


class InventoryError(KvmError):
    """The inventory file is wrong; the message names file:line and the fix."""

    def __init__(self, path: str, line: int | None, message: str):
        self.path, self.line, self.message = path, line, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


class TransportError(KvmError):
    """A host could not be reached or a command could not be run on it."""


class HostUnreachable(TransportError):
    pass


class AuthenticationFailed(TransportError):
    pass


class HostKeyMismatch(TransportError):
    pass


class UnknownHostKey(TransportError):
    pass


class CommandFailed(TransportError):
    def __init__(self, host: str, command: str, result):
        self.host, self.command, self.result = host, command, result
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        detail = ("\n" + "\n".join(tail)) if tail else ""
        super().__init__(f"{host}: `{command}` exited {result.status}{detail}")


class CommandTimeout(TransportError):
    def __init__(self, host: str, command: str, timeout: float, result=None):
        self.host, self.command, self.timeout, self.result = host, command, timeout, result
        super().__init__(f"{host}: `{command}` timed out after {timeout:g} s (killed)")
