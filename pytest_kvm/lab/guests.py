"""Guests of a test or a module: started on the session's hosts, stopped at the end of
their scope (also after a failure), a dead one revived in place for a rerun; a host's distro
image (kvm_guest_image) given to the guests that do not bring their own."""

from __future__ import annotations

import contextlib
import logging
import secrets
import shlex
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from .. import reporting
from ..errors import KvmError
from ..guest import CloudInit, Disk, Guest, GuestSpec, distro
from ..guest.cloudinit import ed25519_keypair
from ..guest.launch import safe_name
from ..host import Host
from .nested import keypair

log = logging.getLogger("pytest_kvm.lab")

if TYPE_CHECKING:
    from .session import KvmSession


class GuestFactory:
    """Starts guests; stops every one of them at the end of its scope, also after a failure.

    With --kvm-keep-failed, guests of a failed test are left running and their console
    command is printed instead.
    """

    def __init__(self, session: KvmSession, default_host: Host | None, label: str,
                 failed: Callable[[], bool] = lambda: False):
        self.session = session
        self.default_host = default_host
        self.label = label
        self.failed = failed  # did a test of this factory's scope fail (for --kvm-keep-failed)
        self.guests: list[Guest] = []

    def __call__(self, spec: GuestSpec | None = None, host: Host | None = None,
                 wait: bool = True, **changes) -> Guest:
        host = host or self.default_host
        if host is None:
            raise KvmError("guest_factory needs a host: use kvm_host in the test or pass host=")
        spec = (spec or GuestSpec()).with_(**changes) if changes else (spec or GuestSpec())
        self.clear_strays(host)
        with reporting.step(f"provision and boot {spec.name} on {host.name}"):
            guest = self.session.start_guest(
                host, with_host_image(spec, host, self.session), self.label, wait)
        self.guests.append(guest)
        return guest

    def clear_strays(self, host: Host) -> None:
        """Before a boot: this run's stray guests on the host removed (a guest nobody stops
        any more would starve every check after it), named in the report with the host's
        load."""
        removed, load = self.session.strays(host)
        title = f"{host.name}: load {load or 'unknown'}" + (
            f", {len(removed)} stray guest(s) of this run removed" if removed else "")
        with reporting.step(title):
            if removed:
                reporting.attach_text(f"stray guests removed on {host.name}",
                                      "\n".join(removed))

    @contextlib.contextmanager
    def scoped(self):
        """A factory for one piece of work in this one's scope (a migration variant): every
        guest it started is stopped when the work ends, and at once when it fails, so that a
        rerun never meets the failed attempt's guests. Under --kvm-keep-failed a failure's
        guests (or those of a scope whose checks failed) are handed to this factory instead,
        which keeps them to its end as it keeps a failed test's."""
        child = GuestFactory(self.session, self.default_host, self.label, self.failed)
        try:
            yield child
        except BaseException:
            self._end(child, True)
            raise
        self._end(child, self.failed())

    def _end(self, child: GuestFactory, failed: bool) -> None:
        if failed and self.session.keep_failed:
            self.guests += [g for g in child.guests if not g.stopped]
            child.guests.clear()
            return
        try:
            child.finish(False)
        except KvmError as exc:  # (the next boot's stray check removes what is left)
            log.warning("stopping a scope's guests: %s", exc)

    def revive(self, guest: Guest) -> Guest:
        """A fresh guest (same host, same spec, a new QEMU) in place of a dead one, which is
        stopped; the dead guest's object becomes the fresh guest, so every fixture and test
        that holds it meets the fresh one: for a rerun on a host with kvm_reruns, whose tests
        share a module guest."""
        try:
            guest.stop()
        except KvmError:
            pass  # it is gone already, or the sweep of the next run removes it
        with reporting.step(f"provision and boot {guest.spec.name} on {guest.host.name} "
                            "again (the previous one died)"):
            fresh = self.session.start_guest(guest.host, guest.spec, self.label)
        guest.take_over(fresh)  # (whoever holds the dead one: the test, its fixtures)
        return guest

    @contextlib.contextmanager
    def held(self, spec: GuestSpec | None = None, host: Host | None = None, **changes):
        """A guest for the life of the fixture that holds it, stopped when that fixture ends::

            @pytest.fixture(scope="module")
            def my_guest(kvm_host, module_guest_factory):
                with module_guest_factory.held(GuestSpec(...), host=kvm_host) as guest:
                    yield guest

        pytest ends a module fixture that depends on ``kvm_host`` when the host parameter
        changes (its tests are grouped by parameters of module scope, so one host's tests
        can come in several runs): the guest is stopped then, not at the end of the module,
        so the guests of one host do not pile up on it."""
        guest = self(spec, host, **changes)
        try:
            yield guest
        finally:
            self.release(guest)

    def release(self, guest: Guest) -> None:
        """Stop ``guest`` before the factory's scope ends; one of a failed test stays, under
        --kvm-keep-failed, until that end."""
        if guest not in self.guests or (self.failed() and self.session.keep_failed
                                        and guest.alive()):
            return
        self.guests.remove(guest)
        with reporting.step(f"stop {guest.spec.name} on {guest.host.name}"):
            guest.stop()

    def finish(self, failed: bool, reporter=None) -> list[str]:
        errors, kept = [], []
        for guest in reversed(self.guests):
            if failed and self.session.keep_failed and guest.alive():
                kept.append(f"kept {guest!r}: console: ssh to {guest.host.name}, then "
                            f"cd {shlex.quote(guest.rundir)} && "
                            f"socat -,raw,echo=0 UNIX-CONNECT:c.sock ; "
                            f"stop it with pytest --hosts ... --kvm-cleanup")
                continue
            try:
                with reporting.step(f"stop {guest.spec.name} on {guest.host.name}"):
                    guest.stop()
            except KvmError as exc:
                errors.append(str(exc))
        self.guests.clear()
        if reporter is not None:
            for line in kept:
                reporter.write_line(line, yellow=True)
        if errors:
            raise KvmError("; ".join(errors))
        return kept


