"""Allure reporting: labels, attachments, environment and categories for KVM runs.

Everything here is a no-op unless allure-pytest is active (``--alluredir``, which defaults to
reports/allure-results when an inventory is given).
"""

from __future__ import annotations

import json
import os
import re

import pytest

try:
    import allure
except ImportError:  # pragma: no cover - allure-pytest is a dependency
    allure = None

def raised(*types: type[BaseException]) -> str:
    """An Allure ``messageRegex`` that matches a result raised by one of these exception types
    or their subclasses: allure-pytest's message starts with the qualified type name."""
    found: set[type] = set()

    def walk(t: type) -> None:
        found.add(t)
        for sub in t.__subclasses__():
            walk(sub)

    for t in types:
        walk(t)
    qualified = sorted(f"{t.__module__}.{t.__qualname__}" for t in found)
    short = sorted(t.__name__ for t in found)  # a fixture's one-line failure names its type
    return (r"(?s)(" + "|".join(map(re.escape, qualified)) + r"|(_pytest\.outcomes\.)?Failed: ("
            + "|".join(map(re.escape, short)) + r")): .*")


def categories() -> list[dict]:
    """Failures of the lab rather than of the product under test, told apart by the type of
    what was raised (then Allure's defaults: product failures, test errors)."""
    from .errors import AuthenticationFailed, HostKeyMismatch, HostUnreachable, UnknownHostKey
    from .guest import GuestError
    from .guest.distro import ImageBuildError
    from .lab.nested import NestedHostError

    return [
        {"name": "Infrastructure: host unreachable",
         "messageRegex": raised(HostUnreachable, AuthenticationFailed, HostKeyMismatch,
                                UnknownHostKey),
         "matchedStatuses": ["broken", "failed"]},
        {"name": "Infrastructure: provisioning",
         "messageRegex": raised(GuestError, NestedHostError, ImageBuildError),
         "matchedStatuses": ["broken", "failed"]},
        {"name": "Figures regressed (A/B)", "messageRegex": r"(?s)\d+ regression\(s\): .*",
         "matchedStatuses": ["failed"]},  # compare --allure-result: the nightly's comparison
        {"name": "Product failures", "matchedStatuses": ["failed"]},
        {"name": "Test errors", "matchedStatuses": ["broken"]},
    ]


def active(config: pytest.Config) -> bool:
    return allure is not None and bool(getattr(config.option, "allure_report_dir", None))


def default_results_dir(config: pytest.Config) -> None:
    """reports/allure-results under the rootdir, unless the user chose --alluredir. That
    default place holds one run: it is emptied when the run starts (by the xdist controller
    only, not by each worker); the trend lives in the rendered report's history."""
    if allure is None or not hasattr(config.option, "allure_report_dir"):
        return
    if not config.option.allure_report_dir:
        config.option.allure_report_dir = str(config.rootpath / "reports" / "allure-results")
        config.option.clean_alluredir = not os.environ.get("PYTEST_XDIST_WORKER")


def private_results(config: pytest.Config) -> None:
    """The Allure results dir is the user's alone (0700): results hold what hosts printed
    (their dmesg, QEMU's command lines), which other users of the controller must not read."""
    directory = config.option.allure_report_dir
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)


def label_items(items: list[pytest.Item]) -> None:
    """feature = suite, story = check, kvm_host = the host under test (Allure's own `host`
    label is the machine that ran pytest). The Suites tab groups by host, then suite."""
    for item in items:
        suite = item.get_closest_marker("kvm_suite")
        feature = suite.args[0] if suite else item.module.__name__.removeprefix("test_")
        callspec = getattr(item, "callspec", None)
        host = callspec.params.get("kvm_host") if callspec else None
        pair = callspec.params.get("kvm_pair") if callspec else None
        labels = [("feature", feature), ("story", item.originalname)]
        if host:
            labels += [("kvm_host", host), ("parentSuite", host)]
        if pair:
            labels.append(("kvm_host", pair[0]))
            if pair[1] != pair[0]:
                labels.append(("kvm_peer", pair[1]))
            labels.append(("parentSuite", pair[0] if pair[1] == pair[0]
                           else f"{pair[0]} -> {pair[1]}"))
        if host or pair:
            labels.append(("suite", feature))
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


def attach_json(name: str, data) -> None:
    if allure is not None:
        allure.attach(json.dumps(data), name=name, attachment_type=allure.attachment_type.JSON)


