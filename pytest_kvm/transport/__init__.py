"""Transport layer: run commands and move files on a host, locally or over SSH."""

from __future__ import annotations

import os
import re

import paramiko

from ..errors import TransportError
from ..inventory import HostEntry, Inventory
from .base import Become, Command, Result, Stream, Transport
from .local import LocalTransport
from .ssh import SSHTransport

__all__ = ["Command", "Result", "Stream", "Transport", "LocalTransport", "SSHTransport",
           "for_entry", "forwarded"]

SSH_CONFIG = "~/.ssh/config"


def _ssh_config(name: str) -> dict:
    path = os.path.expanduser(SSH_CONFIG)
    if not os.path.exists(path):
        return {}
    try:
        return paramiko.SSHConfig.from_path(path).lookup(name)
    except Exception as exc:  # a broken ~/.ssh/config is the user's to fix; say where
        raise TransportError(f"{path}: cannot be parsed ({exc})") from exc


def _jump_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``user@host:port`` -> (user, host, port)."""
    match = re.fullmatch(r"(?:([^@]+)@)?(\[[^\]]+\]|[^:]+)(?::(\d+))?", spec)
    if not match:
        raise TransportError(f"cannot understand ProxyJump {spec!r}; use [user@]host[:port]")
    user, host, port = match.groups()
    return user, host.strip("[]"), int(port) if port else None


def for_entry(entry: HostEntry, inventory: Inventory | None = None,
              opened: dict[str, Transport] | None = None) -> Transport:
    """Build (but do not yet connect) the transport for an inventory host.

    ``opened`` maps host names to transports already built, so a ProxyJump through another
    inventory host reuses its connection.
    """
    opened = {} if opened is None else opened
    if entry.name in opened:
        return opened[entry.name]
    conf = entry.config
    become = Become.of(conf)
    if conf.connection == "local":
        transport: Transport = LocalTransport(entry.name, conf.workdir, become=become)
        opened[entry.name] = transport
        return transport
    cfg = _ssh_config(conf.host or entry.name)
    hostname = conf.host or cfg.get("hostname", entry.name)
    port = conf.port or int(cfg.get("port", 22))
    user = conf.user or cfg.get("user", "root")
    key_file = conf.private_key_file or (cfg.get("identityfile") or [None])[0]
    policy = conf.host_key
    if policy is None and str(cfg.get("stricthostkeychecking", "")).lower() == "accept-new":
        policy = "accept-new"
    known_hosts = conf.known_hosts
    if not known_hosts and cfg.get("userknownhostsfile"):
        known_hosts = cfg["userknownhostsfile"].split()[0]
    proxy = None
    jump = conf.proxy_jump or cfg.get("proxyjump")
    if jump and jump.lower() != "none":
        first = jump.split(",")[0]
        if inventory is not None and first in inventory.hosts:
            proxy = for_entry(inventory.hosts[first], inventory, opened)
        else:
            juser, jhost, jport = _jump_spec(first)
            jcfg = _ssh_config(jhost)
            proxy = SSHTransport(
                first, jcfg.get("hostname", jhost), jport or int(jcfg.get("port", 22)),
                juser or jcfg.get("user", "root"), (jcfg.get("identityfile") or [None])[0],
                known_hosts=known_hosts or None, host_key_policy=policy or "strict",
                connect_timeout=conf.connect_timeout)
    transport = SSHTransport(
        entry.name, hostname, port, user, key_file, conf.password,
        known_hosts=known_hosts or None, host_key_policy=policy or "strict",
        connect_timeout=conf.connect_timeout, proxy=proxy, workdir=conf.workdir, become=become)
    opened[entry.name] = transport
    return transport


def forwarded(name: str, parent: Transport, port: int, key_file: str, known_hosts: str,
              workdir: str | None = None, user: str = "root") -> SSHTransport:
    """SSH to a port on the parent's loopback (a nested host's or a guest's forwarded sshd),
    through the parent's transport, with strict checking against a pinned known_hosts file."""
    transport = SSHTransport(name, "127.0.0.1", port, user, key_file, known_hosts=known_hosts,
                             host_key_policy="strict", connect_timeout=30, proxy=parent,
                             workdir=workdir)
    transport.sees_controller_root = isinstance(parent, LocalTransport)
    return transport
