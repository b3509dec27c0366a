"""Real OpenSSH test hosts: one sshd per network namespace, joined by a bridge.

Each host is a namespace with a veth on a private bridge, its own address in a private /24, its
own sshd with a fresh ed25519 host key, a private /run and an empty /root (so no dotfiles slow
every command). Keys and known_hosts are generated per rig. Traffic goes only to addresses
inside these namespaces. ``stop()`` leaves nothing: no process, namespace, link or file.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

SSHD = "/usr/sbin/sshd"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@dataclass
class RigHost:
    name: str
    netns: str
    address: str
    host_key_pub: str
    proc: subprocess.Popen | None = None

    def exec(self, *argv: str, **kw) -> subprocess.CompletedProcess:
        """Run a command inside this host's namespace (as the test harness, not over SSH)."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], capture_output=True,
                              text=True, **kw)


class SshRig:
    def __init__(self, count: int = 2):
        self.count = count
        self.tag = f"pk{random.randrange(16**4):04x}"
        self.dir = tempfile.mkdtemp(prefix=f"pytest-kvm-rig-{self.tag}-")
        self.bridge = f"{self.tag}br"
        self.hosts: list[RigHost] = []
        self.key = os.path.join(self.dir, "id_ed25519")
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        self.net = self._free_subnet()

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        routes = sh("ip", "-4", "route", "show", "table", "all").stdout
        used = []
        for word in routes.split():
            try:
                used.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                pass
        for _ in range(100):
            net = ipaddress.ip_network(f"10.{random.randrange(200, 250)}."
                                       f"{random.randrange(256)}.0/24")
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
                return net
        raise RuntimeError("no free private /24 for the test rig")

    def _addr(self, i: int) -> str:
        return str(self.net.network_address + i)

    def start(self) -> SshRig:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key)
        shutil.copy(self.key + ".pub", os.path.join(self.dir, "authorized_keys"))
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self._addr(1)}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i in range(self.count):
            self.hosts.append(self._add_host(i))
        with open(self.known_hosts, "w") as f:
            for h in self.hosts:
                f.write(f"{h.address} {h.host_key_pub}\n")
        for h in self.hosts:
            self.wait_port(h.address, 22)

    def _add_host(self, i: int) -> RigHost:
        name, ns = f"host{i + 1}", f"{self.tag}-{i + 1}"
        veth, peer = f"{self.tag}v{i + 1}", f"{self.tag}p{i + 1}"
        addr = self._addr(i + 2)
        sh("ip", "netns", "add", ns)
        # Name lookups inside the namespace go to its own loopback, never to the outside.
        os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
        with open(f"/etc/netns/{ns}/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.1\n")
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", ns)
        sh("ip", "link", "set", veth, "master", self.bridge)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", peer)
        sh("ip", "-n", ns, "link", "set", peer, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        hdir = os.path.join(self.dir, name)
        os.makedirs(os.path.join(hdir, "home"))
        key = os.path.join(hdir, "ssh_host_ed25519_key")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
        pub = " ".join(open(key + ".pub").read().split()[:2])
        host = RigHost(name, ns, addr, pub)
        self._start_sshd(host)
        return host

    def _start_sshd(self, host: RigHost) -> None:
        hdir = os.path.join(self.dir, host.name)
        conf = os.path.join(hdir, "sshd_config")
        with open(conf, "w") as f:
            f.write(f"""ListenAddress {host.address}
HostKey {hdir}/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile {self.dir}/authorized_keys
UsePAM no
StrictModes no
MaxSessions 64
MaxStartups 64:30:128
PidFile none
Subsystem sftp internal-sftp
LogLevel ERROR
""")
        # `ip netns exec` gives a private mount namespace: /run and /root stay ours.
        script = (f"mount -t tmpfs tmpfs /run && mkdir -p /run/sshd && "
                  f"mount --bind {hdir}/home /root && exec {SSHD} -D -e -f {conf}")
        host.proc = subprocess.Popen(["ip", "netns", "exec", host.netns, "sh", "-c", script],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(hdir, "sshd.log"), "w"))

    def stop_sshd(self, host: RigHost) -> None:
        if host.proc and host.proc.poll() is None:
            host.proc.terminate()
            try:
                host.proc.wait(5)
            except subprocess.TimeoutExpired:
                host.proc.kill()
                host.proc.wait(5)

    def restart_sshd(self, host: RigHost) -> None:
        self.stop_sshd(host)
        self._start_sshd(host)
        self.wait_port(host.address, 22)

    @staticmethod
    def wait_port(addr: str, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((addr, port), 1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def inventory(self, extra: str = "", host_vars: dict[str, dict] | None = None) -> str:
        """An inventory text naming the rig's hosts (``host_vars``: extra keys per host)."""
        lines = ["[rig]"]
        for h in self.hosts:
            kv = " ".join(f"{k}={v}" for k, v in (host_vars or {}).get(h.name, {}).items())
            lines.append(f"{h.name} ansible_host={h.address} {kv}".rstrip())
        lines += ["", "[rig:vars]", "ansible_user=root",
                  f"ansible_ssh_private_key_file={self.key}",
                  f"kvm_known_hosts={self.known_hosts}", "kvm_workdir=" + self.workdir, extra]
        return "\n".join(lines) + "\n"

    @property
    def workdir(self) -> str:
        return os.path.join(self.dir, "work")

    def stop(self) -> None:
        for h in self.hosts:
            self.stop_sshd(h)
            # Anything still running in the namespace (a stray command) goes too.
            pids = sh("ip", "netns", "pids", h.netns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for i in range(self.count):
            sh("ip", "netns", "del", f"{self.tag}-{i + 1}", check=False)
            shutil.rmtree(f"/etc/netns/{self.tag}-{i + 1}", ignore_errors=True)
            sh("ip", "link", "del", f"{self.tag}v{i + 1}", check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this rig still exists (for the tests of the rig itself)."""
        out = []
        netns = sh("ip", "netns", "list").stdout
        out += [line.split()[0] for line in netns.splitlines() if line.startswith(self.tag)]
        links = sh("ip", "-o", "link").stdout
        out += [w.rstrip(":").split("@")[0] for w in links.split() if w.startswith(self.tag)]
        out += [p for p in (self.dir, *(f"/etc/netns/{self.tag}-{i + 1}"
                                       for i in range(self.count))) if os.path.exists(p)]
        return out
