"""Guests on distro images booted through their own bootloaders, with each command channel:
`make image`'s Debian 12 (GRUB, booted by OVMF here), its Debian 13 (`--release trixie`,
kernel 6.12; GRUB, SeaBIOS) and a Debian 12 image built by mkosi, not by us (systemd-boot, a
unified kernel image, mkosi's own initrd, systemd-networkd; OVMF). The agent on the first,
SSH (no agent) on the mkosi image, the console (neither, and noisy) on Debian 13; the
virtio-data suite on Debian 13 over that noisy console (its vCPU hot-plug skipped, for a
reason of Debian 13's kernel under TCG: virtio.cpus_to_come) and the migration suite's
copy-storage and dirty-memory variants on Debian 13, as a user runs them (an inventory naming
the image).

Each image is built once per machine and cached (1.5-3 min each); each boot under TCG takes
45-75 s. The whole matrix (virtio and virtio-data on each image in each channel, every
migration variant on Debian 13) runs by hand: README, "Images made elsewhere".
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_kvm.guest import CloudInit, Disk, GuestSpec, Owner, distro
from pytest_kvm.guest.cloudinit import ed25519_keypair
from pytest_kvm.guest.console import GuestCommandTimeout
from pytest_kvm.guest.spec import DATA_NET, SSH_MAC, Nic
from pytest_kvm.inventory import parse
from pytest_kvm.lab import KvmSession, keypair

from foreign import mkosi_image
from test_plugin import pytest_run

pytestmark = pytest.mark.slow
SUITES = Path(__file__).parent.parent / "suites"
# systemd's loader interface: what systemd-boot and its stub leave in EFI variables
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


@pytest.fixture(scope="module")
def image() -> str:
    return str(distro.build())


@pytest.fixture(scope="module")
def trixie() -> str:
    return str(distro.build(release="trixie"))


@pytest.fixture(scope="module")
def mkosi() -> str:
    return mkosi_image()


@pytest.fixture(scope="module")
def session():
    s = KvmSession(parse("[l]\nlocalhost ansible_connection=local\n"),
                   Owner.current("image001"))
    yield s
    s.close()


def partition_table(image: str, tmp_path: Path) -> tuple[dict, bytes]:
    """The image's partition table as sfdisk (util-linux) reads it back, and its MBR."""
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", image, str(raw)], check=True,
                   timeout=300)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    with open(raw, "rb") as f:
        return table, f.read(512)


def test_the_image_is_a_gpt_disk_with_bios_boot_esp_and_root(image, tmp_path):
    """The layout of Debian's cloud images."""
    table, mbr = partition_table(image, tmp_path)
    assert table["label"] == "gpt"
    assert [(p["name"], p["type"]) for p in table["partitions"]] == [
        ("bios", "21686148-6449-6E6F-744E-656564454649"),  # BIOS boot: GRUB's core image
        ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),  # EFI system partition
        ("root", "0FC63DAF-8483-4772-8E79-3D69D8477DE4")]  # Linux file system
    assert any(mbr[:440])  # GRUB's boot code in the protective MBR
    assert distro.firmware_of(image) == "bios"  # boots either way: SeaBIOS starts faster


def test_the_mkosi_image_is_uefi_only_with_a_discoverable_root(mkosi, tmp_path):
    """mkosi's layout (systemd-repart): an ESP and a root partition of the Discoverable
    Partitions type, no BIOS boot code: only UEFI boots it, which firmware_of finds."""
    table, mbr = partition_table(mkosi, tmp_path)
    assert table["label"] == "gpt"
    assert [(p["name"], p["type"]) for p in table["partitions"]] == [
        ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        ("root-x86-64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")]  # x86-64 root (DPS)
    assert not any(mbr[:440])
    assert distro.firmware_of(mkosi) == "uefi"


@pytest.fixture(scope="class")
def booted(session, image, rig):
    """A guest on the image: UEFI firmware (OVMF), the image's GRUB, kernel and initramfs, a
    cloud-init seed with a user, a password and an SSH key."""
    key = open(rig.key + ".pub").read().strip()
    ci = CloudInit(user="tester", password=secrets.token_urlsafe(12), ssh_keys=(key,),
                   hostname="pkvm-image")
    spec = GuestSpec(name="image", memory=1024, smp=2, disks=(Disk(image=image),),
                     cloud_init=ci, agent=True, firmware="uefi")
    guest = session.start_guest(session.host("localhost"), spec, "test_image")
    yield guest, ci, key
    guest.stop()


