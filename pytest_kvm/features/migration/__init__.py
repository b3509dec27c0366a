"""Live migration: a running guest moves to another QEMU (on another host, or the same one),
its workload keeps running, and the move is measured; and when a migration fails, the guest
lives through it where QEMU promises it does.

The workload is a counter in the guest (guest/beacon.c in its counter mode) that writes
"PKVM-COUNT <n> <pid> <uptime>" five times a second to a virtio-serial console and to a file
in guest memory. The file, which migrates with the guest, proves continuity: one PID, every
number once, in order. Beside it a heartbeat (beacon.c) writes "PKVM-BEAT <n>" to the same
console every BEAT_MS milliseconds of guest time. The controller reads the console of the
source and of the destination at once, both connected before the switch, and stamps each line
on its own monotonic clock as it arrives: the largest interval between consecutive beats
around the switch is the gap the guest lived through (its clock stops while it is paused),
resolved to BEAT_MS, next to QMP's downtime.

The package, by job: ``workload`` (the counter, the heartbeat reader, the dirtying load),
``job`` (a migration in flight), ``watchdog`` (what decides when one failed), ``migrate`` (one
migration over QMP, its stream and what it did), ``storage`` (shared storage, the NBD mirror),
``tls`` (the run's certificates), ``link`` (cutting a stream's link on purpose), ``failures``
(the failure paths), ``variants`` (every variant, declared once), ``run`` (a variant's hops,
checked by many tests).
"""

from __future__ import annotations

from .failures import FAILURES, Attempt, Failure
from .job import Job, Options
from .link import Cut, LinkDown, cuttable
from .migrate import (
    FIGURES,
    Migration,
    Stream,
    address_of,
    migrate,
    port,
    stream_to,
    wait_running,
)
from .run import Run
from .storage import (
    disk_node,
    finish_mirror,
    mirror_storage,
    serve_nbd,
    shared_storage,
    shared_storage_works,
)
from .tls import MigrationTls
from .variants import BY_NAME, VARIANTS, Variant, variant_names, variant_problem
from .watchdog import LinkStalled, MigrationError, MigrationUnsupported, NotConverging, Watchdog
from .workload import (
    BEAT_MS,
    COUNTER_LOG,
    DIRTY,
    DIRTY_FILE,
    LINE_RE,
    CounterLine,
    CounterWatch,
    counter_log,
    start_counter,
    start_dirtying,
    stop_dirtying,
)

# What each failure path measured, as figures (unit, which way is better).
FAILURE_FIGURES: dict[str, tuple[str, str]] = {
    "detect_ms": ("ms", "lower"), "recover_ms": ("ms", "lower"),
    "source_paused_ms": ("ms", "lower"), "guest_gap_ms": ("ms", "lower"),
}

__all__ = [
    "BEAT_MS", "BY_NAME", "COUNTER_LOG", "DIRTY", "DIRTY_FILE", "FAILURES", "FAILURE_FIGURES",
    "FIGURES", "LINE_RE", "VARIANTS", "Attempt", "CounterLine", "CounterWatch", "Cut", "Failure",
    "Job", "LinkDown", "LinkStalled", "Migration", "MigrationError", "MigrationTls",
    "MigrationUnsupported", "NotConverging", "Options", "Run", "Stream", "Variant",
    "address_of", "counter_log", "cuttable", "disk_node", "finish_mirror", "migrate",
    "mirror_storage", "port", "serve_nbd", "shared_storage", "shared_storage_works",
    "start_counter", "start_dirtying", "stop_dirtying", "stream_to", "variant_names",
    "variant_problem", "wait_running", "Watchdog",
]
