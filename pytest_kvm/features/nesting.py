"""Nested virtualization, the feature: a guest that runs guests (its CPU model exposes
the extension; the host lets it: the kvm module's ``nested`` under kvm, QEMU's emulated SVM
with NPT under TCG)."""

from __future__ import annotations

from ..host import Host


def default_smp(parent: Host) -> int:
    """vCPUs of an L1 by default. Under TCG one: with two, guests under KVM inside the L1 (L2s)
    reset on their own every few minutes of I/O (multi-threaded TCG's nested SVM); with one,
    none did in the same runs (README, "The emulated lab")."""
    return 2 if parent.accel == "kvm" else 1


def default_cpu(parent: Host) -> str:
    """A CPU model exposing the virtualization extension: the host's own under kvm; under
    TCG (which emulates AMD SVM only) `max`, which has svm and npt."""
    return "host" if parent.accel == "kvm" else "max"


def model_cpu(parent: Host) -> str:
    """A named model plus the extension's flag(s)."""
    if parent.accel == "kvm" and parent.facts.virt_flag == "vmx":
        return "qemu64,+vmx"
    return "qemu64,+svm,+npt"  # svm alone is not enough: L2 triple-faults without npt


def nesting_problem(host: Host) -> str | None:
    """None when the host can run guests that run guests; else what is wrong and the fix.

    Under kvm: the kvm module's ``nested`` parameter. Under TCG: QEMU's emulated CPU (`max`)
    must offer svm and npt (QEMU asked with query-cpu-model-expansion)."""
    facts = host.facts
    if host.accel == "kvm":
        module = facts.kvm_module
        if facts.nested.get(module) not in ("1", "Y", "y"):
            return (f"{host.name}: nested virtualization is off ({module} nested="
                    f"{facts.nested.get(module, '?')}); fix: modprobe -r {module}; "
                    f"modprobe {module} nested=1")
        return None
    features = host.cpu_model_features(["max"])["max"]
    missing = [f for f in ("svm", "npt") if f not in features]
    if missing:
        return (f"{host.name}: QEMU {facts.qemu_version}'s TCG CPU 'max' lacks "
                f"{', '.join(missing)}; install a QEMU that emulates AMD SVM with NPT")
    return None
