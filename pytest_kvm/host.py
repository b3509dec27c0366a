"""Host layer: a KVM host's facts, sysfs and kernel modules, on top of a transport."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import remote
from .errors import GUEST_MAX_REPLY, CommandTimeout, KvmError, TransportError, printable
from .inventory import HostEntry
from .transport import Transport, forwarded

log = logging.getLogger("pytest_kvm.host")



@dataclass(frozen=True)
class PciDevice:
    """A PCI function on a host, as sysfs shows it: from the facts probe, or now (host.pci)."""

    bdf: str
    present: bool
    vendor: str = ""  # 0x8086
    device: str = ""
    driver: str = ""  # bound driver ('' when none)
    iommu_group: str = ""
    totalvfs: int | None = None  # SR-IOV (None: not a PF)
    numvfs: int | None = None
    override: str = ""  # driver_override
    pci_class: str = ""  # 0x020000
    vf_device: str = ""  # sriov_vf_device: the device ID of its VFs
    autoprobe: str = ""  # sriov_drivers_autoprobe

    @property
    def vendor_device(self) -> str:
        return f"{self.vendor.removeprefix('0x')}:{self.device.removeprefix('0x')}"

    @property
    def vf_vendor_device(self) -> str:
        """vendor:device of its VFs."""
        return f"{self.vendor.removeprefix('0x')}:{self.vf_device.removeprefix('0x')}"

    @property
    def is_bridge(self) -> bool:
        return self.pci_class.startswith("0x0604")


PciFacts = PciDevice  # (the facts probe's name for it)


@dataclass(frozen=True)
class Facts:
    kernel: str = ""
    arch: str = ""
    cpu_vendor: str = ""
    cpu_model: str = ""
    virt_flag: str = ""
    cpus: int = 0
    mem_kb: int = 0
    modules: frozenset[str] = frozenset()
    nested: dict[str, str] = field(default_factory=dict)
    dev_kvm: bool = False
    iommu_groups: int = 0
    socat: str = ""
    qemu_path: str = ""
    qemu_version: str = ""
    qemu_devices: frozenset[str] = frozenset()
    ovmf_code: str = ""
    ovmf_vars: str = ""
    pci: dict[str, PciFacts] = field(default_factory=dict)

    @property
    def kvm_module(self) -> str:
        return next((m for m in ("kvm_intel", "kvm_amd") if m in self.modules), "")

    @property
    def hardware_kvm(self) -> bool:
        """Usable hardware KVM: vmx/svm, kvm_intel/kvm_amd loaded and /dev/kvm.

        /dev/kvm alone is not enough (a PVM-style kvm gives /dev/kvm with no vmx/svm, and
        ordinary guests hang under it).
        """
        return bool(self.virt_flag and self.kvm_module and self.dev_kvm)

    @property
    def qemu_version_tuple(self) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in self.qemu_version.split("."))
        except ValueError:
            return ()

    def why_no_kvm(self) -> str:
        if not self.virt_flag:
            extra = " (PVM-style kvm)" if "kvm_pvm" in self.modules else ""
            return f"no vmx/svm in /proc/cpuinfo{extra}"
        if not self.kvm_module:
            mod = "kvm_intel" if self.virt_flag == "vmx" else "kvm_amd"
            return f"{mod} is not loaded (modprobe {mod})"
        if not self.dev_kvm:
            return "/dev/kvm is missing"
        return ""


@dataclass(frozen=True)
class QemuOffers:
    """What a host's QEMU offers a guest that must migrate: its version, its machine types and
    its named CPU models, each with the features it lacks under the host's accelerator
    (QMP query-machines and query-cpu-definitions)."""

    version: str
    machines: frozenset[str]
    cpus: dict[str, tuple[str, ...]]  # model -> unavailable features
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> the model it stands for


def parse_qmp_replies(text: str) -> list:
    """The ``return`` of each QMP reply in a stdio session's output, in order; an error
    reply raises KvmError with QEMU's words."""
    replies = []
    for raw in text.splitlines():
        if not raw.startswith("{"):
            continue
        reply = json.loads(raw)
        if "error" in reply:
            raise KvmError(f"QEMU: {reply['error'].get('desc', reply['error'])}")
        if "return" in reply:
            replies.append(reply["return"])
    return replies


