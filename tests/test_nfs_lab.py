"""Two nested hosts joined by a private link, one serving NFS to both (the default lab's
lab1/lab2 in miniature): the link carries the migration, the export is shared storage, and a
migration whose NFS server goes away mid-run fails clearly with nothing left running."""

from __future__ import annotations

import time

import pytest

from pytest_kvm.errors import KvmError
from pytest_kvm.features import migration as mig
from pytest_kvm.guest import Disk, GuestSpec, Owner
from pytest_kvm.inventory import parse
from pytest_kvm.lab import GuestFactory, KvmSession

SPEC = GuestSpec(name="mig", serial=True, shell=True, memory=256, disks=(Disk(size="64M"),))
SHARED = "/srv/kvm-shared"
INVENTORY = f"""
[l0]
localhost ansible_connection=local

[lab]
nfs1 kvm_migration_address=10.78.0.1
nfs2 kvm_migration_address=10.78.0.2

[lab:vars]
kvm_parent=localhost
kvm_l1_link=nfstest
kvm_l1_nfs_server=nfs1
kvm_shared_storage={SHARED}
"""


@pytest.fixture(scope="module")
def session():
    s = KvmSession(parse(INVENTORY), Owner.current("nfstest1"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def lab(session):
    return session.host("nfs1"), session.host("nfs2")


def mounted(host) -> str:
    return host.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", SHARED], check=False).stdout.split()


def qemus(host) -> str:
    return host.run(["pgrep", "-af", "pytest-kvm-nfstest1"], check=False).stdout


def test_both_mount_the_export_over_the_link(lab):
    assert mounted(lab[0]) == ["nfs4", "10.78.0.1:/"]
    assert mounted(lab[1]) == ["nfs4", "10.78.0.1:/"]
    assert mig.shared_storage_works(lab[1], lab[0], SHARED) is None  # a token, both ways
    assert mig.shared_storage_works(lab[0], lab[1], SHARED) is None


def test_the_link_carries_nfs_and_migration(lab):
    assert mig.address_of(lab[1]) == "10.78.0.2"  # where migration streams go
    route = lab[0].run(["ip", "-o", "route", "get", "10.78.0.2"]).stdout
    assert "src 10.78.0.1" in route, route  # the link's NIC, not the management one
    nfs = lab[1].run(["ss", "-tnH", "dst", "10.78.0.1:2049"]).stdout
    assert "10.78.0.2:" in nfs, nfs  # nfs2's NFS connection, over the link


def test_a_migration_whose_nfs_server_goes_away(session, lab):
    """The server stops serving (its nfsd threads to 0) as the migration starts: the run fails
    with an error that says what happened, and both hosts are left with no QEMU of ours."""
    src, dst = lab
    factory = GuestFactory(session, src, "nfstest")
    path, problem = mig.shared_storage(src, dst)
    assert problem is None

    class ServerGoesAway:
        def __init__(self, title):
            self.title = title

        def __enter__(self):
            if self.title.startswith("migrate"):
                src.run(["rpc.nfsd", "0"], timeout=30)

        def __exit__(self, *exc):
            return False

    started = time.monotonic()
    with pytest.raises(KvmError) as failed:
        mig.Run("shared-storage", src, dst, SPEC, factory, path, None, ServerGoesAway).execute()
    took = time.monotonic() - started
    message = str(failed.value)
    assert took < 300, f"the failure took {took:.0f} s"
    assert message.startswith(f"the shared storage failed: {src.name}: cannot write to "
                              f"{SHARED}"), message
    print(f"failed after {took:.0f} s: {message}")
    started = time.monotonic()
    factory.finish(False)  # what the suite's factory does at the end of the module
    print(f"stopped in {time.monotonic() - started:.0f} s")
    assert qemus(src) == "" and qemus(dst) == "", (qemus(src), qemus(dst))
