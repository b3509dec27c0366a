#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /run /tmp /mnt /root
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
hostname "$(sed -n 's/.*pkvm.hostname=\([^ ]*\).*/\1/p' /proc/cmdline)"
[ "$(hostname)" = "(none)" ] || [ -n "$(hostname)" ] || hostname pytest-kvm-guest
# Drivers for the devices present, from their modaliases, as udev would load them. Repeat
# while new devices appear (virtio_pci creates the virtio devices its children drive).
prev=
for _ in 1 2 3 4 5; do
  cur=$(cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u)
  [ "$cur" = "$prev" ] && break
  for alias in $cur; do modprobe -q "$alias" 2>/dev/null; done
  prev=$cur
done
# The CPU's modalias (kvm_intel/kvm_amd by vmx/svm) is too long for busybox's modprobe:
# match it against the CPU aliases here.
cpu=$(cat /sys/devices/system/cpu/modalias 2>/dev/null)
grep '^alias cpu:' "/lib/modules/$(uname -r)/modules.alias" | while read -r _ pattern module; do
  # shellcheck disable=SC2254 # (the alias is a glob pattern)
  case "$cpu" in $pattern) modprobe -q "$module";; esac
done
ip link set lo up 2>/dev/null
# A distro root disk booted with this kernel (pkvm.root=/dev/vda): hand over to its init.
root=$(sed -n 's/.*pkvm.root=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$root" ]; then
  modprobe -q crc32c_generic; modprobe -q ext4
  mkdir -p /newroot
  if mount -o rw "$root" /newroot; then
    umount /dev/pts; mount --move /dev /newroot/dev; umount /proc /sys
    exec switch_root /newroot /sbin/init
  fi
  echo "pytest-kvm: cannot mount $root" > /dev/console
fi
# shellcheck source=/dev/null # (micro-hostroot.sh, checked on its own)
grep -q pkvm.hostroot /proc/cmdline && . /etc/pkvm-hostroot.sh
# pkvm.shell=1: a login shell on the virtio console named @SHELL@ too, for the controller's
# commands (kernel messages stay on ttyS0). Its /dev/hvcN: the port's console number, minus
# one (debugfs; the ports appear once virtio_console has talked to the device).
if grep -q pkvm.shell=1 /proc/cmdline; then
  mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
  for _ in $(seq 100); do
    for p in /sys/kernel/debug/virtio-ports/*; do
      grep -qx 'name: @SHELL@' "$p" 2>/dev/null || continue
      n=$(sed -n 's/^console_vtermno: //p' "$p")
      [ -n "$n" ] && hvc=/dev/hvc$((n - 1))
    done
    [ -n "$hvc" ] && break
    sleep 0.1
  done
  if [ -n "$hvc" ]; then
    # Its controlling terminal (setsid -c), so ^C interrupts a command that timed out; started
    # by start-stop-daemon, not `&`: a job of this non-interactive shell would ignore SIGINT,
    # and so would every command of the shell (the -n name matches nothing: always started).
    # shellcheck disable=SC2016 # ($0 is the shell's own argument)
    start-stop-daemon -S -b -n pkvm-shell -x /bin/sh -- -c \
      'while true; do setsid -c sh -l <>"$0" >&0 2>&1; sleep 0.2; done' "$hvc"
  else
    echo "pytest-kvm: no virtio console @SHELL@"
  fi
fi
echo "@READY@ $(uname -r)"
while true; do setsid cttyhack sh -l; done
