"""Shared hosts: another user (the real `nobody`) plants files; nothing of theirs runs as root.

Real sshd hosts (the rig), a real unprivileged user, pytest-kvm run as a user runs it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from pytest_kvm import inventory, remote
from pytest_kvm.errors import InventoryError
from pytest_kvm.guest import GuestSpec, Owner
from pytest_kvm.host import Host, JournalError, UnsafeWorkdir, list_owned, replay, undo_argv
from pytest_kvm.host import controller_id as this_controller
from pytest_kvm.lab import KvmSession
from pytest_kvm.transport import for_entry

from test_plugin import pytest_run


def as_nobody(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "nobody", "--", *argv], check=True)


def dead_owner(run_id: str) -> str:
    """An owner line of a run on this controller whose process is gone."""
    return Owner(run_id, this_controller(), 999999, "gone").line()


@pytest.fixture
def shared():
    """A shared directory like /var/tmp: root's, sticky, world-writable."""
    top = tempfile.mkdtemp(prefix="pytest-kvm-shared-")
    os.chmod(top, 0o755)
    path = os.path.join(top, "shared")
    os.mkdir(path)
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(top)


def plant(workdir: str, marker: str) -> None:
    """What another user leaves in a work dir: a journal of a 'dead run' whose undo would
    run a command as root, and a run dir of a 'dead run'."""
    journal = os.path.join(workdir, "journal")
    as_nobody("mkdir", "-p", journal, os.path.join(workdir, "run", "r1-1"))
    records = [dead_owner("evil0001"),
               json.dumps({"id": 1, "what": "evil", "undo": ["touch", marker]}),
               json.dumps({"id": 2, "what": "evil", "op": "sh", "args": ["-c", f"touch {marker}"]})]
    as_nobody("sh", "-c", 'printf "%s\\n" "$@" > "$0"', f"{journal}/evil0001-main.log", *records)
    as_nobody("sh", "-c", 'printf "%s\\n" "$1" > "$0"', f"{workdir}/run/r1-1/owner",
              dead_owner("evil0001"))


def write_inventory(rig, path, workdir: str | None) -> str:
    text = rig.inventory()
    text = text.replace(f"kvm_workdir={rig.workdir}", f"kvm_workdir={workdir}" if workdir else "")
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("how", ["planted-dir", "planted-parent", "planted-link"])
def test_a_work_dir_another_user_could_write_is_refused(rig, tmp_path, shared, how):
    marker = os.path.join(shared, "pwned")
    if how == "planted-dir":  # nobody made the work dir first and filled it
        workdir = os.path.join(shared, "work")
        as_nobody("mkdir", workdir)
        plant(workdir, marker)
        culprit = workdir
    elif how == "planted-parent":  # a directory above it is nobody's
        culprit = os.path.join(shared, "team")
        as_nobody("mkdir", "-m", "0777", culprit)
        workdir = os.path.join(culprit, "work")
        as_nobody("mkdir", workdir)
        plant(workdir, marker)
    else:  # the work dir is nobody's link to nobody's directory
        theirs = os.path.join(shared, "theirs")
        as_nobody("mkdir", theirs)
        plant(theirs, marker)
        workdir = os.path.join(shared, "work")
        as_nobody("ln", "-s", theirs, workdir)
        culprit = workdir
    write_inventory(rig, tmp_path / "hosts.ini", workdir)
    (tmp_path / "test_it.py").write_text("def test_x(kvm_host):\n    pass\n")

    cleanup = pytest_run(["--hosts", "hosts.ini", "--kvm-cleanup"], tmp_path)
    run = pytest_run(["--hosts", "hosts.ini", "-q", "-rE"], tmp_path)

    assert not os.path.exists(marker), "a planted journal ran"
    assert cleanup.returncode == 1
    assert f"host1: NOT CLEANED: host1: work dir {workdir} is not safe: {culprit} belongs " \
           "to uid 65534" in cleanup.stdout, cleanup.stdout
    assert "remove it (what another user left inside" in cleanup.stdout
    assert "make it yours and" not in cleanup.stdout
    assert run.returncode == 1 and "2 errors" in run.stdout, run.stdout
    assert f"work dir {workdir} is not safe" in run.stdout
    # what nobody planted is still there, untouched (no sweep, no replay)
    assert os.path.exists(os.path.join(workdir, "journal", "evil0001-main.log"))
    assert os.path.exists(os.path.join(workdir, "run", "r1-1", "owner"))