class TestAgentGuest:
    """The guest agent: UEFI (OVMF), the suites' usual channel."""

    def test_it_booted_through_its_own_bootloader(self, booted):
        guest, _, _ = booted
        assert "-kernel" not in guest.argv and any("if=pflash" in a for a in guest.argv)
        cmdline = guest.sh("cat /proc/cmdline")
        assert cmdline.startswith("BOOT_IMAGE=/vmlinuz") and "root=LABEL=root" in cmdline  # GRUB's
        assert guest.sh("ls /sys/firmware/efi >/dev/null && echo efi").strip() == "efi"


    def test_commands_go_through_the_guest_agent(self, booted):
        guest, _, _ = booted
        assert guest.channel == "agent"
        assert guest.run("echo out; echo err >&2; exit 3", check=False) == (3, "out\nerr\n")


    def test_console_noise_cannot_reach_a_commands_output(self, booted):
        guest, _, _ = booted
        noisy = ("for i in 1 2 3; do echo '[   12.3] virtio_net: noise' > /dev/console; "
                 "echo '<3>kernel noise' > /dev/kmsg; echo out$i; done")
        assert guest.run(noisy) == (0, "out1\nout2\nout3\n")


    def test_a_command_that_hangs_times_out_and_is_killed(self, booted):
        guest, _, _ = booted
        with pytest.raises(GuestCommandTimeout, match="did not finish within 2 s"):
            guest.run("sleep 300", timeout=2)
        assert guest.run("pgrep -x sleep || echo none") == (0, "none\n")


    def test_cloud_init_set_the_user_password_and_key_from_the_seed(self, booted):
        guest, ci, key = booted
        assert guest.sh("cat /etc/hostname").strip() == ci.hostname
        assert key in guest.sh(f"cat /home/{ci.user}/.ssh/authorized_keys")
        shadow = guest.sh(f"getent shadow {ci.user}").split(":")[1]
        assert shadow.startswith("$") and ci.password not in shadow  # a hash of it
        status = guest.sh("cloud-init status --long")
        assert "status: done" in status and "DataSourceNoCloud" in status, status


    def test_its_services_run(self, booted):
        guest, _, _ = booted
        assert guest.sh("systemctl is-active ssh qemu-guest-agent").split() == ["active", "active"]


    def test_the_password_is_in_no_log(self, booted):
        guest, ci, _ = booted
        for log in ("console.log", "qemu.log", "cmdline"):
            assert ci.password not in guest.read_log(log, 100000)
        assert not guest.host.run(["sh", "-c", f"ls -l {guest.rundir}/seed.iso"]).stdout.startswith(
            "-rw-r")  # 0600


@pytest.fixture(scope="class")
def ssh_guest(session, mkosi, tmp_path_factory):
    """A guest on the mkosi image whose agent does not run (its port is there, as the suites'
    specs ask for it, but the service is masked at boot, as on an image without it): commands
    over SSH, which answers while the agent never does. Its SSH NIC comes after a test NIC (as
    the virtio suites' guests have it), so cloud-init's fallback (DHCP on the first NIC)
    would leave SSH down: the seed's network config names each NIC by MAC (rendered for
    systemd-networkd on this image). Booted as firmware_of says (OVMF)."""
    key, pub = keypair(str(tmp_path_factory.mktemp("ssh")))
    ci = CloudInit(user="tester", password=secrets.token_urlsafe(12), ssh_keys=(pub,),
                   host_key=ed25519_keypair(), hostname="pkvm-ssh",
                   bootcmd=("systemctl mask --now qemu-guest-agent",))
    spec = GuestSpec(name="ssh", memory=1024, smp=2, disks=(Disk(image=mkosi),),
                     nics=(Nic(net=DATA_NET),), cloud_init=ci, agent=True, ssh_key=key,
                     firmware=distro.firmware_of(mkosi))
    guest = session.start_guest(session.host("localhost"), spec, "test_image")
    yield guest, ci
    guest.stop()


