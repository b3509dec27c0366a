"""migration_tls: what TLS (the default between hosts) costs a migration: median total time of
a micro guest's migration between two real sshd hosts in network namespaces over TLS (the
run's x509 credentials, peers verified), against plain TCP (kvm_migration_tls=no), the same
guest hopping back and forth, the two kinds alternating, in the same run."""

from __future__ import annotations

import statistics

from pytest_kvm.features import migration as mig
from pytest_kvm.guest import GuestSpec, Owner
from pytest_kvm.inventory import parse
from pytest_kvm.lab import KvmSession

from rig import SshRig

HOPS = 6  # per kind
SPEC = GuestSpec(name="bench-tls", serial=True, shell=True, memory=256)


def run() -> list[dict]:
    rig = SshRig(count=2).start()
    session = None
    try:
        session = KvmSession(parse(rig.inventory()), Owner.current("benchtls"))
        hosts = [session.host("host1"), session.host("host2")]
        tls = mig.MigrationTls(sorted({mig.address_of(h) for h in hosts}))
        times: dict[str, list[int]] = {"tls": [], "tcp": []}
        guest = session.start_guest(hosts[0], SPEC, "tls-0")
        mig.start_dirtying(guest, 16)  # pages to send again, as a working guest has
        for i in range(2 * HOPS):
            kind = ("tls", "tcp")[i % 2]
            to = hosts[(i + 1) % 2]
            dest = session.start_guest(to, SPEC.with_(incoming="defer"), f"tls-{i + 1}",
                                       wait=False)
            stream = mig.stream_to(guest.host, dest, tls if kind == "tls" else None, "migrate")
            result = mig.migrate(guest, dest, stream, timeout=300, auto_converge=True)
            times[kind].append(result.total_time_ms)
            guest.stop()
            guest = dest
        guest.stop()
        tls.close()
    finally:
        if session is not None:
            session.close()
        rig.stop()
    ours, plain = statistics.median(times["tls"]), statistics.median(times["tcp"])
    print(f"migration total time, ms: TLS {times['tls']}, plain TCP {times['tcp']}")
    return [{"name": "migration_tls", "value": ours, "unit": "ms", "baseline": plain,
             "ratio": round(ours / plain, 3)}]