def test_a_work_dir_made_yours_still_refuses_what_another_user_planted_inside(rig, tmp_path,
                                                                             shared):
    """The old advice ("make it yours") adopted a work dir with nobody's journal and run dir
    still inside: every entry is checked, and the fix says to remove it."""
    marker = os.path.join(shared, "pwned")
    workdir = os.path.join(shared, "work")
    as_nobody("mkdir", workdir)
    plant(workdir, marker)
    os.chown(workdir, 0, 0)
    os.chmod(workdir, 0o700)
    write_inventory(rig, tmp_path / "hosts.ini", workdir)
    (tmp_path / "test_it.py").write_text("def test_x(kvm_host):\n    pass\n")
    cleanup = pytest_run(["--hosts", "hosts.ini", "--kvm-cleanup"], tmp_path)
    run = pytest_run(["--hosts", "hosts.ini", "-q", "-rE"], tmp_path)
    assert not os.path.exists(marker), "a planted journal ran"
    assert cleanup.returncode == 1, cleanup.stdout
    assert f"work dir {workdir} is not safe: it holds {workdir}/" in cleanup.stdout
    assert "remove it (what another user left inside would stay" in cleanup.stdout
    assert run.returncode == 1 and "2 errors" in run.stdout, run.stdout
    assert os.path.exists(os.path.join(workdir, "journal", "evil0001-main.log"))


@pytest.fixture
def host1(rig, tmp_path):
    inv = inventory.load(write_inventory(rig, tmp_path / "hosts.ini", str(tmp_path / "work")))
    host = Host(inv.hosts["host1"], for_entry(inv.hosts["host1"], inv))
    yield host
    host.transport.close()


def test_the_default_work_dir_is_per_user_and_private(rig, tmp_path):
    inv = inventory.load(write_inventory(rig, tmp_path / "hosts.ini", None))
    host = Host(inv.hosts["host1"], for_entry(inv.hosts["host1"], inv))
    try:
        assert host.workdir == "/var/tmp/pytest-kvm-0"
        assert host.run(["stat", "-c", "%a %u", host.workdir]).stdout.split() == ["700", "0"]
    finally:
        host.transport.close()


def test_a_journal_is_replayed_only_as_the_undo_operations_pytest_kvm_writes(host1, tmp_path):
    marker = tmp_path / "ran"
    journal = f"{host1.workdir}/journal/tamper01-main.log"
    lines = [dead_owner("tamper01"),
             json.dumps({"id": 1, "what": "old form", "undo": ["touch", str(marker)]}),
             json.dumps({"id": 2, "what": "shell", "op": "sh", "args": ["-c", f"touch {marker}"]}),
             json.dumps({"id": 3, "what": "bad arg", "op": "undo-pci-driver",
                         "args": ["0000:01:00.0; touch x", "", "(null)"]}),
             json.dumps({"id": 4, "what": "path", "op": "undo-sriov-pf",
                         "args": ["../../../tmp", "0", "1"]}),
             json.dumps({"id": 5, "what": "unnamed", "op": "undo-pci-driver",
                         "args": ["0000:7f:1f.7", "e1000e", "(null)"]}),
             "not json at all"]
    host1.run(["sh", "-c", 'mkdir -p "${0%/*}" && printf "%s\\n" "$@" > "$0"', journal, *lines])
    undone = replay(host1, journal)
    assert not marker.exists()
    assert [u.split(":")[0] for u in undone] == ["unnamed", "path", "bad arg", "shell"]
    assert "REFUSED (0000:7f:1f.7 is not a device the inventory names for host1" in undone[0]
    assert all("REFUSED (not an undo operation pytest-kvm writes" in u for u in undone[1:])
    assert not host1.run(["test", "-e", journal], check=False).ok  # the journal is gone
    with pytest.raises(JournalError):
        undo_argv("undo-pci-driver", ["0000:01:00.0", "e1000e$(id)", "(null)"])
    assert undo_argv("undo-sriov-pf", ["0000:01:00.0", "0", "1"])[:2] == ["sh", "-c"]


