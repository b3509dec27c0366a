"""Allure reporting: labels, attachments, environment and categories for KVM runs.

Everything here is a no-op unless allure-pytest is active (``--alluredir``, which defaults to
reports/allure-results when an inventory is given).
"""

from __future__ import annotations

import json
import os

import pytest

try:
    import allure
except ImportError:  # pragma: no cover - allure-pytest is a dependency
    allure = None

# Failures of the lab rather than of the product under test.
CATEGORIES = [
    {"name": "Infrastructure: host unreachable",
     "messageRegex": r".*(UNREACHABLE|cannot connect to|cannot resolve|lost the SSH "
                     r"connection|authentication as|host key).*",
     "matchedStatuses": ["broken", "failed"]},
    {"name": "Infrastructure: provisioning",
     "messageRegex": r".*(QEMU exited|did not start|not ready|could not stop QEMU|no host key "
                     r"on the L1).*",
     "matchedStatuses": ["broken", "failed"]},
    {"name": "Product failures", "matchedStatuses": ["failed"]},
    {"name": "Test errors", "matchedStatuses": ["broken"]},
]


def active(config: pytest.Config) -> bool:
    return allure is not None and bool(getattr(config.option, "allure_report_dir", None))


def default_results_dir(config: pytest.Config) -> None:
    """reports/allure-results under the rootdir, unless the user chose --alluredir."""
    if allure is None or not hasattr(config.option, "allure_report_dir"):
        return
    if not config.option.allure_report_dir:
        config.option.allure_report_dir = str(config.rootpath / "reports" / "allure-results")


def label_items(items: list[pytest.Item]) -> None:
    """feature = suite, story = check, kvm_host = the host under test (Allure's own `host`
    label is the machine that ran pytest)."""
    for item in items:
        suite = item.get_closest_marker("kvm_suite")
        feature = suite.args[0] if suite else item.module.__name__.removeprefix("test_")
        callspec = getattr(item, "callspec", None)
        host = callspec.params.get("kvm_host") if callspec else None
        pair = callspec.params.get("kvm_pair") if callspec else None
        labels = [("feature", feature), ("story", item.originalname)]
        if host:
            labels.append(("kvm_host", host))
        if pair:
            labels.append(("kvm_host", pair[0]))
            if pair[1] != pair[0]:
                labels.append(("kvm_peer", pair[1]))
        severity = "critical" if feature in ("passthrough", "sriov", "migration") else "normal"
        labels.append(("severity", severity))
        for name, value in labels:
            item.add_marker(pytest.mark.allure_label(value, label_type=name))


def step(title: str):
    """An Allure step (a plain context manager when Allure is off)."""
    if allure is None:
        import contextlib

        return contextlib.nullcontext()
    return allure.step(title)


def attach_text(name: str, text: str) -> None:
    if allure is not None and text:
        allure.attach(text, name=name, attachment_type=allure.attachment_type.TEXT)


def attach_guest(guest, failed: bool) -> None:
    """What a guest-using test's reader needs: the QEMU command line, its console and stderr,
    the QMP exchange; on failure also the guest's lsmod and dmesg."""
    label = f"{guest.host.name}/{guest.spec.name}"
    attach_text(f"{label} QEMU command line", guest.cmdline)
    if not guest.stopped:
        attach_text(f"{label} console log", guest.read_log("console.log", 300))
        attach_text(f"{label} QEMU stderr", guest.read_log("qemu.log", 200))
    if guest._qmp is not None:  # noqa: SLF001 - only when the test used QMP
        attach_text(f"{label} QMP exchange", "\n".join(guest._qmp.log[-400:]))  # noqa: SLF001


def write_environment(config: pytest.Config, session) -> None:
    """environment.properties from the host facts (hosts this process connected to)."""
    directory = getattr(config.option, "allure_report_dir", None)
    if not directory or session is None:
        return
    os.makedirs(directory, exist_ok=True)
    lines = [f"inventory={session.inventory.path}"]
    for name, host in sorted(session._hosts.items()):  # noqa: SLF001
        try:
            f = host.facts
        except Exception:
            continue
        lines += [f"{name}.kernel={f.kernel}", f"{name}.cpu={f.cpu_vendor} {f.cpu_model}",
                  f"{name}.hardware_kvm={f.hardware_kvm}", f"{name}.accel={host.accel}",
                  f"{name}.qemu={f.qemu_version}", f"{name}.iommu_groups={f.iommu_groups}"]
    with open(os.path.join(directory, "environment.properties"), "w") as out:
        out.write("\n".join(lines) + "\n")
    with open(os.path.join(directory, "categories.json"), "w") as out:
        json.dump(CATEGORIES, out, indent=1)