def qemu_offers_from(version: dict, machines: list, cpus: list) -> QemuOffers:
    """QemuOffers from the replies to query-version, query-machines, query-cpu-definitions."""
    q = version["qemu"]
    return QemuOffers(
        version=f"{q['major']}.{q['minor']}.{q['micro']}",
        machines=frozenset(m["name"] for m in machines),
        cpus={c["name"]: tuple(c.get("unavailable-features") or ()) for c in cpus},
        aliases={c["name"]: c["alias-of"] for c in cpus if c.get("alias-of")})


def parse_facts(text: str) -> Facts:
    values: dict[str, str] = {}
    pci: dict[str, PciFacts] = {}
    for line in text.splitlines():
        if line.startswith("pci "):
            parts = line.split()
            bdf, kv = parts[1], dict(p.split("=", 1) for p in parts[2:] if "=" in p)
            if kv.get("missing"):
                pci[bdf] = PciFacts(bdf, False)
            else:
                pci[bdf] = PciFacts(
                    bdf, True, kv.get("vendor", ""), kv.get("device", ""), kv.get("driver", ""),
                    kv.get("iommu_group", ""),
                    int(kv["totalvfs"]) if kv.get("totalvfs") else None,
                    int(kv["numvfs"]) if kv.get("numvfs") else None)
        elif "=" in line:
            key, _, value = line.partition("=")
            values[key] = value.strip()

    def num(key: str) -> int:
        try:
            return int(values.get(key, "0") or 0)
        except ValueError:
            return 0

    return Facts(
        kernel=values.get("kernel", ""),
        arch=values.get("arch", ""),
        cpu_vendor=values.get("cpu_vendor", ""),
        cpu_model=values.get("cpu_model", ""),
        virt_flag=values.get("virt_flag", ""),
        cpus=num("cpus"),
        mem_kb=num("mem_kb"),
        modules=frozenset(m for m in values.get("modules", "").split(",") if m),
        nested={k.removeprefix("nested_"): v for k, v in values.items()
                if k.startswith("nested_")},
        dev_kvm=values.get("dev_kvm") == "1",
        iommu_groups=num("iommu_groups"),
        socat=values.get("socat", ""),
        qemu_path=values.get("qemu_path", ""),
        qemu_version=values.get("qemu_version", ""),
        qemu_devices=frozenset(d for d in values.get("qemu_devices", "").split(",") if d),
        ovmf_code=values.get("ovmf_code", ""),
        ovmf_vars=values.get("ovmf_vars", ""),
        pci=pci,
    )



# -- who owns a change: this controller's pytest process --------------------------------------
def controller_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return Path(path).read_text().strip() or socket.gethostname()
        except OSError:
            continue
    return socket.gethostname()


def process_start(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass(frozen=True)
class Owner:
    """Who started a guest: this controller's pytest process (to find leftovers of dead runs)."""

    run_id: str
    controller: str
    pid: int
    start: str

    @classmethod
    def current(cls, run_id: str) -> Owner:
        pid = int(os.environ.get("PYTEST_KVM_OWNER_PID", os.getpid()))
        return cls(run_id, controller_id(), pid, process_start(pid))

    def line(self) -> str:
        return f"{self.run_id} {self.controller} {self.pid} {self.start}"

    @classmethod
    def parse(cls, line: str) -> Owner | None:
        parts = line.split()
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])

    def is_dead(self) -> bool:
        """Only for owners on this controller: is that pytest process gone?"""
        return self.controller == controller_id() and process_start(self.pid) != self.start



# -- the journal: every host setting changed, written down before it is changed -------------
JOURNAL_DIR = "journal"
# Names pytest-kvm gives run dirs and journals (run id, sequence or worker): anything else
# listed in the work dir is left alone.
ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,120}")
_BDF = r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"
_DRIVER = r"[A-Za-z0-9_.-]{0,64}"
# The undo operations a journal may hold: a script of ours (pytest_kvm/remote) and the form
# of each of its arguments. Replay runs nothing else: stored text is never run by a shell.
UNDO_OPS: dict[str, tuple[str, ...]] = {
    "undo-pci-driver": (_BDF, _DRIVER, r"\(null\)|" + _DRIVER),
    "undo-sriov-pf": (_BDF, r"[0-9]{1,4}", r"[01]"),
}


