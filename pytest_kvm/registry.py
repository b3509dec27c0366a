"""The suites, each declared once: its name and the shape of its parametrisation.

Both readers of a suite's name use this one declaration: the inventory (``kvm_suites`` must
name declared suites; a host that does not say takes part in all of them) and the plugin (a
test module marked ``@pytest.mark.kvm_suite(name)`` is parametrised by its suite's shape). A
module marked with a name that is not declared fails the run with a collection error naming
the file and the fix, instead of silently running on no host.

A project adds a suite of its own in one place, a ``conftest.py`` beside it::

    from pytest_kvm.registry import Suite, register
    register(Suite("mysuite", "host"))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Shape = Literal["host", "pair", "device"]


@dataclass(frozen=True)
class Suite:
    """``host``: once per host that takes part; ``pair``: once per (host, its migration peer);
    ``device``: once per (host, PCI address) the inventory names under ``devices``."""

    name: str
    shape: Shape = "host"
    devices: str | None = None  # the inventory key naming a "device" suite's devices

    def __post_init__(self) -> None:
        if not self.name or self.name == "none" or "," in self.name:
            raise ValueError(f"suite name {self.name!r}: a word other than 'none', no commas")
        if self.shape not in ("host", "pair", "device"):
            raise ValueError(f"suite {self.name!r}: shape must be host, pair or device")
        if (self.shape == "device") != (self.devices is not None):
            raise ValueError(f"suite {self.name!r}: devices (an inventory key) goes with "
                             "shape='device', and only with it")


_SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    """Declare a suite; declaring the same suite again is harmless, another one by the same
    name is an error."""
    known = _SUITES.setdefault(suite.name, suite)
    if known != suite:
        raise ValueError(f"suite {suite.name!r} is already declared as {known}")
    return suite


def get(name: str) -> Suite | None:
    return _SUITES.get(name)


def names() -> tuple[str, ...]:
    """Every declared suite, in the order declared."""
    return tuple(_SUITES)


for _suite in (Suite("virtio"), Suite("virtio-data"),
               Suite("passthrough", "device", "kvm_passthrough"),
               Suite("sriov", "device", "kvm_sriov_pf"),
               Suite("migration", "pair"), Suite("nested")):
    register(_suite)
