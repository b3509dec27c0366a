"""Transport layer: run commands and move files on a host, locally or over SSH."""

from __future__ import annotations

import os
import re

import paramiko

from ..errors import TransportError
from ..inventory import HostEntry, Inventory
from ..inventory.config import ACCEPT_ANY, keeps_nothing
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


def _host_key_settings(name: str, conf, cfg: dict) -> tuple[str | None, str | None]:
    """(policy, known_hosts) from the inventory, else from ~/.ssh/config, which gets the
    inventory's rules: StrictHostKeyChecking yes or accept-new only, and accept-new only with
    a known_hosts that keeps the keys."""
    policy, known_hosts = conf.host_key, conf.known_hosts
    where = f"{os.path.expanduser(SSH_CONFIG)} (Host {name})"
    said = str(cfg.get("stricthostkeychecking", "")).lower()
    if policy is None and said:
        if said == "accept-new":
            policy = "accept-new"
        elif said not in ("yes", "true", "ask"):
            raise TransportError(f"{where}: StrictHostKeyChecking {said} is not supported: "
                                 "pytest-kvm verifies host keys; use yes or accept-new there, "
                                 "or kvm_host_key in the inventory")
    if not known_hosts and cfg.get("userknownhostsfile"):
        known_hosts = cfg["userknownhostsfile"].split()[0]
        if policy == "accept-new" and keeps_nothing(known_hosts):
            raise TransportError(f"{where}: " + ACCEPT_ANY.format(known=known_hosts))
    return policy, known_hosts


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
    policy, known_hosts = _host_key_settings(entry.name, conf, cfg)
    proxy = None
    jump = conf.proxy_jump or cfg.get("proxyjump")
    if jump and jump.lower() != "none":
        # every hop, in order, each through the one before (ssh's -J a,b,c)
        for i, hop in enumerate(jump.split(",")):
            if i == 0 and inventory is not None and hop in inventory.hosts:
                proxy = for_entry(inventory.hosts[hop], inventory, opened)
                continue
            juser, jhost, jport = _jump_spec(hop)
            jcfg = _ssh_config(jhost)
            proxy = SSHTransport(
                hop, jcfg.get("hostname", jhost), jport or int(jcfg.get("port", 22)),
                juser or jcfg.get("user", "root"), (jcfg.get("identityfile") or [None])[0],
                known_hosts=known_hosts or None, host_key_policy=policy or "strict",
                connect_timeout=conf.connect_timeout, proxy=proxy)
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
