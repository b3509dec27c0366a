"""The inventory reader against its oracle, ansible-core's ``ansible-inventory``.

Every inventory under ``tests/inventories/`` (real projects' layouts and every INI/YAML/
directory/group_vars/host_vars feature) must read as the same data as
``ansible-inventory -i SOURCE --list`` (and ``--host``); every file under
``tests/inventories-bad/`` is one Ansible refuses (it cannot parse it, or it stops with an
error), and pytest-kvm must refuse it too, in one line naming the file, with a non-zero exit
code. Compared as data, written canonically (so NaN equals NaN).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pytest_kvm.errors import InventoryError
from pytest_kvm.inventory import load, read_model, resolve

HERE = Path(__file__).parent
GOOD = HERE / "inventories"
BAD = HERE / "inventories-bad"
SOURCE_NAMES = ("inventory", "hosts.ini", "hosts.yml", "hosts.yaml", "hosts.json", "hosts")


def source(case: Path) -> Path:
    """A case directory holds one inventory source (beside its group_vars/host_vars)."""
    return next(case / n for n in SOURCE_NAMES if (case / n).exists())


GOOD_CASES = sorted(p.name for p in GOOD.iterdir() if p.is_dir())
BAD_CASES = sorted(p.name for p in BAD.iterdir())


@pytest.fixture(scope="session")
def ansible_home(tmp_path_factory) -> Path:
    """Ansible with its defaults: an empty config file and HOME, not the machine's."""
    home = tmp_path_factory.mktemp("ansible-home")
    (home / "ansible.cfg").write_text("")
    return home


def ansible_inventory(home: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ansible-inventory", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("ansible-core is not installed (pip install -e '.[dev]')")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CONFIG": str(home / "ansible.cfg"), "LC_ALL": "C.UTF-8"}
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="session")
def oracle(ansible_home) -> dict[str, dict]:
    """``ansible-inventory --list`` for every good case, run two at a time."""
    def run(name: str) -> tuple[str, dict]:
        src = str(source(GOOD / name))
        r = ansible_inventory(ansible_home, "-i", src, "--list")  # (a file in it may fail)
        assert r.returncode == 0 and f"Unable to parse {src} " not in r.stderr, (name, r.stderr)
        return name, json.loads(r.stdout)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, GOOD_CASES))


def canonical(data) -> str:
    """Data as one text: equal data, equal text (NaN included, which is never == itself)."""
    return json.dumps(data, sort_keys=True, indent=1)


def test_the_corpus_is_large_enough():
    assert len(GOOD_CASES) >= 50 and len(BAD_CASES) >= 30


@pytest.mark.parametrize("case", GOOD_CASES)
def test_list_equals_ansible_inventory(case, oracle):
    model = read_model(source(GOOD / case))
    ours = json.loads(resolve.dumps(resolve.Resolver(model, reveal_secrets=True).as_list()))
    assert canonical(ours) == canonical(oracle[case])


@pytest.mark.parametrize("case", ["gv-forms", "legacy-names", "yaml-lab", "dir-inv",
                                  "host-named-like-group-ini", "json-numbers",
                                  "not-utf8-ini"])
def test_cli_list_and_host_equal_ansible_inventory(case, oracle, ansible_home):
    src = str(source(GOOD / case))
    cli = [sys.executable, "-m", "pytest_kvm", "inventory", "-i", src, "--show-secrets"]
    ours = subprocess.run([*cli, "--list"], capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0, ours.stderr
    assert canonical(json.loads(ours.stdout)) == canonical(oracle[case])
    host = sorted(oracle[case]["_meta"]["hostvars"])[0]
    ours = subprocess.run([*cli, "--host", host], capture_output=True, text=True, timeout=60)
    theirs = ansible_inventory(ansible_home, "-i", src, "--host", host)
    assert ours.returncode == 0
    assert canonical(json.loads(ours.stdout)) == canonical(json.loads(theirs.stdout))


@pytest.mark.parametrize("case", BAD_CASES)
def test_what_ansible_refuses_is_refused_in_one_line(case, ansible_home):
    path = BAD / case
    theirs = ansible_inventory(ansible_home, "-i", str(path), "--list")
    assert "Unable to parse" in theirs.stderr or theirs.returncode != 0, \
        f"ansible accepts {case}: {theirs.stdout}"
    with pytest.raises(InventoryError) as exc:
        read_model(path)
    message = str(exc.value)
    assert message.startswith(str(path)) and "\n" not in message
    cli = subprocess.run([sys.executable, "-m", "pytest_kvm", "inventory", "-i", str(path),
                          "--list"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and cli.stdout == ""
    assert cli.stderr.strip() == message, cli.stderr  # one line, no traceback


def test_several_sources_merge_as_ansible_merges_them(ansible_home):
    a, b = str(source(GOOD / "kubespray")), str(source(GOOD / "gv-forms"))
    ours = subprocess.run([sys.executable, "-m", "pytest_kvm", "inventory", "-i", a, "-i", b,
                           "--list", "--show-secrets"], capture_output=True, text=True,
                          timeout=60)
    theirs = ansible_inventory(ansible_home, "-i", a, "-i", b, "--list")
    assert ours.returncode == 0
    assert canonical(json.loads(ours.stdout)) == canonical(json.loads(theirs.stdout))


@pytest.mark.parametrize("case", [*(f"good/{c}" for c in GOOD_CASES),
                                  *(f"bad/{c}" for c in BAD_CASES)])
def test_no_input_in_the_corpus_gives_a_traceback_to_a_run(case):
    """What a test run reads (``load``, as --hosts and --check do): a usable inventory or
    one line naming the file; never another exception."""
    kind, name = case.split("/")
    path = source(GOOD / name) if kind == "good" else BAD / name
    try:
        load(path)
    except InventoryError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path)), exc


def test_a_host_named_like_its_group_gives_its_variables_to_the_group():
    """The homelab layout (``[pihole]`` holding ``pihole``): as for Ansible, the host line's
    variables are the group's, so group_vars/pihole.yml outranks them and the other member
    gets them too; the run connects where Ansible would."""
    inv = load(source(GOOD / "host-named-like-group-ini"))
    pihole, backup = inv.hosts["pihole"], inv.hosts["backup"]
    assert (pihole.config.host, pihole.config.user) == ("10.0.0.5", "admin")
    assert (backup.config.host, backup.config.user) == ("10.0.0.6", "admin")
    assert backup.vars["dns_port"] == 53
    assert any("both group and host with the same name: pihole" in w for w in inv.warnings)
