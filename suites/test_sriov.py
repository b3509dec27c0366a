"""SR-IOV (lab notes, section 3): a PF creates exactly the VFs asked for, and a VF can be given
to a guest.

Per PF named in the inventory (kvm_sriov_pf): it reports sriov_totalvfs; for numvfs in
{1, totalvfs}: writing sriov_numvfs creates that many VFs, and the virtfn links, lspci and the
VF device ID (sriov_vf_device) agree; a VF bound to vfio-pci shows up in a guest. The PF's
numvfs and drivers_autoprobe are restored afterwards, also when a test fails.
"""

from __future__ import annotations

import pytest

from pytest_kvm.features import sriov, vfio
from pytest_kvm.guest import GuestSpec

pytestmark = pytest.mark.kvm_suite("sriov")


@pytest.fixture(scope="module")
def pf(kvm_host, kvm_pci, kvm_device_lease):
    """The PF (leased), its settings saved and new VFs left unbound; restored at the end."""
    try:
        state = sriov.prepare(kvm_host, kvm_pci, reset=kvm_host.entry.config.sriov_reset)
    except sriov.PfInUse as exc:
        pytest.skip(str(exc))
    yield kvm_pci
    state.restore()


@pytest.fixture(scope="module")
def total(kvm_host, pf):
    return kvm_host.pci(pf).totalvfs or 0


def test_pf_reports_totalvfs(total):
    assert total > 0


@pytest.fixture(scope="module", params=["one", "all"])
def created(request, kvm_host, pf, total):
    """numvfs set to 1 or to totalvfs; the VFs' addresses from the virtfn links."""
    count = 1 if request.param == "one" else total
    sriov.set_numvfs(kvm_host, pf, count)
    return count, sriov.vfs(kvm_host, pf)


def test_numvfs_reads_back(kvm_host, pf, created):
    count, _ = created
    assert kvm_host.pci(pf).numvfs == count


def test_virtfn_links_match(created):
    count, vfs = created
    assert len(vfs) == count


def test_lspci_lists_each_vf(kvm_host, created):
    _, vfs = created
    assert sorted(sriov.lspci_lines(kvm_host, vfs)) == sorted(vfs)


def test_lspci_vf_ids_match_sriov_vf_device(kvm_host, pf, created):
    _, vfs = created
    want = kvm_host.pci(pf).vf_vendor_device
    seen = {bdf: sriov.lspci_vf_ids(line) for bdf, line in sriov.lspci_lines(kvm_host, vfs).items()}
    assert set(seen.values()) == {want}, seen


@pytest.fixture
def vf_guest(kvm_host, created, guest_factory):
    """A guest given the first VF (on vfio-pci while the guest runs, then given back)."""
    _, vfs = created
    with vfio.bound(kvm_host, vfs[0], check=False):  # a VF of a PF we may use
        guest = guest_factory(GuestSpec(name="vf-guest", shell=True,
                                        devices=(f"vfio-pci,host={vfs[0]}",)),
                              host=kvm_host)
        yield guest
        guest.stop()


def test_vf_is_visible_in_a_guest(kvm_host, pf, vf_guest):
    assert kvm_host.pci(pf).vf_vendor_device in vfio.guest_pci_ids(vf_guest)