class TestSshGuest:
    """mkosi's image, the agent not running: SSH, on an SSH NIC that is not the first."""

    def test_it_booted_through_systemd_boot_and_a_unified_kernel_image(self, ssh_guest):
        guest, _ = ssh_guest
        assert "-kernel" not in guest.argv and any("if=pflash" in a for a in guest.argv)
        efivar = f"/sys/firmware/efi/efivars/{{}}-{LOADER_GUID}"
        # (an EFI variable's file: 4 bytes of attributes, then the UTF-16 value; efivarfs
        # cannot seek, so it is read through a pipe)
        loader = guest.sh(f"cat {efivar.format('LoaderInfo')} | tail -c +5 | tr -d '\\0'")
        stub = guest.sh(f"cat {efivar.format('StubInfo')} | tail -c +5 | tr -d '\\0'")
        assert loader.startswith("systemd-boot") and stub.startswith("systemd-stub"), (
            loader, stub)
        cmdline = guest.sh("cat /proc/cmdline")  # the UKI's own: no root=, no BOOT_IMAGE=
        assert "root=" not in cmdline and "systemd.firstboot=off" in cmdline, cmdline
        # the root found by its partition type (systemd-gpt-auto-generator in mkosi's initrd)
        assert guest.sh("findmnt -n -o SOURCE /").strip() == "/dev/vda2"
        assert guest.sh("systemctl is-active systemd-networkd").strip() == "active"


    def test_without_an_agent_commands_go_over_ssh_pinned_to_the_seeds_host_key(self, ssh_guest):
        guest, ci = ssh_guest
        assert guest.channel == "ssh"
        assert guest.run("id -un; echo err >&2; exit 4", check=False) == (4, "tester\nerr\n")
        pub = guest.sh("sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null")
        assert pub.split()[:2] == ci.host_key[1].split()[:2]  # pinned = what its sshd uses
        with pytest.raises(GuestCommandTimeout, match="did not finish within 2 s"):
            guest.run("sleep 300", timeout=2)


    def test_the_ssh_nic_has_dhcp_and_the_test_nic_is_left_to_the_checks(self, ssh_guest):
        guest, _ = ssh_guest
        addresses = {}
        for line in guest.sh("ip -o link show").splitlines():  # "2: ens3: <...> ... link/ether M"
            fields = line.split()
            if "link/ether" in fields:
                name, mac = fields[1].rstrip(":"), fields[fields.index("link/ether") + 1]
                addresses[mac] = guest.sh(f"ip -o -4 addr show dev {name}")
        assert "10.0.2.15/24" in addresses[SSH_MAC]  # user networking's DHCP
        assert addresses[Nic.mac(0)].strip() == ""  # no address: the checks set theirs


NOISE = ("while :; do for l in 0 1 2 3 4 5 6 7; do echo \"<$l>pkvm noise at level $l\" "
         "> /dev/kmsg; done; echo 'pkvm noise on /dev/console' > /dev/console; sleep 0.2; done")


@pytest.fixture(scope="class")
def console_guest(session, trixie):
    """A guest on the Debian 13 image with neither agent nor SSH, booted as firmware_of says
    (SeaBIOS), whose console is noisy from early boot on (kernel messages at every level and
    writes to /dev/console, several a second): its login and every command go through that
    noise."""
    ci = CloudInit(user="root", password=secrets.token_urlsafe(12), hostname="pkvm-console",
                   bootcmd=(f"nohup sh -c {shlex.quote(NOISE)} >/dev/null 2>&1 &",))
    spec = GuestSpec(name="console", memory=1024, smp=2, disks=(Disk(image=trixie),),
                     cloud_init=ci, agent=False, firmware=distro.firmware_of(trixie))
    guest = session.start_guest(session.host("localhost"), spec, "test_image")
    yield guest
    guest.stop()


class TestConsoleGuest:
    """Debian 13, neither agent nor SSH: the serial console, noisy, booted through SeaBIOS."""

    def test_without_an_agent_the_console_is_the_fallback(self, console_guest):
        assert console_guest.channel == "console"
        assert console_guest.run("id -un; echo done") == (0, "root\ndone\n")


    def test_console_output_and_status_stay_exact_under_a_noisy_console(self, console_guest):
        """Kernel messages at every level and writes to /dev/console while commands run: the
        console channel's output and exit status are the command's own, exactly."""
        assert "pkvm noise" in console_guest.read_log("console.log", 20)  # it is noisy
        for n in (1, 300, 3000):
            expected = "".join(f"{i}\n" for i in range(1, n + 1)) + "err\n"
            assert console_guest.run(f"seq 1 {n}; echo err >&2; exit 3", check=False) == (
                3, expected)
        console_guest.run("head -c 200000 /dev/zero | tr '\\0' x > /tmp/blob")
        # (the shape virtio-data's _guest_sha reads, which noise once broke)
        assert console_guest.sh("sha256sum /tmp/blob; wc -c < /tmp/blob").split() == [
            hashlib.sha256(b"x" * 200000).hexdigest(), "/tmp/blob", "200000"]


    def test_a_command_that_hangs_is_interrupted_and_the_next_one_runs(self, console_guest):
        """A timeout on the console types ^C: the command is killed, the next one runs."""
        for _ in range(3):
            with pytest.raises(GuestCommandTimeout, match="did not finish within 2 s"):
                console_guest.run("sleep 300", timeout=2)
            assert console_guest.run("echo still here", timeout=20) == (0, "still here\n")
        # (no sleep 300 left: the noise loop's sleeps are other sleeps)
        assert console_guest.run("pgrep -fx 'sleep 300' || echo none") == (0, "none\n")


    def test_a_line_typed_after_an_interrupt_at_the_prompt_runs(self, console_guest):
        """^C at bash's prompt (after a command that ended but whose end marker another writer
        broke): bash's readline throws away a line typed before it has handled the signal
        (every time, seen: a framed command's status probe lost so, in CI), so the console
        types a no-op line until it is seen run."""
        console = console_guest.console
        for _ in range(3):
            console.interrupt()
            assert console.run("echo still here", 20) == (0, "still here\n")


    def test_it_booted_through_seabios_and_the_images_grub(self, console_guest):
        assert console_guest.sh("uname -r").startswith("6.12.")  # Debian 13's kernel
        assert "-kernel" not in console_guest.argv
        assert not any("if=pflash" in a for a in console_guest.argv)  # no OVMF: SeaBIOS
        cmdline = console_guest.sh("cat /proc/cmdline")
        assert cmdline.startswith("BOOT_IMAGE=/vmlinuz") and "root=LABEL=root" in cmdline  # GRUB's
        assert console_guest.sh("test -d /sys/firmware/efi && echo efi || echo bios").strip() \
            == "bios"


