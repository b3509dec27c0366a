"""The migration variants, each declared once (:class:`Variant`): its name, how it migrates,
the load it runs, the storage it needs, how many hops, what proves it is that variant, and
for a failure path the :class:`~.failures.Failure` it goes through first. :class:`~.run.Run`,
the suites' parametrisation and the report all read these declarations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .failures import FAILURES, Failure
from .job import Options
from .migrate import Migration
from .watchdog import MIB

Proof = Callable[[list[Migration]], str | None]  # None when the hops show the variant


def _storage(kind: str) -> Proof:
    return lambda hops: (None if hops[-1].storage.startswith(kind)
                         else f"storage was {hops[-1].storage}")


def _capability(name: str) -> Proof:
    return lambda hops: (None if name in hops[-1].capabilities.split(",")
                         else f"{name} was off ({hops[-1].capabilities})")


def _ping_pong(hops: list[Migration]) -> str | None:
    return None if len(hops) >= 3 and len(hops) % 2 else (
        f"{len(hops)} hops, not 3 or more ending on the peer")


def _postcopy(hops: list[Migration]) -> str | None:
    return None if hops[-1].postcopy_active_seen else "the source never reported postcopy-active"


def _multifd(hops: list[Migration]) -> str | None:
    last = hops[-1]
    return None if last.multifd_bytes > 0 and "multifd" in last.capabilities else (
        f"multifd-bytes {last.multifd_bytes} over {last.multifd_channels} channels")


def _xbzrle(hops: list[Migration]) -> str | None:
    last = hops[-1]
    if last.xbzrle_cache_size > 0 and last.xbzrle_cache_miss + last.xbzrle_pages > 0:
        return None
    return (f"xbzrle cache {last.xbzrle_cache_size} bytes, {last.xbzrle_cache_miss} misses, "
            f"{last.xbzrle_pages} delta pages: no page went through it")


def _then_completed(hops: list[Migration]) -> str | None:
    """A failure path's proof is its attempt's (Failure.problem); its hops then completed."""
    return None if hops and hops[-1].status == "completed" else "no migration completed after"


@dataclass(frozen=True)
class Variant:
    """``storage``: "shared" (kvm_shared_storage, else the variant is skipped), "copy" (an
    overlay per host, mirrored over NBD) or "any" (shared where there is some). ``dirtying``:
    MiB a memory-dirtying loop in the guest rewrites while it migrates (the load ends once the
    hops are done). ``forward``: hops there at least (each but the last followed by one
    back)."""

    name: str
    proof: Proof
    options: Options = Options()
    dirtying: int = 0
    storage: str = "any"
    forward: int = 1
    failure: Failure | None = None

    def problem(self, hops: list[Migration]) -> str | None:
        """None when the hops show what makes the variant; else what is missing."""
        if not hops:
            return f"{self.name}: no migration completed"
        problem = self.proof(hops)
        return None if problem is None else f"{self.name}: {problem}"


VARIANTS: tuple[Variant, ...] = (
    Variant("shared-storage", _storage("shared"), storage="shared"),
    Variant("copy-storage", _storage("copy"), storage="copy"),
    Variant("ping-pong", _ping_pong, forward=2),
    # dirtying is what auto-converge must overcome; postcopy's and xbzrle's only need pages
    # sent again
    Variant("dirty-memory", _capability("auto-converge"), Options(auto_converge=True),
            dirtying=64),
    Variant("postcopy", _postcopy, Options(postcopy=True), dirtying=16),
    Variant("multifd", _multifd, Options(multifd_channels=4)),
    Variant("xbzrle", _xbzrle, Options(xbzrle_cache=64 * MIB, auto_converge=True),
            dirtying=16),
    *(Variant(f.name, _then_completed, failure=f) for f in FAILURES),
)
BY_NAME = {v.name: v for v in VARIANTS}


def variant_names(failures: bool = False) -> list[str]:
    """The variants' names: the migrations that succeed, or (``failures``) the failure
    paths."""
    return [v.name for v in VARIANTS if (v.failure is not None) == failures]


def variant_problem(variant: str, hops: list[Migration]) -> str | None:
    """``BY_NAME[variant].problem(hops)``."""
    return BY_NAME[variant].problem(hops)
