"""Exceptions shared by every layer. Each carries a one-line message meant for the user."""


def printable(text: str, keep: str = "") -> str:
    """``text`` with control characters (and any other unprintable ones) escaped as Python
    writes them (``\\x1b``, ``\\n``): what a host or a guest printed, shown to a person or in a
    report, cannot drive their terminal. ``keep``: characters left as they are (e.g. newline
    in a multi-line log)."""
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


class PrintableLogs:
    """A logging filter: a record's message with control characters escaped (newlines and
    tabs kept), so a guest's or host's text quoted in a log line cannot drive the terminal
    of whoever reads the captured log."""

    def filter(self, record) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format is the handler's to report, not ours
            return True
        shown = printable(message, keep="\n\t")
        if shown != message:
            record.msg, record.args = shown, ()
        return True


def escape_logs() -> None:
    """Put PrintableLogs on every pytest-kvm logger (once each)."""
    import logging

    for name in list(logging.Logger.manager.loggerDict):
        if name == "pytest_kvm" or name.startswith("pytest_kvm."):
            logger = logging.getLogger(name)
            if not any(isinstance(f, PrintableLogs) for f in logger.filters):
                logger.addFilter(PrintableLogs())


class KvmError(Exception):
    """Base class for every error pytest-kvm raises on purpose. Its message is shown with
    control characters escaped (newlines and tabs kept): it may quote what a host or guest
    printed."""

    def __init__(self, *args):
        super().__init__(*(printable(a, keep="\n\t") if isinstance(a, str) else a
                           for a in args))


class OutputTooLong(KvmError):
    """A guest (untrusted) sent more than a channel takes in one line or one reply."""


# What a guest's channel takes: a reply (a command's whole output) and one line of it. The
# agent's replies carry the output base64-encoded (qemu-ga caps it at 16 MiB a stream).
GUEST_MAX_REPLY = 48 * 1024 * 1024
GUEST_MAX_LINE = 4 * 1024 * 1024


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
