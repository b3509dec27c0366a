"""The micro guest's shell on a virtio console of its own (GuestSpec.shell), on a real sshd
host: commands go there, kernel messages stay on the serial console, long output comes back
whole, a timeout is interrupted."""

from __future__ import annotations

import time

import pytest

from pytest_kvm.guest import GuestCommandTimeout, GuestSpec, Owner
from pytest_kvm.guest.cloudinit import CloudInit
from pytest_kvm.guest.image import PROMPT
from pytest_kvm.guest.qemu import controller_id
from pytest_kvm.lab import KvmSession
from pytest_kvm.waiting import first_within


@pytest.fixture(scope="module")
def session(rig_inventory):
    s = KvmSession(rig_inventory, Owner.current("s" + controller_id()[:7]))
    yield s
    s.close()


@pytest.fixture(scope="module")
def shelled(session):
    """A micro guest whose commands go over a virtio console of their own (spec.shell), with
    the serial spec's virtconsole too (a migration's counter writes to /dev/hvc0)."""
    spec = GuestSpec(name="shelled", shell=True, serial=True)
    g = session.start_guest(session.host("host1"), spec, "shell")
    yield g
    g.stop()


def test_a_shell_guest_takes_commands_on_its_virtio_console(shelled):
    assert shelled.channel == "shell"
    assert "pkvm.shell=1" in shelled.sh("cat /proc/cmdline")
    assert shelled.sh("tty").strip() == "/dev/hvc1"  # the serial spec's console is hvc0
    assert shelled.sh("grep -h '^name' /sys/kernel/debug/virtio-ports/*").split() == [
        "name:", "org.pytest-kvm.0", "name:", "org.pytest-kvm.port0",
        "name:", "org.pytest-kvm.shell"]


def test_kernel_messages_stay_out_of_a_shell_guests_output(shelled):
    """The serial console shows what the kernel prints (console=ttyS0); the shell does not."""
    assert shelled.run("echo '<2>pkvm-kernel-noise' > /dev/kmsg; echo ok") == (0, "ok\n")
    assert first_within(lambda: "pkvm-kernel-noise" in shelled.read_log("console.log", 200),
                        10, "the kernel message on the serial console", step=0.5)


def test_a_shell_guest_returns_long_output_whole_and_recovers_from_a_timeout(shelled):
    assert shelled.sh("seq 1 3000") == "".join(f"{n}\n" for n in range(1, 3001))
    with pytest.raises(GuestCommandTimeout, match="`sleep 30` did not finish within 1 s"):
        shelled.run("sleep 30", timeout=1)
    start = time.monotonic()
    assert shelled.run("echo still here") == (0, "still here\n")
    assert time.monotonic() - start < 10  # interrupted (^C), not waited for
    assert shelled.sh("pidof sleep; true") == ""


def test_a_commands_end_is_found_wherever_it_lands_in_what_is_read(shelled, monkeypatch):
    """A command's end marker followed in the same read by much more (a long prompt here; on
    a distro's noisy serial console, a kernel message right after the prompt): the end was
    once searched in the last 64 characters read only, so a command that had finished timed
    out. A slow reader (a loaded controller; here a pause before each read) gets a whole
    answer in one read."""
    shell = shelled.shell
    recv = shell.stream.recv

    def slow_recv(size, timeout=None):
        time.sleep(0.3)
        return recv(size, timeout)

    assert shelled.run(f"PS1='{PROMPT}{'x' * 200}'; echo set", timeout=10) == (0, "set\n")
    try:
        monkeypatch.setattr(shell.stream, "recv", slow_recv)
        for n in range(5):
            assert shelled.run(f"echo {n}", timeout=10) == (0, f"{n}\n")
    finally:
        monkeypatch.undo()
        shelled.run(f"PS1='{PROMPT}'", timeout=10)


@pytest.mark.parametrize("channel", ["shell", "console"])
def test_a_background_jobs_end_leaves_the_shell_as_it_was(shelled, channel):
    """A job started in the background ends while the shell waits at its prompt: busybox with
    echo off (fgets) took the interrupted read for end of input, so the shell exited and was
    started again, and a command typed meanwhile was lost (virtio-data's receiver, in CI)."""
    console = getattr(shelled, channel)
    _, out = console.run("echo $$; sleep 1 </dev/null >/dev/null 2>&1 & echo $!", 30)
    shell_pid, job = out.split()
    first_within(lambda: console.run(f"kill -0 {job} 2>/dev/null || echo gone", 30)[1]
                 == "gone\n", 30, "the background job's end", step=0.5)
    assert console.run("echo $$", 30) == (0, f"{shell_pid}\n")  # the same shell


def test_a_distro_guest_ignores_shell():
    assert GuestSpec(shell=True).virtio_shell
    assert not GuestSpec(shell=True, root="/dev/vda").virtio_shell
    assert not GuestSpec(shell=True, kernel="/boot/vmlinuz").virtio_shell
    assert not GuestSpec(shell=True, cloud_init=CloudInit()).virtio_shell


@pytest.mark.parametrize("channel", ["shell", "console"])
def test_a_micro_guests_shells_do_not_echo_what_is_typed(shelled, channel):
    """Busybox's line editing echoes each typed character with a write of its own, a VM exit
    each (most of a command's time in a nested guest): the micro guest's shells, on the
    virtio console and the serial one, read whole lines with echo off."""
    console = getattr(shelled, channel)
    console.sendline(": pkvm-typed-line; echo pkvm-''done")
    console.expect_exact("pkvm-done", timeout=30)
    assert "pkvm-typed-line" not in console.before, repr(console.before[-300:])
    console.wait_prompt(10)
    assert shelled.run("echo after") == (0, "after\n")