def parameter(name: str, value) -> None:
    """A figure shown next to the test's attachments (kept out of its history id, so trends
    still join runs whose figures differ)."""
    if allure is not None:
        allure.dynamic.parameter(name, str(value), excluded=True)


def attach_guest(guest, failed: bool) -> None:
    """What a guest-using test's reader needs: the QEMU command line, its console and stderr,
    the QMP exchange; on failure also the guest's lsmod and dmesg."""
    label = f"{guest.host.name}/{guest.spec.name}"
    if allure is not None:  # which channel its commands used (agent or console), and its OS
        allure.dynamic.parameter(f"{label} command channel", guest.channel)
        allure.dynamic.parameter(f"{label} guest OS", guest.os_family)
    attach_text(f"{label} QEMU command line", guest.cmdline)
    if not guest.stopped:
        attach_text(f"{label} console log", guest.read_log("console.log", 300))
        attach_text(f"{label} QEMU stderr", guest.read_log("qemu.log", 200))
    if guest.qmp_exchange:  # only when the test used QMP
        attach_text(f"{label} QMP exchange", "\n".join(guest.qmp_exchange[-400:]))


def write_environment(config: pytest.Config, session) -> None:
    """environment.properties from the host facts (hosts this process connected to)."""
    directory = getattr(config.option, "allure_report_dir", None)
    if not directory or session is None:
        return
    os.makedirs(directory, exist_ok=True)
    lines = [f"inventory={session.inventory.path}"]
    for name, host in sorted(session.hosts_up().items()):
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
        json.dump(categories(), out, indent=1)


def attach_svg(name: str, svg: str) -> None:
    if allure is not None and svg:
        allure.attach(svg, name=name, attachment_type=allure.attachment_type.SVG)


def counter_chart(samples: list[tuple[float, int, str]],
                  windows: list[tuple[float, float, str]],
                  width: int = 720, height: int = 300) -> str:
    """An SVG of the guest's counter over time across migrations.

    samples: (seconds, counter value, series) as the controller received them, the series
    naming the QEMU process whose console gave the line; windows: (start, end, label) of each
    migration, same clock. A counter that reset would drop to the bottom; the guest's downtime
    is a gap in the dots inside a shaded window.
    """
    from xml.sax.saxutils import escape

    if not samples:
        return ""
    left, right, top, bottom = 56, 16, 40, 40
    t0 = min([s[0] for s in samples] + [w[0] for w in windows])
    t1 = max([s[0] for s in samples] + [w[1] for w in windows])
    span = max(t1 - t0, 1e-3)
    vmax = max(max(s[1] for s in samples), 1)

    def x(t: float) -> float:
        return left + (t - t0) / span * (width - left - right)

    def y(v: float) -> float:
        return height - bottom - v / vmax * (height - top - bottom)

    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    series = list(dict.fromkeys(s[2] for s in samples))
    colour = {name: palette[i % len(palette)] for i, name in enumerate(series)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    for start, end, label in windows:
        out.append(f'<rect x="{x(start):.1f}" y="{top}" width="{max(x(end) - x(start), 1):.1f}"'
                   f' height="{height - top - bottom}" fill="#ddd"><title>{escape(label)}'
                   f'</title></rect>')
        out.append(f'<text x="{x(start) + 2:.1f}" y="{top - 6}">{escape(label)}</text>')
    base = height - bottom
    out.append(f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" stroke="#000"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#000"/>')
    out.append(f'<text x="{left - 4}" y="{y(vmax) + 4:.1f}" text-anchor="end">{vmax}</text>')
    out.append(f'<text x="{left - 4}" y="{base + 4}" text-anchor="end">0</text>')
    out.append(f'<text x="{width - right}" y="{base + 16}" text-anchor="end">{span:.1f} s</text>')
    out.append(f'<text x="{left}" y="{base + 16}">0 s</text>')
    out.append(f'<text x="{left}" y="14" font-size="13">The counter in the guest across the '
               f'migration (grey: migrating)</text>')
    lx = left
    for name in series:
        out.append(f'<circle cx="{lx}" cy="{height - 10}" r="4" fill="{colour[name]}"/>'
                   f'<text x="{lx + 7}" y="{height - 6}">{escape(name)}</text>')
        lx += 14 + 7 * len(name)
    for t, value, name in samples:
        out.append(f'<circle cx="{x(t):.1f}" cy="{y(value):.1f}" r="1.6" '
                   f'fill="{colour[name]}"/>')
    out.append("</svg>")
    return "\n".join(out)
