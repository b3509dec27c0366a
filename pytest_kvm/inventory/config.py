"""Stage 3: the keys pytest-kvm uses, checked and typed into a frozen :class:`HostConfig`.

Every other Ansible variable is left to Ansible. A key's value may be written as Ansible types
it (a YAML bool, an INI ``yes``, a list or a comma-separated string) and may be a Jinja2
template, rendered with the host's variables. A bad value is one line naming the file and line
it was set on; a password never appears in a message (:class:`Secret`).
"""

from __future__ import annotations

import difflib
import functools
import shlex
from collections.abc import Mapping
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox

from . import yamlload
from .keys import ALIASES, KEYS, SECRET_KEYS, HostConfig
from .model import Origin, Value
from .values import _bool, _seconds

# -- building a HostConfig from a host's resolved variables -----------------------------------
# The connections pytest-kvm can use. A host with another one (a switch, a Windows box, a
# container in a lab's inventory) is not a KVM host: left out with a warning, not an error.
CONNECTIONS = ("ssh", "local", "paramiko", "paramiko_ssh", "smart")


class NotAKvmHost(Exception):
    """A host whose ansible_connection pytest-kvm cannot use."""


def build(name: str, values: Mapping[str, Value], groups: tuple[str, ...],
          warnings: list[str]) -> tuple[HostConfig, dict[str, Origin]]:
    """Check and type the keys pytest-kvm uses; warn about unknown ``kvm_*`` keys.

    Returns the config and, for each field set, where its value came from.
    """
    for key, value in values.items():
        if not key:
            raise value.origin.error("a variable has an empty name; give it a name or "
                                     "remove it")
        if key not in KEYS and key not in ALIASES:
            _warn_unknown(key, value.origin, warnings)
    connection = values.get("ansible_connection")
    if connection is not None and isinstance(connection.value, str) and \
            connection.value.removeprefix("ansible.builtin.") not in CONNECTIONS:
        close = difflib.get_close_matches(connection.value, CONNECTIONS, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise NotAKvmHost(f"{connection.origin}: host {name!r} uses ansible_connection="
                          f"{connection.value}{hint}, which pytest-kvm cannot use; it is left "
                          "out")
    renderer = _Renderer(name, values, groups)
    secret = secret_names(values)
    fields: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    for key, spec in KEYS.items():
        chosen = [n for n in (key, *spec.aliases) if n in values]
        if not chosen:
            continue
        source = chosen[-1]  # Ansible: the last name in its list wins
        value = values[source]
        if source in secret and source not in SECRET_KEYS:
            raise value.origin.error(
                f"{source} is made from a secret (a password, or a variable a password is "
                f"made from); it would be shown in paths, logs and reports: keep secrets out "
                f"of it")
        if isinstance(value.value, yamlload.Vaulted):
            raise value.origin.error(f"{source} is encrypted with Ansible Vault, which "
                                     "pytest-kvm cannot decrypt; give it in plain text "
                                     "(or, for a password, use an SSH key)")
        raw = renderer.render(source, value)
        if isinstance(raw, str) and yamlload.not_utf8(raw):
            raise value.origin.error(f"{source} is not UTF-8 text; save the file as UTF-8")
        try:
            fields[spec.field] = spec.parse(raw)
        except ValueError as exc:
            raise value.origin.error(f"{source} {exc}") from None
        origins[spec.field] = value.origin
    ssh_args = " ".join(fields[f] for f in ("ssh_common_args", "ssh_extra_args") if f in fields)
    if ssh_args:
        key = "ansible_ssh_common_args" if "ssh_common_args" in fields else \
            "ansible_ssh_extra_args"
        for field, value in _ssh_args(ssh_args, values[key].origin).items():
            if field not in fields:  # an explicit kvm_* key wins
                fields[field], origins[field] = value, values[key].origin
    _check_host_keys(fields, origins)
    return HostConfig(**fields), origins


def _check_host_keys(fields: dict[str, Any], origins: dict[str, Origin]) -> None:
    """accept-new only where the accepted key is kept: with a known_hosts that does not
    persist, every connection would accept any key."""
    known = fields.get("known_hosts")
    if fields.get("host_key") == "accept-new" and known is not None and keeps_nothing(known):
        origin = origins.get("known_hosts") or origins["host_key"]
        raise origin.error(ACCEPT_ANY.format(known=known))


ACCEPT_ANY = ("accept-new with known_hosts {known} would accept any host key on every "
              "connection; give a known_hosts file that keeps the keys (or use strict with a "
              "known_hosts you filled)")


def keeps_nothing(known_hosts: str) -> bool:
    """Whether a known_hosts setting keeps no key (none, or /dev/null by any name)."""
    import os

    if known_hosts.lower() == "none":
        return True
    return os.path.realpath(os.path.expanduser(known_hosts)) == os.devnull


def _warn_unknown(key: str, origin: Origin, warnings: list[str]) -> None:
    if key.startswith("ansible_"):
        return  # Ansible's own variables are not ours to judge
    close = _close_keys(key)
    if key.startswith("kvm_") or close:
        more = f"; did you mean {close[0]!r}?" if close else " (ignored)"
        message = f"{origin}: unknown key {key!r}{more}"
        if message not in warnings:
            warnings.append(message)


@functools.lru_cache(maxsize=4096)
def _close_keys(key: str) -> list[str]:
    """pytest-kvm's key a name is close to (asked once per name, not once per host)."""
    return difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.75)


