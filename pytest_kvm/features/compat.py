"""Migration-safe guests: the machine type and CPU model both ends of a migration accept.

A guest that moves between hosts of two QEMU versions (a rolling upgrade, or its rollback)
must be started with a versioned machine type both QEMUs have (the unversioned ``q35`` is
each QEMU's newest, and a newer one does not load into an older QEMU) and a named CPU model
both offer with every feature (``max`` and ``host`` are whatever each end's QEMU and CPU
give: the guest's CPU would change under it). As libvirt and OpenStack pin them: the newest
versioned machine type of the spec's family both QEMUs offer, and of the named CPU models
both can run in full, the one with the most features; or what the inventory pins
(``kvm_machine``, ``kvm_migration_cpu``). The CPU model is started with ``enforce``: a QEMU
that cannot give every feature refuses to start instead of silently dropping it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ..errors import KvmError
from ..host import Host

log = logging.getLogger("pytest_kvm.compat")

# Versioned machine types by family: pc-q35-10.0, pc-i440fx-7.2
MACHINE_FAMILIES = {"q35": "pc-q35", "pc": "pc-i440fx"}
# Models that are not one CPU: each end's own (host, max) or an empty frame (base)
NOT_A_MODEL = frozenset({"host", "max", "base"})


class NoCommonModel(KvmError):
    """The pair has no machine type or CPU model both ends accept (a precise skip reason)."""


@dataclass(frozen=True)
class PairModel:
    """What a migrating guest is started with on both ends, and why."""

    machine: str
    cpu: str
    versions: tuple[str, str]  # (source QEMU, destination QEMU)
    chosen_by: str  # "inventory" or "both QEMUs" (per item: machine, cpu)

    @property
    def cpu_option(self) -> str:
        """The -cpu value: the model, enforced, without the virtualization extensions (a
        migrating guest runs no guests of its own)."""
        return f"{self.cpu},enforce,-svm,-vmx"

    def describe(self) -> str:
        return (f"machine {self.machine}, CPU {self.cpu} (QEMU {self.versions[0]} -> "
                f"{self.versions[1]}; {self.chosen_by})")


def _version_key(name: str, prefix: str) -> tuple[int, ...] | None:
    match = re.fullmatch(re.escape(prefix) + r"-(\d+)\.(\d+)", name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _who(host: Host) -> str:
    return f"{host.name} (QEMU {host.qemu_offers.version}, {host.qemu})"


def _pinned(src: Host, dst: Host, key: str, field: str) -> str | None:
    """The inventory's pinned value for the pair; both hosts must agree where both say."""
    values = {h.name: getattr(h.entry.config, field) for h in (src, dst)}
    said = {v for v in values.values() if v}
    if len(said) > 1:
        raise NoCommonModel(f"{src.name} and {dst.name} pin different {key}: "
                            + ", ".join(f"{n}={v}" for n, v in values.items()))
    return said.pop() if said else None


def choose_machine(src: Host, dst: Host, family: str = "q35") -> tuple[str, str]:
    """(machine type, who chose it) for a guest migrating between the two hosts."""
    pinned = _pinned(src, dst, "kvm_machine", "machine")
    if pinned:
        lacking = [_who(h) for h in dict.fromkeys((src, dst)) if
                   pinned not in h.qemu_offers.machines]
        if lacking:
            raise NoCommonModel(f"kvm_machine={pinned}: not offered by {' and '.join(lacking)}")
        return pinned, "inventory"
    prefix = MACHINE_FAMILIES.get(family, family)
    common = src.qemu_offers.machines & dst.qemu_offers.machines
    versioned = [(k, m) for m in common if (k := _version_key(m, prefix))]
    if not versioned:
        raise NoCommonModel(f"no versioned {prefix}-X.Y machine type offered by both "
                            f"{_who(src)} and {_who(dst)}")
    return max(versioned)[1], "both QEMUs"


def choose_cpu(src: Host, dst: Host) -> tuple[str, str]:
    """(CPU model, who chose it): a named model both QEMUs run with every feature."""
    ends = list(dict.fromkeys((src, dst)))
    pinned = _pinned(src, dst, "kvm_migration_cpu", "migration_cpu")
    if pinned:
        problems = []
        for h in ends:
            offers = h.qemu_offers
            if pinned not in offers.cpus:
                problems.append(f"{_who(h)} has no CPU model {pinned}")
            elif offers.cpus[pinned]:
                lacks = offers.cpus[pinned]
                more = f" and {len(lacks) - 6} more" if len(lacks) > 6 else ""
                problems.append(f"{_who(h)} lacks {', '.join(lacks[:6])}{more} of "
                                f"{pinned} under {h.accel}")
        if problems:
            raise NoCommonModel(f"kvm_migration_cpu={pinned}: " + "; ".join(problems))
        return pinned, "inventory"
    usable = None
    for h in ends:  # concrete models (not aliases) with no unavailable feature, on every end
        offers = h.qemu_offers
        mine = {name for name, lacks in offers.cpus.items()
                if not lacks and name not in NOT_A_MODEL and name not in offers.aliases}
        usable = mine if usable is None else usable & mine
    if not usable:
        raise NoCommonModel(f"no named CPU model that both {_who(src)} and {_who(dst)} run "
                            f"with every feature (under {src.accel} and {dst.accel})")
    # The richest: most features on (the source's expansion; a versioned model is the same
    # on every QEMU that has it). Ties: the later name (Westmere-v2 over Westmere-v1).
    counts = {name: len(features) for name, features in
              src.cpu_model_features(sorted(usable)).items()}
    best = max(counts, key=lambda name: (counts[name], name))
    log.info("%s -> %s: CPU models both run in full: %s; chose %s (%d features)", src.name,
             dst.name, ", ".join(f"{n} ({c})" for n, c in sorted(counts.items())), best,
             counts[best])
    return best, "both QEMUs"


def pair_model(src: Host, dst: Host, family: str = "q35") -> PairModel:
    """The machine type and CPU model for a guest migrating src -> dst (and back).
    NoCommonModel names both hosts, their QEMU versions and what is missing."""
    machine, by_machine = choose_machine(src, dst, family)
    cpu, by_cpu = choose_cpu(src, dst)
    chosen = (by_machine if by_machine == by_cpu
              else f"machine: {by_machine}, CPU: {by_cpu}")
    model = PairModel(machine, cpu, (src.qemu_offers.version, dst.qemu_offers.version),
                      chosen)
    log.info("%s -> %s: %s", src.name, dst.name, model.describe())
    return model


def another_machine(host: Host, machine: str) -> str:
    """A machine type of ``machine``'s family that ``host`` offers and ``machine`` is not (the
    newest older one, else the oldest newer one): a destination started with it refuses the
    source's stream. NoCommonModel when the host offers no other."""
    prefix = machine.rsplit("-", 1)[0] if _version_key(machine, machine.rsplit("-", 1)[0]) \
        else MACHINE_FAMILIES.get(machine, machine)
    mine = _version_key(machine, prefix) or (0, 0)
    others = sorted((k, m) for m in host.qemu_offers.machines
                    if (k := _version_key(m, prefix)) and m != machine)
    older = [m for k, m in others if k < mine]
    if older or others:
        return older[-1] if older else others[0][1]
    raise NoCommonModel(f"{_who(host)} offers no {prefix}-X.Y machine type but {machine}")