def test_odd_names_in_the_work_dir_are_never_removed(host1, tmp_path):
    """Run dirs are listed NUL-separated; only direct children with names pytest-kvm gives
    are swept, whatever else lies there."""
    from pytest_kvm.guest.sweep import sweep

    run = f"{host1.workdir}/run"
    odd = ["bad name", "new\nline", "-rf", ".hidden"]
    victim = tmp_path / "bad"
    victim.mkdir()  # what a name split at its space would have hit
    for name in [*odd, "good0001-1"]:
        host1.run(["mkdir", "-p", f"{run}/{name}"])
        host1.run(["sh", "-c", 'printf "%s\\n" "$1" > "$0"', f"{run}/{name}/owner",
                   dead_owner("good0001")])
    host1.run(["ln", "-s", str(tmp_path), f"{run}/link0001-1"])
    listed = [path for path, _ in list_owned(host1, "run", "dir")]
    assert listed == [f"{run}/good0001-1"]
    assert sweep(host1, None) == [f"{run}/good0001-1"]
    left = host1.run(["ls", "-A", run]).stdout
    assert all(n.split("\n")[0] in left for n in odd) and "link0001-1" in left
    assert victim.exists()


def test_a_cached_upload_is_used_only_when_its_hash_matches(host1, tmp_path):
    local = tmp_path / "kernel"
    local.write_bytes(b"the real kernel\n" * 1000)
    remote_path = host1.put_cached(str(local))
    host1.run(["sh", "-c", 'printf planted > "$0"', remote_path])  # replaced behind our back
    assert host1.put_cached(str(local)) == remote_path
    assert host1.run(["sha256sum", remote_path]).stdout.split()[0] == \
        __import__("hashlib").sha256(local.read_bytes()).hexdigest()


