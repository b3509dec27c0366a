"""Host layer: a KVM host's facts, sysfs and kernel modules, on top of a transport."""

from __future__ import annotations

import functools
import json
import logging
import re

from .. import remote
from ..errors import GUEST_MAX_REPLY, CommandTimeout, KvmError, TransportError, printable
from ..inventory import HostEntry
from ..transport import Transport, forwarded
from .facts import Facts, PciDevice, QemuOffers, parse_facts, parse_qmp_replies, qemu_offers_from
from .journal import BDF, Journal

log = logging.getLogger("pytest_kvm.host")


def _unsafe_fields(rest: str) -> list[str]:
    """(path, owner uid, mode) of workdir.sh's "unsafe <path> <uid> <mode>" (a path may hold
    spaces)."""
    return (rest.rsplit(" ", 2) + ["?", "?"])[:3]


class UnsafeWorkdir(KvmError):
    """The work dir, or a directory above it, could be written by another user."""


class Host:
    """A KVM host from the inventory: facts, sysfs, modules. Guests are started on it."""

    def __init__(self, entry: HostEntry, transport: Transport):
        self.entry = entry
        self.transport = transport
        self.name = entry.name
        self.journal: Journal | None = None  # attached by the session

    def record_undo(self, what: str, op: str, args: list[str]) -> int | None:
        """Write down how to undo a change, before making it (crash safety)."""
        return self.journal.record(what, op, args) if self.journal else None

    def undone(self, entry: int | None) -> None:
        if self.journal and entry is not None:
            self.journal.done(entry)

    def __repr__(self) -> str:  # stable across runs (Allure history ids)
        return f"Host({self.name!r})"

    def run(self, cmd, **kw):
        return self.transport.run(cmd, **kw)

    @property
    def down(self) -> str | None:
        """Why the host is unreachable, when its connection was lost and not yet retried."""
        return self.transport.down

    def unreachable(self) -> str | None:
        """None when the host answers a command now; else why not (a short probe)."""
        try:
            self.run(["true"], timeout=15)
        except TransportError as exc:
            if isinstance(exc, CommandTimeout):
                return f"{self.name}: no answer to a command within 15 s"
            return str(exc)
        return None

    @property
    def qemu(self) -> str:
        return self.entry.config.qemu

    @property
    def named_devices(self) -> tuple[str, ...]:
        """Every PCI address the inventory lets the suites touch on this host."""
        return tuple(sorted(set(self.entry.config.passthrough)
                            | set(self.entry.config.sriov_pf)))

    def names_device(self, bdf: str) -> bool:
        """Whether the inventory lets pytest-kvm touch the PCI function ``bdf`` (a checked
        address): named, or a VF of a named PF (as sysfs says now)."""
        if bdf in self.named_devices:
            return True
        r = self.run(["readlink", "--", f"/sys/bus/pci/devices/{bdf}/physfn"], check=False,
                     timeout=30)
        return r.ok and r.stdout.strip().rsplit("/", 1)[-1] in self.named_devices

    @functools.cached_property
    def facts(self) -> Facts:
        result = self.run(remote.argv("host-probe", *self.named_devices),
                          env={"QEMU": self.qemu}, timeout=60)
        return parse_facts(result.stdout)

    def qemu_qmp(self, *commands: dict) -> list:
        """The replies of this host's QEMU, under its accelerator and with no machine, to
        QMP commands (``{"execute": ..., "arguments": ...}``), in order; KvmError naming what
        failed."""
        r = self.run(remote.argv("qemu-qmp", self.qemu, self.accel,
                                 *(json.dumps(c) for c in commands)), timeout=90, check=False)
        what = ", ".join(c["execute"] for c in commands)
        try:
            replies = parse_qmp_replies(r.stdout)[1:len(commands) + 1]
        except ValueError as exc:
            raise KvmError(f"{self.name}: {self.qemu} answered {what} with no JSON: {exc}"
                           ) from exc
        except KvmError as exc:
            raise KvmError(f"{self.name}: {self.qemu} (-accel {self.accel}), {what}: {exc}"
                           ) from exc
        if len(replies) != len(commands):
            raise KvmError(f"{self.name}: {self.qemu} (-accel {self.accel}) answered "
                           f"{len(replies)} of {len(commands)} QMP commands ({what}): "
                           f"{r.stderr.strip()[-300:]}")
        return replies

    @functools.cached_property
    def qemu_offers(self) -> QemuOffers:
        """Machine types and CPU models this host's QEMU offers under its accelerator."""
        replies = self.qemu_qmp({"execute": "query-version"}, {"execute": "query-machines"},
                                {"execute": "query-cpu-definitions"})
        offers = qemu_offers_from(*replies)
        log.info("%s: QEMU %s offers %d machine types, %d CPU models (%d usable under %s)",
                 self.name, offers.version, len(offers.machines), len(offers.cpus),
                 sum(1 for u in offers.cpus.values() if not u), self.accel)
        return offers

    def cpu_model_features(self, models: list[str]) -> dict[str, frozenset[str]]:
        """The features each named CPU model turns on under this host's accelerator (QMP
        query-cpu-model-expansion, full; one QEMU for all)."""
        replies = self.qemu_qmp(*({"execute": "query-cpu-model-expansion", "arguments": {
            "type": "full", "model": {"name": m}}} for m in models))
        return {m: frozenset(k for k, v in reply["model"]["props"].items() if v is True)
                for m, reply in zip(models, replies, strict=True)}

    @property
    def accel(self) -> str:
        """kvm or tcg: the inventory's kvm_accel, or kvm only where hardware KVM is usable."""
        wanted = self.entry.config.accel
        if wanted != "auto":
            return wanted
        return "kvm" if self.facts.hardware_kvm else "tcg"

    def summary(self) -> str:
        f = self.facts
        kvm = "yes" if f.hardware_kvm else f"no ({f.why_no_kvm()})"
        qemu = f"QEMU {f.qemu_version}" if f.qemu_path else "no QEMU"
        nested = ",".join(f"{m}={v}" for m, v in sorted(f.nested.items())) or "-"
        return (f"{self.name}: kernel {f.kernel}, {f.cpu_vendor or '?'}, {f.cpus} CPUs, "
                f"hardware KVM {kvm}, nested {nested}, accel {self.accel}, {qemu}, "
                f"IOMMU groups {f.iommu_groups}")

    def require_qemu_device(self, device: str) -> str | None:
        """None when QEMU on this host has the device, else a skip reason."""
        f = self.facts
        if not f.qemu_path:
            return f"{self.name}: {self.qemu} not found; install QEMU (qemu-system-x86)"
        if device not in f.qemu_devices:
            return (f"{self.name}: QEMU {f.qemu_version} has no -device {device}; "
                    "install a QEMU that has it")
        return None

    # -- what the guest layer needs of a host ----------------------------------------------
    @functools.cached_property
    def workdir(self) -> str:
        """The work dir (run dirs, journals, upload cache), made 0700 on first use and checked
        like OpenSSH's StrictModes: it and every directory above it belong to the connecting
        user or root and nobody else can write them. Otherwise nothing is used there: no
        sweep, no journal replay, no cached file."""
        wanted = self.entry.config.workdir or ""
        r = self.run(remote.argv("workdir", wanted), check=False, timeout=30)
        word, _, rest = r.stdout.strip().partition(" ")
        if r.ok and word == "ok" and rest.startswith("/"):
            log.info("%s: work dir %s", self.name, rest)
            self.transport.workdir = rest
            return rest
        shown = wanted or "the default work dir (/var/tmp/pytest-kvm-<uid>)"
        fix = ("remove it (what another user left inside would stay if you made it yours), "
               "or set kvm_workdir to a directory only you can write")
        if word == "unsafe":
            path, uid, mode = _unsafe_fields(rest)
            raise UnsafeWorkdir(
                f"{self.name}: work dir {shown} is not safe: {printable(path)} belongs to uid "
                f"{uid} with mode {mode}, so another user could plant files that pytest-kvm "
                f"would run as root; {fix}")
        if word == "planted":
            raise UnsafeWorkdir(
                f"{self.name}: work dir {shown} is not safe: it holds {printable(rest)}, which is "
                f"another user's, a link, or writable by others (pytest-kvm makes none of "
                f"those); {fix}")
        raise UnsafeWorkdir(f"{self.name}: cannot use work dir {shown}: "
                            f"{printable((rest or r.stderr).strip()[:200])}")

    def shared_dir_problem(self, path: str) -> str | None:
        """None when ``path`` (kvm_shared_storage) can hold this run's disks: it and every
        directory above it belong to the connecting user or root and nobody else can write
        them, unless root's and sticky (like /tmp); else why not, with the fix."""
        r = self.run(remote.argv("workdir", path, "shared"), check=False, timeout=30)
        word, _, rest = r.stdout.strip().partition(" ")
        if r.ok and word == "ok":
            return None
        if word == "unsafe":
            where, uid, mode = _unsafe_fields(rest)
            return (f"{self.name}: shared storage {printable(path)} is not safe: "
                    f"{printable(where)} belongs to uid {uid} with mode {mode}, so another "
                    f"user could replace a disk a guest runs on; make it root's and sticky "
                    f"(chmod 1777) or writable by you alone (chmod go-w)")
        return (f"{self.name}: cannot use shared storage {printable(path)}: "
                f"{printable((rest or r.stderr).strip()[:200])}")

    def put_cached(self, local: str) -> str:
        self.workdir  # noqa: B018 - checked before anything is cached there
        return self.transport.put_cached(local)

    def open_stream(self, argv: list[str]):
        return self.transport.open_stream(argv)

    def connect_unix(self, path: str):
        """A stream to a unix socket on the host (a guest's console or QMP)."""
        if not self.facts.socat:
            raise KvmError(f"{self.name}: socat not found; install it (apt-get install socat)")
        folder, _, name = path.rpartition("/")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise KvmError(f"{self.name}: not a socket name pytest-kvm uses: {name!r}")
        # socat reads ',' and ':' in an address as its own syntax: the directory (which holds
        # the work dir, any path) is never part of the address, only our socket's name.
        return self.transport.open_stream(remote.argv("socat-unix", folder, name))

    def forwarded_ssh(self, name: str, port: int, key_file: str, known_hosts: str,
                      user: str) -> Transport:
        """SSH to a port forwarded on this host's loopback (a guest's sshd), through it; a
        command's output is bounded (the guest is untrusted)."""
        transport = forwarded(name, self.transport, port, key_file, known_hosts, user=user)
        transport.max_output = GUEST_MAX_REPLY
        return transport

    def forward(self, entry: HostEntry, port: int, key_file: str,
                known_hosts: str) -> Transport:
        """SSH to another host whose sshd is forwarded to a port on this host's loopback."""
        return forwarded(entry.name, self.transport, port, key_file, known_hosts,
                         entry.config.workdir)

    # -- sysfs and modules ------------------------------------------------------------------
    def read(self, path: str, default: str | None = None) -> str:
        result = self.run(["cat", path], check=default is None, timeout=30)
        return result.stdout.strip() if result.ok else default

    def write(self, path: str, value: str) -> None:
        self.run(remote.argv("write", value, path), become=True, timeout=60)

    def pci(self, bdf: str) -> PciDevice:
        """A PCI function's state now (driver, IDs, class, IOMMU group, SR-IOV counts), in
        one round trip; ``present`` is False when the host has no such device."""
        if not re.fullmatch(BDF, bdf):
            raise KvmError(f"{self.name}: {bdf!r} is not a PCI address (0000:01:00.0)")
        r = self.run(remote.argv("pci-state", bdf), check=False, timeout=30)
        if r.status == 3:
            return PciDevice(bdf, False)
        if not r.ok:
            raise KvmError(f"{self.name}: reading {bdf} from sysfs failed: "
                           f"{(r.stdout + r.stderr).strip()}")
        v = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

        def count(key: str) -> int | None:
            return int(v[key]) if v.get(key, "").isdigit() else None

        return PciDevice(bdf, True, v.get("vendor", ""), v.get("device", ""),
                         v.get("driver", ""), v.get("iommu_group", ""),
                         count("sriov_totalvfs"), count("sriov_numvfs"), v.get("override", ""),
                         v.get("class", ""), v.get("sriov_vf_device", ""),
                         v.get("sriov_drivers_autoprobe", ""))

    def module_loaded(self, module: str) -> bool:
        return self.run(["test", "-d", f"/sys/module/{module}"], check=False, timeout=30).ok
