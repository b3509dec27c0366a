"""Host patterns as Ansible reads them: ranges (numeric with a stride, alphabetic), ports,
IPv6 addresses."""

from __future__ import annotations

import re
import string
from typing import Any

_NUM_RANGE = r"\[(?:[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_HEX_RANGE = r"\[(?:[0-9a-f]+:[0-9a-f]+)(?::[0-9]+)?\]"
_ALNUM_RANGE = r"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]"
_V6 = rf"(?:[0-9a-f]{{1,4}}|{_HEX_RANGE})"
_V4 = rf"(?:[01]?[0-9]{{1,2}}|2[0-4][0-9]|25[0-5]|{_NUM_RANGE})"
_LABEL = rf"(?:[\w]|{_ALNUM_RANGE})(?:[\w_-]|{_ALNUM_RANGE})*(?<![_-])"
_BRACKETED_PORT = re.compile(r"^\[(.+)\]:([0-9]+)$")
_HOST_PORT = re.compile(r"^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$")
_IPV4 = re.compile(rf"^(?:{_V4}\.){{3}}{_V4}$", re.I)
_IPV6 = re.compile(
    rf"^((?:{_V6}:){{7}}{_V6}|(?:{_V6}:){{1,6}}:|(?:{_V6}:)(?::{_V6}){{1,6}}|"
    rf"(?:{_V6}:){{2}}(?::{_V6}){{1,5}}|(?:{_V6}:){{3}}(?::{_V6}){{1,4}}|"
    rf"(?:{_V6}:){{4}}(?::{_V6}){{1,3}}|(?:{_V6}:){{5}}(?::{_V6}){{1,2}}|"
    rf"(?:{_V6}:){{6}}(?::{_V6})|:(?::{_V6}){{1,6}}|{_V6}?::|"
    rf"(?:0:){{6}}(?:{_V6}\.){{3}}{_V6}|::(?:ffff:)?(?:{_V6}\.){{3}}{_V6}|"
    rf"(?:0:){{5}}ffff:(?:{_V6}\.){{3}}{_V6})$", re.I)
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$", re.I | re.UNICODE)


def parse_address(address: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, an IPv6 address -> (host, port).

    Raises ValueError for what is no host name or address (the caller then keeps the text).
    """
    port = None
    for pattern in (_BRACKETED_PORT, _HOST_PORT):
        m = pattern.match(address)
        if m:
            address, port = m.group(1), int(m.group(2))
    if not any(p.match(address) for p in (_IPV4, _IPV6, _HOSTNAME)):
        raise ValueError(f"not a valid network host name: {address}")
    return address, port


def expand_pattern(pattern: str) -> tuple[list[str], int | None]:
    """A host pattern with optional port and ranges -> its host names and the port."""
    try:
        host, port = parse_address(pattern)
    except ValueError:
        host, port = pattern, None
    return (_expand_ranges(host) if "[" in host else [host]), port


def _expand_ranges(name: str) -> list[str]:
    """``web[01:10:3]-[a:c]`` -> web01-a ... (Ansible's host ranges: numeric with leading
    zeros and an optional stride, or alphabetic)."""
    parts = name.replace("[", "|", 1).replace("]", "|", 1).split("|")
    if len(parts) != 3:
        raise ValueError(f"host range in {name!r} is not closed: use [begin:end] or "
                         "[begin:end:step]")
    head, spec, tail = parts
    bounds = spec.split(":")
    if len(bounds) not in (2, 3):
        raise ValueError(f"host range [{spec}] must be begin:end or begin:end:step")
    begin, end = bounds[0] or "0", bounds[1]
    step = bounds[2] if len(bounds) == 3 else "1"
    if not end:
        raise ValueError(f"host range [{spec}] must specify an end value")
    width = None
    if begin[0] == "0" and len(begin) > 1:
        if len(begin) != len(end):
            raise ValueError(f"host range [{spec}]: begin and end must have the same width")
        width = len(begin)
    try:
        i_beg, i_end = string.ascii_letters.index(begin), string.ascii_letters.index(end)
    except ValueError:  # numeric
        try:
            seq: list[Any] = list(range(int(begin), int(end) + 1, int(step)))
        except ValueError:
            raise ValueError(f"host range [{spec}] must be numbers or single letters "
                             "(and a whole, non-zero step)") from None
    else:
        if i_beg > i_end:
            raise ValueError(f"host range [{spec}] must have begin <= end")
        if int(step) == 0:
            raise ValueError(f"host range [{spec}]: the step must not be 0")
        seq = list(string.ascii_letters[i_beg:i_end + 1:int(step)])
    out: list[str] = []
    for item in seq:
        text = str(item).zfill(width) if width else str(item)
        expanded = head + text + tail
        out.extend(_expand_ranges(expanded) if "[" in expanded else [expanded])
    return out
