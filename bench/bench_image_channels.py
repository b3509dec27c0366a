"""image_boot_to_command_<channel>: a guest on `make image`'s Debian image, from start until
its first command has run, for each command channel (the guest agent; SSH with no agent; the
serial console with neither), against the agent's boot in the same run: a fallback that
waits for a deadline shows as a ratio far above 1. One boot per channel (a Debian boot under
TCG is about 1.5 minutes)."""

from __future__ import annotations

import secrets
import tempfile
import time

from pytest_kvm.guest import CloudInit, Disk, GuestSpec, Owner, distro
from pytest_kvm.guest.cloudinit import ed25519_keypair
from pytest_kvm.guest.spec import DATA_NET, Nic
from pytest_kvm.inventory import parse
from pytest_kvm.lab import KvmSession, keypair


def _boot(session, host, image: str, channel: str, keydir: str) -> float:
    key, pub = keypair(keydir)
    ci = CloudInit(user="tester", password=secrets.token_urlsafe(12), ssh_keys=(pub,),
                   host_key=ed25519_keypair(), hostname=f"bench-{channel}")
    spec = GuestSpec(name=f"bench-{channel}", memory=1024, smp=2, disks=(Disk(image=image),),
                     nics=(Nic(net=DATA_NET),), cloud_init=ci, agent=channel == "agent",
                     ssh_key=key if channel in ("agent", "ssh") else None,
                     firmware=distro.firmware_of(image))
    start = time.perf_counter()
    guest = session.start_guest(host, spec, "bench")
    try:
        guest.run("true")
        elapsed = time.perf_counter() - start
        if guest.channel != channel:
            raise RuntimeError(f"{channel} boot took the {guest.channel} channel")
        return elapsed
    finally:
        guest.stop()


def run() -> list[dict]:
    image = str(distro.build())
    session = KvmSession(parse("[lab]\nlocalhost ansible_connection=local\n"),
                         Owner.current("benchimg" + str(int(time.time()))[-2:]))
    try:
        host = session.host("localhost")
        with tempfile.TemporaryDirectory(prefix="bench-keys-") as keydir:
            times = {c: _boot(session, host, image, c, keydir)
                     for c in ("agent", "ssh", "console")}
    finally:
        session.close()
    base = times["agent"]
    return [{"name": f"image_boot_to_command_{c}", "value": round(t, 1), "unit": "s",
             "baseline": round(base, 1), "ratio": round(t / base, 3)}
            for c, t in times.items()]