def run_suites(tmp_path: Path, suites: tuple[str, ...], host: dict, only: str | None = None,
               skip: str | None = None):
    """The suites run as a user runs them: copied into a directory with an inventory (YAML)
    naming the image and the host's other keys; returns pytest's result and the channel each
    guest's commands went through (the summary's "how their commands went"). Nothing is
    skipped, or only what ``skip`` names (one check)."""
    for suite in suites:
        shutil.copy(SUITES / suite, tmp_path)
    (tmp_path / "hosts.yml").write_text(json.dumps(
        {"all": {"hosts": {"localhost": {"ansible_connection": "local", **host}}}}))
    r = pytest_run(["-q", "-rs", "--hosts", "hosts.yml", *(["-k", only] if only else [])],
                   tmp_path, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:]
    if skip is None:
        assert "skipped" not in r.stdout, r.stdout[-1500:]
    else:
        skipped = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
        assert len(skipped) == 1 and skip in skipped[0], skipped
    summary = r.stdout.split("kvm guests: how their commands went")[1].split("\n=")[0]
    channels = {line.split(": ")[0]: line.split(": ")[1] for line in summary.splitlines()
                if line.startswith("localhost/")}
    assert channels, summary
    return r, channels


def test_virtio_data_runs_on_debian_13_over_a_noisy_console(trixie, tmp_path):
    """What the console channel once failed (words of kernel messages inside a checksum's
    output after a NIC hot-plug, a transfer's checksum wrong): the virtio-data suite on
    Debian 13, commands over the serial console only (kvm_guest_channel), which a stream of
    kernel messages at every level and writes to /dev/console share from early boot on
    (kvm_guest_bootcmd). Its hot-plugs add their own kernel messages. The vCPU hot-plug is
    skipped, for a reason of Debian 13's kernel under TCG (virtio.cpus_to_come); Debian 12's
    runs it (by hand: README, "Distro images")."""
    r, channels = run_suites(tmp_path, ("test_virtio_data.py",), {
        "kvm_guest_image": trixie, "kvm_guest_channel": "console",
        "kvm_guest_bootcmd": [f"nohup sh -c {shlex.quote(NOISE)} >/dev/null 2>&1 &"]},
        skip="the guest's kernel counts no CPU to come")
    assert "20 passed, 1 skipped" in r.stdout, r.stdout[-1500:]
    assert set(channels.values()) == {"console (linux)"}, channels


# The migration suite's other variants take ~15 more minutes on a distro image under TCG (a
# Debian boot each, ping-pong three hops): they run on the micro guest in `make demo`, and on
# Debian 12 and 13 by hand (README, "Distro images"); here the variant that mirrors the
# image's boot disk and the one with a dirtying load run by the distro.
IMAGE_VARIANTS = "copy-storage or dirty-memory"


def test_the_migration_suite_runs_on_debian_13(trixie, tmp_path):
    r, channels = run_suites(tmp_path, ("test_migration.py",), {"kvm_guest_image": trixie},
                             IMAGE_VARIANTS)
    assert "26 passed" in r.stdout, r.stdout[-1500:]
    assert set(channels.values()) <= {"agent (linux)", "ssh (linux)"}, channels


def test_kvm_guest_root_boots_the_images_root_with_the_micro_kernel(session, image):
    """kvm_guest_root (for an image without a bootloader): the micro guest's kernel and
    initramfs, then switch_root to the image's root partition and its own init."""
    ci = CloudInit(user="root", password=secrets.token_urlsafe(12), hostname="pkvm-root")
    spec = GuestSpec(name="root", memory=1024, smp=2, disks=(Disk(image=image),),
                     cloud_init=ci, agent=True, root="/dev/vda3")
    guest = session.start_guest(session.host("localhost"), spec, "test_image")
    try:
        assert "-kernel" in guest.argv and guest.channel == "agent"
        assert guest.sh("findmnt -n -o SOURCE /").strip() == "/dev/vda3"
        assert "pkvm.root=/dev/vda3" in guest.sh("cat /proc/cmdline")
    finally:
        guest.stop()