class JournalError(KvmError):
    pass


def undo_argv(op: str, args: list) -> list[str]:
    """The command for a journalled undo operation, once its arguments are checked."""
    forms = UNDO_OPS.get(op)
    if forms is None or not isinstance(args, list) or len(args) != len(forms) or not all(
            isinstance(a, str) and re.fullmatch(f, a) for a, f in zip(args, forms, strict=False)):
        raise JournalError(f"not an undo operation pytest-kvm writes: {op!r} {args!r}"[:200])
    return remote.argv(op, *args)


def list_owned(host: Host, where: str, kind: str) -> list[tuple[str, Owner]]:
    """(path, owner) of the run dirs (kind "dir") or journals ("file") in a directory of the
    host's work dir; names pytest-kvm would not give, and unreadable owners, are skipped."""
    base = f"{host.workdir}/{where}"
    r = host.run(remote.argv("list-owned", base, kind), check=False, timeout=60)
    fields = r.stdout.split("\0")
    out = []
    for name, owner_line in zip(fields[0::2], fields[1::2], strict=False):
        owner = Owner.parse(owner_line)
        if ENTRY_NAME.fullmatch(name) and name not in (".", "..") and owner is not None:
            out.append((f"{base}/{name}", owner))
    return out


class Journal:
    """An append-only file on the host: one undo operation per change, written before the
    change is made, and a ``done`` line when it was undone. A run that died leaves undo lines
    without ``done``: the next run (or --kvm-cleanup) replays them, newest first."""

    def __init__(self, host: Host, owner: Owner, worker: str):
        self.host = host
        self.path = f"{host.workdir}/{JOURNAL_DIR}/{owner.run_id}-{worker}.log"
        self.owner = owner
        self._n = 0
        self._open = 0
        self._lock = threading.Lock()

    def _append(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"))
        self.host.run(remote.argv("journal-append", line, self.path, self.owner.line()),
                      timeout=30)

    def record(self, what: str, op: str, args: list[str]) -> int:
        undo_argv(op, args)  # only what replay would accept is written
        with self._lock:
            self._n += 1
            self._open += 1
            entry = self._n
        self._append({"id": entry, "what": what, "op": op, "args": args})
        return entry

    def done(self, entry: int) -> None:
        self._append({"done": entry})
        with self._lock:
            self._open -= 1
            finished = self._open == 0
        if finished:  # nothing left to undo: no journal left behind
            self.host.run(["rm", "-f", "--", self.path], check=False, timeout=30)


def replay(host: Host, journal_file: str) -> list[str]:
    """Undo what a dead run's journal says it changed and did not undo; remove the file."""
    text = host.run(["cat", "--", journal_file], check=False, timeout=30).stdout
    records = []
    for line in text.splitlines()[1:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    finished = {r["done"] for r in records if "done" in r}
    undone = []
    for record in reversed([r for r in records if "op" in r and r.get("id") not in finished]):
        what = str(record.get("what", "?"))[:200]
        try:
            argv = undo_argv(record["op"], record.get("args"))
            if not host.names_device(record["args"][0]):
                raise JournalError(f"{record['args'][0]} is not a device the inventory names "
                                   f"for {host.name} (nor a VF of one)")
        except JournalError as exc:
            log.warning("%s: %s: refused: %s", host.name, journal_file, exc)
            undone.append(f"{what}: REFUSED ({exc})")
            continue
        result = host.run(argv, become=True, check=False, timeout=120)
        log.info("%s: replayed a dead run's undo: %s: %s", host.name, what,
                 "undone" if result.ok else "FAILED")
        undone.append(f"{what}: {'undone' if result.ok else 'FAILED ' + result.stdout.strip()}")
    host.run(["rm", "-f", "--", journal_file], check=False, timeout=30)
    return undone


def replay_dead_journals(host: Host, current_run: str | None) -> list[str]:
    """Replay every journal on the host whose owner (on this controller) is gone."""
    undone = []
    for path, owner in list_owned(host, JOURNAL_DIR, "file"):
        if owner.run_id != current_run and owner.is_dead():
            undone += replay(host, path)
    return undone


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

    def forwarded_host(self, entry: HostEntry, port: int, key_file: str,
                       known_hosts: str) -> Host:
        """Another host whose sshd is forwarded to a port on this host's loopback."""
        return Host(entry, forwarded(entry.name, self.transport, port, key_file, known_hosts,
                                     entry.config.workdir))

    # -- sysfs and modules ------------------------------------------------------------------
    def read(self, path: str, default: str | None = None) -> str:
        result = self.run(["cat", path], check=default is None, timeout=30)
        return result.stdout.strip() if result.ok else default

    def write(self, path: str, value: str) -> None:
        self.run(remote.argv("write", value, path), become=True, timeout=60)

    def pci(self, bdf: str) -> PciDevice:
        """A PCI function's state now (driver, IDs, class, IOMMU group, SR-IOV counts), in
        one round trip; ``present`` is False when the host has no such device."""
        if not re.fullmatch(_BDF, bdf):
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


# -- a change made to a host, and how to undo it --------------------------------------------
class HostChangeError(KvmError):
    pass


@dataclass
class Change:
    """A setting changed on a host; ``restore()`` undoes it once (journalled by ``record``)."""

    host: Host
    restored: bool = field(default=False, kw_only=True)
    journal_entry: int | None = field(default=None, kw_only=True)

    def undo_op(self) -> tuple[str, list[str]]:
        """The undo operation (one of UNDO_OPS) and its arguments."""
        raise NotImplementedError

    def undo_command(self) -> list[str]:
        return undo_argv(*self.undo_op())

    def describe(self) -> str:
        raise NotImplementedError

    def record(self) -> None:
        """Write the undo on the host's journal, before the change is made."""
        self.journal_entry = self.host.record_undo(self.describe(), *self.undo_op())

    def restore(self) -> None:
        if self.restored:
            return
        r = self.host.run(self.undo_command(), become=True, check=False, timeout=120)
        if not r.ok:
            raise self.error(f"{self.host.name}: could not restore {self.describe()}: "
                             f"{(r.stdout + r.stderr).strip()}")
        self.restored = True
        self.host.undone(self.journal_entry)

    error = HostChangeError


# -- leases: exclusive use of a host resource across the xdist workers of one run -----------
class LeaseTimeout(KvmError):
    pass


class Leases:
    """File locks on the controller, shared by the processes of one run (same run id).

    ``hold(names)`` takes them in sorted order, so that two workers wanting overlapping sets
    (a migration pair, a PF and its VF guest) can never deadlock; released on exit.
    """

    def __init__(self, run_id: str, timeout: float = 3600.0):
        import tempfile

        self.dir = os.path.join(tempfile.gettempdir(), f"pytest-kvm-leases-{run_id}")
        self.timeout = timeout

    def remove(self) -> None:
        """Remove the run's lock files (by the run's main process, once its workers ended)."""
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def hold(self, *names: str):
        import contextlib

        from filelock import FileLock, Timeout

        @contextlib.contextmanager
        def held():
            locks = []
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            st = os.lstat(self.dir)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not os.path.isdir(self.dir):
                raise LeaseTimeout(f"lease dir {self.dir} is not this user's private directory "
                                   "(another user made it first?); remove it")
            try:
                for name in sorted(set(names)):
                    lock = FileLock(os.path.join(self.dir, _lease_file(name)))
                    try:
                        lock.acquire(timeout=self.timeout)
                    except Timeout as exc:
                        raise LeaseTimeout(f"{name} stayed leased by another worker for "
                                           f"{self.timeout:g} s") from exc
                    locks.append(lock)
                yield
            finally:
                for lock in reversed(locks):
                    lock.release()

        return held()


def _lease_file(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) + ".lock"
