"""Host layer: a KVM host's facts, sysfs and kernel modules, on top of a transport.

By job: ``facts`` (what a host is, what its QEMU offers, a PCI device), ``core`` (:class:`Host`:
commands, sysfs, modules, the checked work dir), ``owner`` (who owns a change), ``journal``
(every host setting changed, written down first, undone, replayed after a crash: :class:`Change`),
``leases`` (a resource held by one xdist worker at a time).
"""

from __future__ import annotations

from .core import (
    Host,
    UnsafeWorkdir,
)
from .facts import (
    Facts,
    PciDevice,
    PciFacts,
    QemuOffers,
    parse_facts,
    parse_qmp_replies,
    qemu_offers_from,
)
from .journal import (
    BDF,
    ENTRY_NAME,
    JOURNAL_DIR,
    UNDO_OPS,
    Change,
    HostChangeError,
    Journal,
    JournalError,
    list_owned,
    replay,
    replay_dead_journals,
    undo_argv,
)
from .leases import (
    Leases,
    LeaseTimeout,
)
from .owner import (
    Owner,
    controller_id,
    process_start,
)

__all__ = [
    "BDF", "Change", "ENTRY_NAME", "Facts", "Host", "HostChangeError", "JOURNAL_DIR",
    "Journal", "JournalError", "LeaseTimeout", "Leases", "Owner", "PciDevice", "PciFacts",
    "QemuOffers", "UNDO_OPS", "UnsafeWorkdir", "controller_id", "list_owned", "parse_facts",
    "parse_qmp_replies", "process_start", "qemu_offers_from", "replay", "replay_dead_journals",
    "undo_argv",
]
