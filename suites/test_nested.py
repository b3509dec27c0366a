"""Nested KVM (lab notes, section 5): a host runs a guest that itself runs a guest.

Per host: nesting is enabled; an L1 guest whose CPU exposes the virtualization extension sees
vmx or svm, has kvm_intel or kvm_amd loaded and /dev/kvm; an L2 guest started inside the L1
with -accel kvm reaches its shell (the shell marker decides, never QEMU's exit code: an L2
that triple-faults under -no-reboot exits 0). For two CPU models: the host's own (under TCG,
`max`) and a named model plus the extension's flag.
"""

from __future__ import annotations

import pytest

from pytest_kvm.features.nesting import default_cpu, model_cpu, nesting_problem
from pytest_kvm.guest import GuestSpec
from pytest_kvm.lab import L1Options

pytestmark = pytest.mark.kvm_suite("nested")

CPU_MODELS = {"passthrough": default_cpu, "model+flag": model_cpu}


def test_nesting_enabled(kvm_host):
    problem = nesting_problem(kvm_host)
    if problem and kvm_host.accel == "kvm":
        pytest.skip(problem)  # a host setting the user must change: say exactly how
    assert problem is None, problem


@pytest.fixture(scope="module", params=list(CPU_MODELS))
def l1(request, kvm_host, kvm_session):
    cpu = CPU_MODELS[request.param](kvm_host)
    host = kvm_session.nested_host(kvm_host, f"{kvm_host.name}-l1",
                                   L1Options(cpu=cpu, memory=2048))
    yield host
    host.stop()


def test_l1_sees_the_extension(l1):
    assert l1.facts.virt_flag in ("vmx", "svm"), "no vmx/svm in the L1's /proc/cpuinfo"


def test_l1_loaded_kvm(l1):
    assert l1.facts.kvm_module in ("kvm_intel", "kvm_amd")


def test_l1_has_dev_kvm(l1):
    assert l1.facts.dev_kvm


def test_l2_boots_under_kvm_in_l1(l1, guest_factory):
    l2 = guest_factory(GuestSpec(name="l2", accel="kvm"), host=l1)  # waits for the marker
    assert l2.accel == "kvm"
    assert l2.sh("echo alive").strip() == "alive"
