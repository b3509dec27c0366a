"""Live migration: a running guest moves to another QEMU (on another host, or the same one),
its workload keeps running, and the move is measured.

The workload is a counter in the guest that writes "PKVM-COUNT <n> <pid> <uptime>" five times a
second to a virtio-serial console and to a file in guest memory. The file, which migrates with
the guest, proves continuity: one PID, every number once, in order. Beside it a heartbeat
(guest/beacon.c) writes "PKVM-BEAT <n>" to the same console every BEAT_MS milliseconds of guest
time. The controller reads the console of the source and of the destination at once, both
connected before the switch, and stamps each line on its own monotonic clock as it arrives:
the largest interval between consecutive beats around the switch is the gap the guest lived
through (its clock stops while it is paused), resolved to BEAT_MS, next to QMP's downtime.

The package, by job: ``workload`` (the counter, the heartbeat reader, the dirtying load),
``migrate`` (one migration over QMP and its stream), ``storage`` (shared storage, the NBD
mirror), ``tls`` (the run's certificates), ``run`` (a variant's hops, checked by many tests).
"""

from __future__ import annotations

from .migrate import (
    FIGURES,
    Migration,
    MigrationError,
    MigrationUnsupported,
    Stream,
    address_of,
    migrate,
    port,
    stream_to,
    wait_running,
)
from .run import DIRTYING, VARIANT_OPTIONS, VARIANTS, Run, variant_problem
from .storage import (
    disk_node,
    finish_mirror,
    mirror_storage,
    serve_nbd,
    shared_storage,
    shared_storage_works,
)
from .tls import MigrationTls, tls_creds
from .workload import (
    BEAT_MS,
    COUNTER,
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

__all__ = [
    "BEAT_MS", "COUNTER", "COUNTER_LOG", "DIRTY", "DIRTYING", "DIRTY_FILE", "FIGURES",
    "LINE_RE", "VARIANTS", "VARIANT_OPTIONS", "CounterLine", "CounterWatch", "Migration",
    "MigrationError", "MigrationTls", "MigrationUnsupported", "Run", "Stream", "address_of",
    "counter_log", "disk_node", "finish_mirror", "migrate", "mirror_storage", "port",
    "serve_nbd", "shared_storage", "shared_storage_works", "start_counter", "start_dirtying",
    "stop_dirtying", "stream_to", "tls_creds", "variant_problem", "wait_running",
]