def test_remote_scripts_are_files_that_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make setup installs it)")
    folder = os.path.dirname(remote.__file__)
    scripts = sorted(f for f in os.listdir(folder) if f.endswith(".sh"))
    assert {"workdir.sh", "list-owned.sh", "undo-pci-driver.sh"} <= set(scripts)
    r = subprocess.run(["shellcheck", "-s", "sh", *scripts], cwd=folder, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout
    guest = os.path.join(os.path.dirname(folder), "guest")  # the micro guest's init
    scripts = sorted(f for f in os.listdir(guest) if f.endswith(".sh"))
    assert {"micro-init.sh", "micro-hostroot.sh"} <= set(scripts)
    r = subprocess.run(["shellcheck", "-s", "sh", *scripts], cwd=guest, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout


def test_session_refuses_an_unsafe_work_dir_before_any_sweep(rig, tmp_path, shared):
    workdir = os.path.join(shared, "work")
    as_nobody("mkdir", workdir)
    marker = os.path.join(shared, "pwned")
    plant(workdir, marker)
    inv = inventory.load(write_inventory(rig, tmp_path / "hosts.ini", workdir))
    session = KvmSession(inv, Owner.current("hostile1"))
    try:
        with pytest.raises(UnsafeWorkdir, match="belongs to uid 65534 with mode 0755"):
            session.host("host1")
    finally:
        session.close()
    assert not os.path.exists(marker)


def test_a_comma_in_a_path_cannot_add_a_qemu_option(rig, tmp_path):
    """kvm_workdir goes into -chardev/-blockdev option strings: a comma there is doubled, so
    `logfile=` cannot be pointed anywhere (QEMU keeps the last duplicate key)."""
    short = tempfile.mkdtemp(prefix="pk")  # unix socket paths have 108 bytes at most
    evil = os.path.join(short, "e")
    workdir = f"{short}/w,logfile={evil},x=y"
    path = tmp_path / "hosts.ini"
    path.write_text(rig.inventory().replace(f"kvm_workdir={rig.workdir}",
                                            f"kvm_workdir='{workdir}'"))
    inv = inventory.load(path)
    session = KvmSession(inv, Owner.current("comma001"))
    try:
        host = session.host("host1")
        guest = session.start_guest(host, GuestSpec(name="comma"), "comma")
        try:
            assert guest.run("echo up") == (0, "up\n")
            assert guest.rundir.startswith(workdir + "/run/")
            assert "up" in host.run(["cat", f"{guest.rundir}/console.log"]).stdout
        finally:
            guest.stop()
    finally:
        session.close()
    assert not os.path.exists(evil)
    shutil.rmtree(short)


@pytest.mark.parametrize("key, value, expected", [
    ("kvm_guest_root", "'/dev/vda init=/bin/sh'", "must be a device path such as /dev/vda"),
    ("kvm_guest_root", "vda", "must be a device path"),
    ("kvm_l1_devices", "usb-host:hostbus=1", "'usb-host' is not an emulated device"),
    ("kvm_l1_devices", "igb:romfile=/etc/shadow", "igb option 'romfile=/etc/shadow' is not"),
    ("kvm_l1_devices", "nvme:serial=n1:drive=x", "nvme option 'drive=x' is not allowed"),
    ("kvm_migration_address", "'0.0.0.0:1,server=on'", "must be an IP address or a DNS name"),
    ("kvm_migration_address", "host;rm", "must be an IP address or a DNS name"),
    ("kvm_workdir", "\"'/tmp/a\\nb'\"", "must not hold control characters"),
])
def test_values_that_would_inject_are_refused(key, value, expected):
    with pytest.raises(InventoryError) as exc:
        inventory.parse(f"[a]\nh1 {key}={value}\n", "hosts.ini")
    assert str(exc.value).startswith(f"hosts.ini:2: {key} ") and expected in str(exc.value)


@pytest.mark.parametrize("keys, expected", [
    ("ansible_ssh_common_args='-o StrictHostKeyChecking=accept-new "
     "-o UserKnownHostsFile=/dev/null'", "accept-new with known_hosts /dev/null would accept"),
    ("kvm_host_key=accept-new kvm_known_hosts=/dev/null", "would accept any host key"),
])
def test_host_key_policies_that_check_nothing_are_refused(keys, expected):
    with pytest.raises(InventoryError) as exc:
        inventory.parse(f"[a]\nh1 {keys}\n", "hosts.ini")
    assert str(exc.value).startswith("hosts.ini:2: ") and expected in str(exc.value)


@pytest.mark.parametrize("how", ["as-is", "templated"])
def test_secrets_stay_out_of_tracebacks_junit_and_allure(rig, tmp_path, how):
    """A failing check run with -l (locals in tracebacks), JUnit XML and Allure: the
    inventory's passwords appear nowhere, also where a password is rendered from another
    variable (``ansible_password="{{ vault_pw }}"``: that variable is a secret too)."""
    secret, sudo_secret = "Sup3r-S3cret-pw", "Sud0-S3cret-pw"
    if how == "as-is":
        extra = f"ansible_password={secret}\nansible_become_password={sudo_secret}"
    else:
        extra = (f"vault_pw={secret}\nansible_password='{{{{ vault_pw }}}}'\n"
                 f"vault_sudo={sudo_secret}\nansible_become_password='{{{{ vault_sudo }}}}'")
    (tmp_path / "hosts.ini").write_text(rig.inventory(extra=extra))
    (tmp_path / "test_it.py").write_text(
        "def test_fails(kvm_host, kvm_session):\n"
        "    entry = kvm_host.entry\n"
        "    config, variables = entry.config, dict(entry.vars)\n"
        "    assert config is None, (config, variables, kvm_host.transport)\n")
    r = pytest_run(["--hosts", "hosts.ini", "-l", "-vv", "--junitxml", "junit.xml",
                    "--alluredir", "allure"], tmp_path)
    assert r.returncode == 1 and "2 failed" in r.stdout, r.stdout[-2000:]
    assert "Secret('***')" in r.stdout  # the values were there, hidden
    seen = [r.stdout, r.stderr, (tmp_path / "junit.xml").read_text()]
    seen += [p.read_text(errors="replace") for p in (tmp_path / "allure").iterdir()]
    listed = subprocess.run([sys.executable, "-m", "pytest_kvm", "inventory", "-i",
                             "hosts.ini", "--list"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0 and '"ansible_password": "***"' in listed.stdout
    seen += [listed.stdout, listed.stderr]
    assert not [s for s in seen if secret in s or sudo_secret in s]


def test_a_secret_templated_into_another_key_is_refused_without_showing_it(tmp_path):
    """kvm_workdir made from the password would put it in paths, logs and reports."""
    path = tmp_path / "hosts.ini"
    path.write_text("[a]\nh1 vault_pw=Sup3r-S3cret-pw ansible_password='{{ vault_pw }}' "
                    "kvm_workdir='/tmp/{{ vault_pw }}'\n")
    with pytest.raises(InventoryError) as exc:
        inventory.load(path)
    assert str(exc.value).startswith(f"{path}:2: kvm_workdir is made from a secret")
    assert "Sup3r" not in str(exc.value)


# -- images and disks are untrusted input ------------------------------------------------------
@pytest.fixture(scope="module")
def rig_session(rig, tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "hosts.ini"
    path.write_text(rig.inventory())
    session = KvmSession(inventory.load(path), Owner.current("images01"))
    yield session
    session.close()


def _image_naming(tmp_path, target: str, fmt: str = "raw") -> str:
    """An image from the internet: a qcow2 whose header names a host file as its backing."""
    image = str(tmp_path / "downloaded.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", target, image],
                   check=True)
    return image


def test_a_guest_image_that_names_a_backing_file_is_refused(rig_session, tmp_path):
    """Its guest would read the named host file (here /etc/shadow) as its disk."""
    from pytest_kvm.guest import Disk
    from pytest_kvm.guest.launch import UntrustedImage

    spec = GuestSpec(name="img", serial=True, shell=True,
                     disks=(Disk(image=_image_naming(tmp_path, "/etc/shadow")),))
    with pytest.raises(UntrustedImage, match=r"downloaded.qcow2 names a backing file "
                                             r"\(/etc/shadow\), which the guest would read"):
        rig_session.start_guest(rig_session.host("host1"), spec, "evil-image")


def test_qemu_gets_the_chain_explicitly_whatever_an_image_names(rig_session, tmp_path,
                                                                  monkeypatch):
    """Past the check (disabled here), QEMU still opens the image as itself: the named host
    file never reaches the guest (its disk reads zeros, not the file's bytes)."""
    from pytest_kvm.guest import Disk
    from pytest_kvm.guest import launch as launch_mod

    secret = tmp_path / "host-secret"
    secret.write_bytes(b"HOST-SECRET-" + b"x" * 500)
    monkeypatch.setattr(launch_mod, "untrusted_image", lambda *a, **kw: None)
    spec = GuestSpec(name="img", serial=True, shell=True,
                     disks=(Disk(image=_image_naming(tmp_path, str(secret))),))
    guest = rig_session.start_guest(rig_session.host("host1"), spec, "chain")
    try:
        seen = guest.sh("head -c 12 /dev/vda | od -An -c")
        assert "H   O   S   T" not in seen and "\\0" in seen, seen
    finally:
        guest.stop()


def test_a_disk_found_on_shared_storage_is_never_taken_over(rig_session, tmp_path, shared):
    """A migration's source makes its shared disk itself (exclusively): one planted at that
    path (another user's, or a leftover) is refused, and left as it was."""
    from pytest_kvm.errors import KvmError
    from pytest_kvm.guest import Disk

    planted = os.path.join(shared, "mig-0000.qcow2")
    as_nobody("qemu-img", "create", "-q", "-f", "qcow2", planted, "64M")
    before = open(planted, "rb").read()
    spec = GuestSpec(name="img", serial=True, shell=True, disks=(Disk(shared=planted),))
    host = rig_session.host("host1")
    runs = host.run(["ls", f"{host.workdir}/run"], check=False).stdout
    with pytest.raises(KvmError, match="File exists|exists"):
        rig_session.start_guest(host, spec, "planted")
    assert open(planted, "rb").read() == before
    assert host.run(["ls", f"{host.workdir}/run"], check=False).stdout == runs  # its run dir went


def test_a_shared_storage_dir_others_could_write_is_refused(rig_session, shared):
    """kvm_shared_storage is checked like the work dir: root's and sticky (like /tmp), or
    writable by its owner (the connecting user or root) alone."""
    host = rig_session.host("host1")
    theirs = os.path.join(shared, "theirs")
    as_nobody("mkdir", theirs)
    open_dir = os.path.join(shared, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    assert host.shared_dir_problem(shared) is None  # root's, sticky
    assert "belongs to uid 65534 with mode 0755" in host.shared_dir_problem(theirs)
    assert f"{open_dir} belongs to uid 0 with mode 0777" in host.shared_dir_problem(open_dir)
    assert host.shared_dir_problem(os.path.join(shared, "none")).endswith("is not a directory")


# -- the guest is untrusted --------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_guest(rig_session):
    """A micro guest with a guest-agent port, which the guest writes to itself: what a
    hostile agent sends."""
    guest = rig_session.start_guest(rig_session.host("host1"),
                                    GuestSpec(name="hostile", serial=True, shell=True,
                                              agent=True), "hostile")
    yield guest
    guest.stop()


def _agent_says(guest, text: str) -> None:
    """The guest writes ``text`` to its agent port (``$(...)``: made by the guest)."""
    port = guest.sh("for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name)\" = "
                    "org.qemu.guest_agent.0 ] && echo /dev/${p##*/}; done; true").strip()
    quoted = f'"{text}"' if text.startswith("$(") else shlex.quote(text)
    guest.sh(f"printf '%s' {quoted} > {port}")


@pytest.mark.parametrize("sent, call, expected", [
    ('{"error": "boom"}\n', "execute", "AgentError: .*guest-info: malformed error"),
    ('{"return": {"pid": "1; reboot"}}\n', "run", "AgentError: .*'pid' is not int"),
    ('{"return": {"pid": 7}}\n{"return": {"exited": true, "exitcode": 0, "out-data": '
     '"!!!"}}\n', "run", "AgentError: .*'out-data' is not base64"),
    ('{"return": ' + "[" * 200000 + "\n", "execute", "AgentUnavailable: .*no answer"),
    ("[1]\n", "sync", "False"),
    ("$(head -c 300000 /dev/zero | tr '\\0' x)", "execute",
     "OutputTooLong: .*longer than 100000 bytes"),
])
def test_a_hostile_agent_gives_the_agents_own_error(hostile_guest, sent, call, expected):
    """Malformed replies (not an object, a wrong type, bad base64, nesting past Python's
    recursion limit) and an endless line: the agent's error, never AttributeError,
    TypeError or RecursionError; a reply is bounded (here at 100 kB)."""
    import re

    from pytest_kvm.guest.agent import Agent

    agent = Agent(hostile_guest.host.connect_unix(f"{hostile_guest.rundir}/ga.sock"),
                  "host1/hostile", max_line=100000)
    try:
        _agent_says(hostile_guest, sent)
        time.sleep(0.5)  # (in the controller's socket before the call reads)
        try:
            if call == "sync":
                outcome = str(agent.sync(timeout=2))
            elif call == "run":
                outcome = str(agent.run("true", timeout=3))
            else:
                outcome = str(agent.execute("guest-info", timeout=3))
        except Exception as exc:  # noqa: BLE001 - which exception it is, is the point
            outcome = f"{type(exc).__name__}: {exc}"
        assert re.match(expected, outcome), outcome
    finally:
        agent.close()


@pytest.mark.parametrize("limit, command, message", [
    ("max_line", "head -c 200000 /dev/zero | tr '\\0' a", "a line longer than 50000"),
    ("max_reply", "seq 1 100000", "more than 50000"),
])
def test_a_guests_console_is_bounded_per_line_and_per_reply(hostile_guest, limit, command,
                                                            message):
    """A line past the limit, or a reply past it (50 kB here), is a clear error (the command
    is interrupted) and the console still works after."""
    from pytest_kvm.errors import OutputTooLong

    shell = hostile_guest.shell
    default = getattr(shell, limit)
    setattr(shell, limit, 50000)
    try:
        with pytest.raises(OutputTooLong, match=f"printed {message} characters"):
            hostile_guest.run(command)
    finally:
        setattr(shell, limit, default)
    assert hostile_guest.run("echo ok", timeout=60) == (0, "ok\n")


def test_what_a_guest_prints_reaches_no_terminal_raw(hostile_guest, caplog):
    """Escape sequences a guest prints (clear screen, set the terminal's title) are shown
    escaped in errors and in pytest-kvm's log lines."""
    import logging

    from pytest_kvm.guest import GuestError

    with pytest.raises(GuestError) as info:
        hostile_guest.run("printf '\\033[2J\\033]0;pwned\\007'; false")
    assert "\x1b" not in str(info.value) and "\x07" not in str(info.value)
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in str(info.value)
    with caplog.at_level(logging.INFO, logger="pytest_kvm.guest"):
        logging.getLogger("pytest_kvm.guest").info("guest said %s", "\x1b[2J")
    assert "guest said \\x1b[2J" in caplog.text and "\x1b" not in caplog.text


# -- the same rules wherever a setting comes from ----------------------------------------------
def _ssh_config_home(rig, tmp_path, monkeypatch, text: str) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(text)
    monkeypatch.setenv("HOME", str(home))


def _config_host(name: str, address: str, rig, *extra: str) -> str:
    lines = [f"Host {name}", f"  HostName {address}", "  User root", f"  IdentityFile {rig.key}",
             f"  UserKnownHostsFile {rig.known_hosts}", *(f"  {e}" for e in extra)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("settings, expected", [
    (("StrictHostKeyChecking accept-new", "UserKnownHostsFile /dev/null"),
     "accept-new with known_hosts /dev/null would accept any host key"),
    (("StrictHostKeyChecking no",), "StrictHostKeyChecking no is not supported"),
])
def test_host_key_settings_from_ssh_config_get_the_inventorys_checks(rig, tmp_path,
                                                                      monkeypatch, settings,
                                                                      expected):
    from pytest_kvm.errors import TransportError

    text = (f"Host lab\n  {settings[-1] if len(settings) > 1 else ''}\n"
            + _config_host("lab", rig.hosts[0].address, rig, settings[0]))
    _ssh_config_home(rig, tmp_path, monkeypatch, text)
    inv = inventory.parse("[a]\nlab\n")
    with pytest.raises(TransportError, match=r"\.ssh/config \(Host lab\): " + expected):
        for_entry(inv.hosts["lab"], inv)


def test_a_multi_hop_proxy_jump_from_ssh_config_goes_through_every_hop(rig, tmp_path,
                                                                       monkeypatch):
    """ProxyJump hop1,hop2 to host1: the session reaches host1 from hop2 (host2's address);
    only the first hop would have reached it from host1 itself."""
    h1, h2 = rig.hosts[0].address, rig.hosts[1].address
    _ssh_config_home(rig, tmp_path, monkeypatch,
                     _config_host("hop1", h1, rig) + _config_host("hop2", h2, rig)
                     + _config_host("target", h1, rig, "ProxyJump hop1,hop2"))
    inv = inventory.parse("[a]\ntarget\n")
    transport = for_entry(inv.hosts["target"], inv)
    try:
        assert [transport.proxy.name, transport.proxy.proxy.name] == ["hop2", "hop1"]
        who = transport.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()
        assert who[0] == h2, who
    finally:
        transport.close()


# -- what pytest-kvm writes and reads on the controller ----------------------------------------
def test_image_build_out_replaces_a_link_planted_at_its_name(shared, tmp_path, monkeypatch):
    """`image build --out` into a directory others can write: the link nobody planted there
    (pointing at a file of root's) is replaced by the image, the file it points at untouched.
    (The cached image is a small qcow2 here: building the real one is test_image's.)"""
    from pytest_kvm import cli
    from pytest_kvm.guest import distro

    cached = tmp_path / "cached.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(cached), "1M"], check=True)
    monkeypatch.setattr(distro, "default_path", lambda release="bookworm": cached)
    victim = tmp_path / "root-owned"
    victim.write_text("precious\n")
    out = os.path.join(shared, "out.qcow2")
    as_nobody("ln", "-s", str(victim), out)
    assert cli.main(["image", "build", "--out", out]) == 0
    assert victim.read_text() == "precious\n"
    assert not os.path.islink(out) and os.stat(out).st_uid == 0
    assert open(out, "rb").read() == cached.read_bytes()


def test_a_controller_cache_another_user_could_write_is_refused(tmp_path, shared, monkeypatch):
    """XDG_CACHE_HOME on a shared directory: a pytest-kvm cache dir nobody made (or a kernel
    they planted in ours) is refused, naming it; never booted."""
    from pytest_kvm.files import UnsafePath, private_dir

    theirs = os.path.join(shared, "xdg")
    as_nobody("mkdir", "-p", os.path.join(theirs, "pytest-kvm", "kernels"))
    with pytest.raises(UnsafePath, match=r"the controller's cache .*/xdg/pytest-kvm is not safe: "
                                         r".*/xdg/pytest-kvm belongs to uid 65534; remove"):
        private_dir(os.path.join(theirs, "pytest-kvm"), "the controller's cache")
    ours = tmp_path / "cache"
    private_dir(ours, "the controller's cache")
    assert oct(os.stat(ours).st_mode & 0o777) == "0o700"
    os.chmod(ours, 0o755)
    os.mkdir(ours / "kernels")
    os.symlink("/etc", ours / "kernels" / "linux-image-6.1")
    with pytest.raises(UnsafePath, match=r"kernels/linux-image-6.1 is a symbolic link; remove"):
        private_dir(ours, "the controller's cache")


def test_results_hold_host_output_for_the_user_alone(rig, tmp_path):
    """The Allure results (the hosts' dmesg, QEMU command lines) are not world-readable."""
    (tmp_path / "hosts.ini").write_text(rig.inventory())
    (tmp_path / "test_it.py").write_text("def test_x(kvm_host):\n    pass\n")
    r = pytest_run(["--hosts", "hosts.ini", "-q"], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:]
    results = tmp_path / "reports" / "allure-results"
    assert any(results.iterdir())
    assert os.stat(results).st_mode & 0o077 == 0


def test_a_migration_console_drops_an_endless_line_and_reads_on(hostile_guest, caplog):
    """The migration's console reader (heartbeats, counter lines): a 6 MB line is dropped
    past the limit (said once), the beat after it is read."""
    import logging

    from pytest_kvm.features.migration import CounterWatch

    watch = CounterWatch()
    watch.attach(hostile_guest, "source")
    try:
        with caplog.at_level(logging.WARNING, logger="pytest_kvm.migration"):
            hostile_guest.sh("{ head -c 6000000 /dev/zero | tr '\\0' x; echo; "
                             "echo PKVM-BEAT 7; } > /dev/hvc0", timeout=120)
            watch.wait_beats("source", 1, 60)
        assert [b[1] for b in watch.beats] == [7]
        assert "host1/hostile: a console line longer than 4194304 bytes: dropped" in caplog.text
    finally:
        watch.close()
