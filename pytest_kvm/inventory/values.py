"""The values of pytest-kvm's inventory keys: each parser types one value or raises
ValueError with the reason (the caller adds the key, file and line)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .. import registry

BDF_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


class Secret:
    """A password: its repr and str hide it; ``reveal()`` gives it to the code that logs in."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# -- value parsers (each raises ValueError with the reason) -----------------------------------
def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be text, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def _secret(value: Any) -> Secret:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
        raise ValueError("must be non-empty text (the value is not shown)")
    return Secret(str(value))


def _port(value: Any) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()):
        raise ValueError(f"must be an integer port (1-65535), got {value!r}")
    port = int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"must be a port between 1 and 65535, got {port}")
    return port


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("yes", "true", "1", "on", "y", "t"):
        return True
    if low in ("no", "false", "0", "off", "n", "f"):
        return False
    raise ValueError(f"must be yes or no, got {value!r}")


def _choice(*choices: str, aliases: dict[str, str] | None = None) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        value = str(value)
        value = (aliases or {}).get(value, value)
        if value not in choices:
            listed = (", ".join(choices[:-1]) + " or " if len(choices) > 1 else "") + choices[-1]
            raise ValueError(f"must be {listed}, got {value!r}")
        return value

    return parse


def _abspath(value: Any) -> str:
    value = _text(value)
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError("must not hold control characters (a newline, a tab...)")
    return value.rstrip("/") or "/"


def _device_path(value: Any) -> str:
    """A guest disk's device path, e.g. /dev/vda or /dev/disk/by-label/root: it goes on the
    guest's kernel command line, where a space would add a parameter."""
    value = _text(value)
    if not re.fullmatch(r"/dev/[A-Za-z0-9_.:+@-]+(/[A-Za-z0-9_.:+@=-]+)*", value):
        raise ValueError(f"must be a device path such as /dev/vda, got {value!r}")
    return value


def _address(value: Any) -> str:
    """An IP address or a DNS name (it becomes part of a QEMU migration URI)."""
    import ipaddress

    value = _text(value)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    if len(value) <= 253 and re.fullmatch(rf"{label}(?:\.{label})*\.?", value):
        return value
    raise ValueError(f"must be an IP address or a DNS name, got {value!r}")


def _link_name(value: Any) -> str:
    """A nested hosts' link name (it names files on the parent)."""
    value = _text(value)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", value):
        raise ValueError(f"must be a short name of letters, digits, _ and -, got {value!r}")
    return value


def _qemu_name(value: Any) -> str:
    """A QEMU machine type or CPU model name (it goes into -machine/-cpu and QMP)."""
    value = _text(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise ValueError(f"must be a QEMU name of letters, digits, '.', '_' and '-' (e.g. "
                         f"pc-q35-7.2, EPYC-v4), got {value!r}")
    return value


def _seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or number <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return number


def _whole(minimum: int, unit: str = "") -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not (isinstance(value, int) or str(value).isdigit()):
            raise ValueError(f"must be a whole number >= {minimum}{unit}, got {value!r}")
        if int(value) < minimum:
            raise ValueError(f"must be at least {minimum}{unit}, got {value}")
        return int(value)

    return parse


def _items(value: Any) -> list[str]:
    """A list, or a comma-separated string, of text items."""
    if isinstance(value, (list, tuple)):
        return [_text(v).strip() for v in value]
    return [v.strip() for v in _text(value).split(",") if v.strip()]


# Emulated PCI devices a nested host may get, and the options they may take: nothing that
# reaches the parent (a host device, a file, a socket, a ROM image read from a path).
L1_DEVICES = {
    "igb": (), "igbvf": (), "e1000e": (), "e1000": (), "rtl8139": (), "virtio-net-pci": (),
    "vmxnet3": (), "pci-testdev": (), "edu": (),
    "nvme": ("serial", "sriov_max_vfs", "sriov_vq_flexible", "sriov_vi_flexible",
             "max_ioqpairs", "msix_qsize", "num_queues"),
}


def _devices(value: Any) -> tuple[str, ...]:
    """``igb,e1000e,nvme:serial=n1`` -> ("igb", "e1000e", "nvme,serial=n1")."""
    items = tuple(v.replace(":", ",") for v in _items(value))
    for item in items:
        model, *opts = item.split(",")
        if model not in L1_DEVICES:
            raise ValueError(f"{model!r} is not an emulated device a nested host may get; "
                             f"use one of {', '.join(sorted(L1_DEVICES))}")
        for opt in opts:
            key, _, val = opt.partition("=")
            if key not in L1_DEVICES[model] or not re.fullmatch(r"[A-Za-z0-9_.-]+", val):
                allowed = ", ".join(L1_DEVICES[model]) or "none"
                raise ValueError(f"{model} option {opt!r} is not allowed (options: {allowed})")
    return items


def _commands(value: Any) -> tuple[str, ...]:
    """One shell command, or a list of them (a comma is part of a command, not a separator)."""
    listed = value if isinstance(value, (list, tuple)) else [value]
    commands = tuple(_text(v) for v in listed)
    if any("\x00" in c for c in commands):
        raise ValueError("must not hold a NUL character")
    return commands


def _suites(value: Any) -> tuple[str, ...]:
    items = tuple(_items(value))
    if items == ("none",):  # a host only other hosts use (a migration peer, an NFS server)
        return ()
    for item in items:
        if registry.get(item) is None:
            raise ValueError(f"names unknown suite {item!r}; known: "
                             f"{', '.join(registry.names())}")
    return items


def normalize_bdf(value: str) -> str:
    """``01:00.0`` -> ``0000:01:00.0``; raises ValueError for anything that is not a BDF."""
    match = BDF_RE.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a PCI address (expected e.g. 0000:01:00.0)")
    domain, bus, dev, fn = match.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def _bdf_list(value: Any) -> tuple[str, ...]:
    listed = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in listed):
        # YAML 1.1 reads an unquoted 0000:01:00.0 as a base-60 number (60.0)
        raise ValueError("was read as a number (YAML reads an unquoted 01:00.0 as base 60); "
                         'put each PCI address in quotes, e.g. "0000:01:00.0"')
    items = _items(value)
    if not items:
        raise ValueError("must list at least one PCI address")
    return tuple(normalize_bdf(v) for v in items)