def _ssh_args(value: str, origin: Origin) -> dict[str, Any]:
    """The ssh options pytest-kvm can honour; the rest refused with a reason."""
    out: dict[str, Any] = {}
    try:
        args = shlex.split(value)
    except ValueError as exc:
        raise origin.error(f"ansible_ssh_common_args: {exc}") from None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-J", "-o") and i + 1 < len(args):
            opt = ("ProxyJump=" + args[i + 1]) if arg == "-J" else args[i + 1]
            i += 2
        elif arg.startswith("-o") and len(arg) > 2:
            opt, i = arg[2:], i + 1
        elif arg.startswith("-J") and len(arg) > 2:
            opt, i = "ProxyJump=" + arg[2:], i + 1
        else:
            raise origin.error(f"ansible_ssh_common_args: option {arg!r} is not supported; "
                               "use -J, -o ProxyJump=, -o StrictHostKeyChecking=, "
                               "-o UserKnownHostsFile= or -o ConnectTimeout=")
        key, _, val = opt.replace(" ", "=", 1).partition("=")
        low = key.lower()
        if low == "proxyjump":
            out["proxy_jump"] = val
        elif low == "stricthostkeychecking":
            if val.lower() in ("yes", "true"):
                out["host_key"] = "strict"
            elif val.lower() == "accept-new":
                out["host_key"] = "accept-new"
            else:
                raise origin.error(f"StrictHostKeyChecking={val} is not supported: pytest-kvm "
                                   "verifies host keys; use yes or accept-new")
        elif low == "userknownhostsfile":
            out["known_hosts"] = val
        elif low == "connecttimeout":
            try:
                out["connect_timeout"] = _seconds(val)
            except ValueError as exc:
                raise origin.error(f"ConnectTimeout {exc}") from None
        else:
            raise origin.error(f"ansible_ssh_common_args: -o {key} is not supported; use "
                               "ProxyJump, StrictHostKeyChecking, UserKnownHostsFile or "
                               "ConnectTimeout")
    return out


def _references(value: Any) -> frozenset[str]:
    """The variables a template refers to (none for a plain value or a broken template,
    whose error rendering reports)."""
    if not _Renderer.is_template(value):
        return frozenset()
    try:
        return frozenset(jinja2.meta.find_undeclared_variables(_Renderer.env.parse(value)))
    except jinja2.TemplateError:
        return frozenset()


def secret_names(values: Mapping[str, Value]) -> frozenset[str]:
    """The host's variables that are secrets: the password keys, every variable their
    templates are made from (``ansible_password: "{{ vault_pw }}"`` makes vault_pw one), and
    every variable whose template uses one of those."""
    refs = {k: _references(v.value) for k, v in values.items()}
    secret = {k for k in values if k in SECRET_KEYS}
    stack = list(secret)
    while stack:  # what a secret is made from
        for ref in refs.get(stack.pop(), ()):
            if ref in values and ref not in secret:
                secret.add(ref)
                stack.append(ref)
    changed = True
    while changed:  # what is made from a secret
        changed = False
        for key, used in refs.items():
            if key not in secret and used & secret:
                secret.add(key)
                changed = True
    return frozenset(secret)


class _Renderer:
    """Jinja2 templates in the values of pytest-kvm's keys, rendered with the host's variables
    (and Ansible's magic ones: inventory_hostname, inventory_hostname_short, group_names)."""

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined,
                                                       autoescape=False)
    env.filters["bool"] = lambda v: _bool(v) if not isinstance(v, bool) else v
    env.filters["ternary"] = lambda v, yes, no=None: yes if v else no

    def __init__(self, name: str, values: Mapping[str, Value], groups: tuple[str, ...]):
        self.values = values
        self.magic = {"inventory_hostname": name,
                      "inventory_hostname_short": name.split(".")[0],
                      "group_names": sorted(g for g in groups if g != "all")}
        self.done: dict[str, Any] = {}

    @staticmethod
    def is_template(value: Any) -> bool:
        return (isinstance(value, str) and not isinstance(value, yamlload.Unsafe)
                and ("{{" in value or "{%" in value))

    def render(self, key: str, value: Value, stack: tuple[str, ...] = ()) -> Any:
        if not self.is_template(value.value):
            return value.value
        if key in self.done:
            return self.done[key]
        if key in stack:
            raise value.origin.error(f"{stack[0]}: the template refers to itself through "
                                     + " -> ".join((*stack, key)))
        try:
            template = self.env.from_string(value.value)
            names = jinja2.meta.find_undeclared_variables(self.env.parse(value.value))
            context = dict(self.magic)
            for ref in names:
                if ref in self.values:
                    context[ref] = self.render(ref, self.values[ref], (*stack, key))
            result = template.render(context)
        except jinja2.TemplateError as exc:
            first = stack[0] if stack else key
            raise value.origin.error(f"{first}: cannot render {key}'s template "
                                     f"({exc.message or type(exc).__name__}); pytest-kvm "
                                     "renders templates from the host's inventory variables "
                                     "only") from None
        self.done[key] = result
        return result
