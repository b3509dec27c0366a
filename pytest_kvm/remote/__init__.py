"""Shell code that runs on hosts, kept in files of its own (``*.sh`` beside this module).

Each script takes values only as positional arguments and is run as
``sh -c "$(script)" NAME ARG...``: nothing read from the inventory or a host is pasted into
its text. ``make lint`` checks every script with shellcheck.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def script(name: str) -> str:
    """The text of ``pytest_kvm/remote/<name>.sh``."""
    return resources.files(__name__).joinpath(f"{name}.sh").read_text(encoding="utf-8")


def argv(name: str, *args: str) -> list[str]:
    """The command that runs the script with these arguments ($0 is the script's name)."""
    return ["sh", "-c", script(name), name, *args]
