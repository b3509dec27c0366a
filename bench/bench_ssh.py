"""ssh_cmd_rtt: median round trip of one command through the SSH transport, against OpenSSH
with a ControlMaster connection to the same real sshd test host, in the same run."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time

from pytest_kvm.inventory import parse
from pytest_kvm.transport import for_entry

from rig import SshRig

N = 200


def _median(fn, n: int = N) -> float:
    for _ in range(10):  # warm-up
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run() -> list[dict]:
    rig = SshRig(count=1).start()
    try:
        inv = parse(rig.inventory())
        transport = for_entry(inv.hosts["host1"], inv)
        ours = _median(lambda: transport.run(["true"]))
        transport.close()

        host = rig.hosts[0].address
        sock = os.path.join(tempfile.mkdtemp(dir=rig.dir), "cm")
        base = ["ssh", "-q", "-i", rig.key, "-o", f"UserKnownHostsFile={rig.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-S", sock,
                f"root@{host}"]
        subprocess.run([*base[:-1], "-M", "-o", "ControlPersist=60", "-fN", base[-1]],
                       check=True, timeout=30)
        try:
            baseline = _median(lambda: subprocess.run([*base, "true"], check=True, timeout=30))
        finally:
            subprocess.run([*base[:-1], "-O", "exit", base[-1]], capture_output=True, timeout=30)
    finally:
        rig.stop()
    ms = 1000.0
    return [{"name": "ssh_cmd_rtt", "value": round(ours * ms, 3), "unit": "ms",
             "baseline": round(baseline * ms, 3), "ratio": round(ours / baseline, 3)}]
