"""Lab layer: the session's hosts (connected, or booted as nested hosts on their parents,
with their links and NFS) and the guests started on them. Between the fixtures and the
features: a fixture asks the lab for a host or a guest, never a feature for a host."""

from .guests import GuestFactory, with_host_image
from .nested import L1Options, Link, NestedHost, NestedHostError, keypair
from .session import KvmSession

__all__ = ["GuestFactory", "KvmSession", "L1Options", "Link", "NestedHost", "NestedHostError",
           "keypair", "with_host_image"]
