"""The transport against real sshd hosts (and the local machine)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pytest_kvm.errors import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    HostUnreachable,
    UnknownHostKey,
)
from pytest_kvm.inventory import parse
from pytest_kvm.transport import LocalTransport, for_entry


@pytest.fixture(params=["ssh", "local"])
def transport(request, ssh):
    return ssh if request.param == "ssh" else LocalTransport()


def test_exit_status_and_streams(transport):
    r = transport.run("echo out; echo err >&2; exit 3", check=False)
    assert (r.status, r.stdout, r.stderr) == (3, "out\n", "err\n")


def test_argv_is_quoted(transport):
    tricky = "a b; echo INJECTED 'q' \"d\" $HOME `id`"
    r = transport.run(["printf", "%s", tricky])
    assert r.stdout == tricky


def test_check_raises_with_host_and_command(transport):
    with pytest.raises(CommandFailed) as exc:
        transport.run(["sh", "-c", "echo boom >&2; exit 7"])
    assert exc.value.result.status == 7
    assert transport.name in str(exc.value) and "boom" in str(exc.value)


def test_env_and_input(transport):
    r = transport.run("read x; echo \"$GREETING $x\"", env={"GREETING": "hi there"},
                      input="world\n")
    assert r.stdout == "hi there world\n"


def test_timeout_kills_remote_process_group(transport):
    marker = f"{300 + os.getpid() % 1000}.{time.monotonic_ns() % 10**6}"
    start = time.monotonic()
    with pytest.raises(CommandTimeout) as exc:
        # a background child that keeps stdout open, and a foreground one
        transport.run(f"sleep {marker} & sleep {marker}", timeout=1)
    assert time.monotonic() - start < 15
    msg = str(exc.value)
    assert transport.name in msg and "timed out after 1 s" in msg
    time.sleep(0.5)
    left = transport.run(["pgrep", "-f", f"[s]leep {marker}"], check=False)
    assert left.stdout == "", f"process group survived the timeout: {left.stdout}"


def test_megabytes_on_both_streams_do_not_deadlock(transport):
    script = ("head -c 4000000 /dev/zero | tr '\\0' o & "
              "head -c 4000000 /dev/zero | tr '\\0' e >&2; wait")
    r = transport.run(script, timeout=60)
    assert len(r.stdout) == 4_000_000 and len(r.stderr) == 4_000_000
    assert set(r.stdout) == {"o"} and set(r.stderr) == {"e"}


def test_concurrent_commands_share_one_connection(ssh):
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = ssh.run(["sh", "-c", f"sleep 0.3; echo {i}"]).stdout.strip()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: str(i) for i in range(12)}
    assert time.monotonic() - start < 3  # in parallel, not one after another


def test_reconnects_once_when_the_connection_died(ssh):
    assert ssh.run(["echo", "one"]).stdout == "one\n"
    ssh._client.get_transport().close()  # the connection drops under us
    assert ssh.run(["echo", "two"]).stdout == "two\n"


def test_put_get_and_upload_cache(ssh, tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(3_000_000))
    remote = ssh.put_cached(str(src))
    assert remote.startswith(ssh.workdir + "/cache/")
    back = tmp_path / "back.bin"
    ssh.get(remote, str(back))
    assert back.read_bytes() == src.read_bytes()
    mtime = ssh.run(["stat", "-c", "%Y.%Z", remote]).stdout
    time.sleep(1.1)
    assert ssh.put_cached(str(src)) == remote  # same content: not uploaded again
    assert ssh.run(["stat", "-c", "%Y.%Z", remote]).stdout == mtime
    src.write_bytes(b"other content")
    assert ssh.put_cached(str(src)) != remote


def test_stream_to_a_remote_process(ssh):
    stream = ssh.open_stream(["cat"])
    stream.send(b"ping\n")
    assert stream.recv(100, timeout=5) == b"ping\n"
    stream.close()


def test_open_tcp_through_the_host(rig, ssh):
    # host1 reaches host2's sshd: a ProxyJump in miniature
    chan = ssh.open_tcp(rig.hosts[1].address, 22)
    assert chan.recv(100).startswith(b"SSH-2.0-")
    chan.close()


def _entry(rig, host=0, **kv):
    inv = parse(rig.inventory(host_vars={f"host{host + 1}": kv}))
    return inv, inv.hosts[f"host{host + 1}"]


def test_host_key_mismatch_is_refused(rig, tmp_path):
    bad = tmp_path / "known_hosts"
    other = rig.hosts[1].host_key_pub
    bad.write_text(f"{rig.hosts[0].address} {other}\n")
    inv, entry = _entry(rig, kvm_known_hosts=str(bad))
    with pytest.raises(HostKeyMismatch, match="does not match"):
        for_entry(entry, inv).run(["true"])


def test_unknown_host_key_refused_by_default(rig, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    inv, entry = _entry(rig, kvm_known_hosts=str(empty))
    with pytest.raises(UnknownHostKey, match="accept-new"):
        for_entry(entry, inv).run(["true"])
    assert empty.read_text() == ""  # never silently added


def test_accept_new_records_the_key_then_pins_it(rig, tmp_path):
    kh = tmp_path / "known_hosts"
    inv, entry = _entry(rig, kvm_known_hosts=str(kh), kvm_host_key="accept-new")
    t = for_entry(entry, inv)
    t.run(["true"])
    t.close()
    assert rig.hosts[0].host_key_pub in kh.read_text()
    kh.write_text(f"{rig.hosts[0].address} {rig.hosts[1].host_key_pub}\n")
    with pytest.raises(HostKeyMismatch):
        for_entry(entry, inv).run(["true"])  # accept-new never replaces a changed key


def test_unreachable_host_is_one_clear_error(rig):
    inv, entry = _entry(rig, ansible_port="2")  # nothing listens there
    with pytest.raises(HostUnreachable) as exc:
        for_entry(entry, inv).run(["true"])
    assert str(exc.value).startswith("host1: cannot connect to") and "\n" not in str(exc.value)


def test_auth_failure_names_the_host(rig, tmp_path):
    key = tmp_path / "stranger"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {key}")
    inv, entry = _entry(rig, ansible_ssh_private_key_file=str(key))
    with pytest.raises(AuthenticationFailed, match="^host1: authentication"):
        for_entry(entry, inv).run(["true"])


def test_proxy_jump_through_an_inventory_host(rig):
    # host2 reached only through host1 (as with `ansible_ssh_common_args='-J host1'`)
    inv, entry = _entry(rig, host=1, ansible_ssh_common_args="'-J host1'")
    t = for_entry(entry, inv)
    assert t.proxy is not None and t.proxy.name == "host1"
    assert t.run(["cat", "/proc/sys/kernel/hostname"]).ok
    who = t.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()
    assert who[0] == rig.hosts[0].address  # the connection came from host1


def test_local_transport_timeout_message():
    with pytest.raises(CommandTimeout, match="localhost: `sleep 5` timed out after 0.2 s"):
        LocalTransport().run(["sleep", "5"], timeout=0.2)


def test_ssh_config_is_read(rig, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host lab-alias\n  HostName {rig.hosts[1].address}\n  User root\n"
        f"  IdentityFile {rig.key}\n  UserKnownHostsFile {rig.known_hosts}\n")
    monkeypatch.setenv("HOME", str(home))
    inv = parse("[a]\nlab-alias\n")
    t = for_entry(inv.hosts["lab-alias"], inv)
    assert (t.hostname, t.user, t.key_file) == (rig.hosts[1].address, "root", rig.key)
    assert t.run(["echo", "via config"]).stdout == "via config\n"
    t.close()