def with_host_image(spec: GuestSpec, host: Host, session: KvmSession) -> GuestSpec:
    """The spec on the host's distro image (kvm_guest_image), when it names one and the spec
    does not bring its own kernel or image: boot disk first, a fresh cloud-init seed."""
    image = host.entry.config.guest_image
    if not image or spec.kernel or spec.cloud_init or spec.root:
        return spec
    cfg = host.entry.config
    # commands: the guest agent where the image has one, else SSH to its sshd (our key, its
    # host key known before it boots), else the serial console; or the one the inventory names
    key, pub = keypair(session.keydir)  # (made only when a guest needs a key)
    ci = CloudInit(user=cfg.guest_user, password=secrets.token_urlsafe(12),
                   hostname=safe_name(spec.name, 30), ssh_keys=(pub,),
                   host_key=ed25519_keypair(), bootcmd=cfg.guest_bootcmd)
    channel = cfg.guest_channel
    firmware = cfg.guest_firmware
    if firmware == "auto":
        firmware = "bios" if cfg.guest_root else distro.firmware_of(image)
    disks = (Disk(image=image), *spec.disks)
    if spec.disks and spec.disks[0].shared and not spec.disks[0].image:
        # a first disk on shared storage (a migrating guest's) becomes the boot disk there:
        # the image's overlay on shared storage, so that the destination boots nothing anew
        disks = (replace(spec.disks[0], image=image), *spec.disks[1:])
    return spec.with_(disks=disks, cloud_init=ci,
                      root=cfg.guest_root, memory=max(spec.memory, 1024),
                      agent=channel in ("auto", "agent"), firmware=firmware,
                      ssh_key=key if channel in ("auto", "ssh") else None, channel=channel)
