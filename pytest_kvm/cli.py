"""pytest-kvm's command line: ``python -m pytest_kvm inventory -i PATH --list``,
``python -m pytest_kvm compare A B``, ``python -m pytest_kvm image build``.

``inventory`` prints an inventory as ``ansible-inventory`` does (``--list``: groups and every
host's resolved variables as JSON; ``--host NAME``: one host's variables), so a user debugging
an inventory sees what pytest-kvm reads. ``--check`` also checks the keys pytest-kvm uses, as a
test run does. A bad inventory: one line on stderr, ``file:line: what to fix``, exit code 1.
"""

from __future__ import annotations

import argparse
import sys

from .errors import InventoryError
from .inventory import load, read_model, resolve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytest_kvm",
                                     description="pytest-kvm's tools")
    sub = parser.add_subparsers(dest="command", required=True)
    inv = sub.add_parser("inventory", help="show an inventory as pytest-kvm (and Ansible) "
                         "reads it", description="Show an inventory the way ansible-inventory "
                         "does: --list or --host NAME.")
    inv.add_argument("-i", "--inventory", required=True, metavar="PATH", action="append",
                     help="inventory file, directory, or comma-separated host list (may be "
                          "given more than once, as with ansible-inventory)")
    what = inv.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="all groups and hosts with their "
                      "resolved variables (JSON, as ansible-inventory --list; secrets as ***)")
    what.add_argument("--host", metavar="NAME", help="one host's resolved variables (JSON)")
    what.add_argument("--check", action="store_true", help="check the keys pytest-kvm uses, "
                      "as a test run does, and print each host's pytest-kvm settings")
    inv.add_argument("--show-secrets", action="store_true", help="--list/--host: print "
                     "passwords, and the variables they are made from or make, as they are "
                     "(ansible-inventory does); by default they are ***")
    img = sub.add_parser("image", help="build a bootable Debian cloud image",
                         description="Images for labs that have none.")
    img_sub = img.add_subparsers(dest="image_command", required=True)
    build = img_sub.add_parser("build", help="build (or reuse the cached) Debian cloud "
                               "image (GPT, GRUB for BIOS and UEFI, cloud-init, "
                               "qemu-guest-agent, sshd)")
    build.add_argument("--release", default="bookworm", choices=("bookworm", "trixie"),
                       help="Debian 12 (bookworm, the default) or 13 (trixie)")
    build.add_argument("--out", metavar="PATH", help="where to put the qcow2 (default: the "
                       "cache, ~/.cache/pytest-kvm/distro/)")
    cmp = sub.add_parser("compare", help="A/B: did B get worse than A? (figures of two runs)",
                         description="Compare the figures of two runs, per test and figure: "
                         "medians, relative change of the mean, permutation-test p-value, and "
                         "a verdict that follows each figure's direction. A and B: an Allure "
                         "results directory, a JUnit .xml or a kvm-figures.json. Exit status: "
                         "0 nothing regressed, 1 something regressed, 2 an error (the runs "
                         "cannot be compared, an output cannot be written), 3 nothing could "
                         "be judged (too few samples on every figure measured on both "
                         "sides: --kvm-samples).")
    cmp.add_argument("a", metavar="A", help="the reference run's results")
    cmp.add_argument("b", metavar="B", help="the run under judgement's results")
    cmp.add_argument("--alpha", type=float, default=0.01, metavar="P",
                     help="significance: p below this (default 0.01)")
    cmp.add_argument("--min-change", type=float, default=5.0, metavar="PCT",
                     help="smallest relative change of the mean that counts, in %% (default 5)")
    cmp.add_argument("--out", default="reports/compare", metavar="DIR",
                     help="where compare.md and compare.json go (default reports/compare)")
    cmp.add_argument("--allure-result", metavar="DIR", help="also write the comparison as an "
                     "Allure result into this results directory (before rendering it)")
    cmp.add_argument("--name", default="figures", help="the comparison's name in Allure "
                     "(e.g. the lab's)")
    return parser


def compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import compare as ab
    from .figures import FiguresError, load

    if not 0 < args.alpha < 1 or args.min_change < 0:
        print("compare: --alpha is between 0 and 1, --min-change a percentage >= 0",
              file=sys.stderr)
        return 2
    try:
        result = ab.compare(load(args.a), load(args.b), args.alpha, args.min_change / 100)
    except FiguresError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print(ab.table(result))
    try:
        md, js = ab.write(result, Path(args.out))
        print(f"written: {md}, {js}")
        if args.allure_result:
            print(f"written: {ab.allure_result(result, Path(args.allure_result), args.name)}")
    except OSError as exc:  # (--out naming a file, or a path through one)
        print(f"compare: cannot write the comparison to {exc.filename or args.out}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 1 if result.regressions else 3 if result.judged_nothing else 0


def image(args: argparse.Namespace) -> int:
    import logging
    import time

    from .guest import distro

    logging.basicConfig(format="%(message)s", level=logging.INFO)
    start = time.monotonic()
    try:
        path = distro.build(args.out, args.release)
    except distro.ImageBuildError as exc:
        print(f"image build: {exc}", file=sys.stderr)
        return 1
    size = path.stat().st_size / 2**20
    print(f"{path} ({size:.0f} MiB, {time.monotonic() - start:.0f} s); use it with "
          f"kvm_guest_image={path}")
    return 0


def inventory(args: argparse.Namespace) -> int:
    if args.check:
        if len(args.inventory) != 1:
            print("--check reads one inventory (as --hosts does)", file=sys.stderr)
            return 2
        inv = load(args.inventory[0])
        for message in inv.warnings:
            print(f"warning: {message}", file=sys.stderr)
        for entry in inv:
            print(f"{entry.name}: {entry.config!r}")
        return 0
    model = read_model(*args.inventory)
    for message in model.warnings:
        print(f"warning: {message}", file=sys.stderr)
    resolver = resolve.Resolver(model, reveal_secrets=args.show_secrets)
    if args.host is not None:
        if args.host not in model.hosts:
            print(f"{', '.join(args.inventory)}: no host named {args.host!r}", file=sys.stderr)
            return 1
        print(resolve.dumps(resolver.plain(args.host), unsafe=False))
    else:
        print(resolve.dumps(resolver.as_list()))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # (`... --list | head`: the reader is gone, nothing to say)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "image":
        return image(args)
    if args.command == "compare":
        return compare(args)
    try:
        return inventory(args)
    except InventoryError as exc:
        print(exc, file=sys.stderr)
        return 1
