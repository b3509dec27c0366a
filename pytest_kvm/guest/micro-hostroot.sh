#!/bin/busybox sh
# Sourced by micro-init.sh when the kernel command line has pkvm.hostroot=1.
arg() { sed -n "s/.*pkvm.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
modprobe -q virtio_pci; modprobe -q 9pnet_virtio; modprobe -q 9p; modprobe -q overlay
modprobe -q tun  # /dev/net/tun, for guests' tap NICs
R=/mnt/host
mkdir -p /mnt/lower /mnt/rw $R
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /mnt/lower
mount -t tmpfs tmpfs /mnt/rw && mkdir -p /mnt/rw/upper /mnt/rw/work
# Writes land in this guest's memory; the parent's files are never changed.
mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work $R ||
  echo "PKVM-HOSTROOT-FAILED"
for d in tmp run var/tmp; do mount -t tmpfs -o mode=1777 tmpfs $R/$d; done
# No dotfiles: every SSH command would run them (and the parent's may be slow here).
rm -f $R/root/.bashrc $R/root/.profile $R/root/.bash_profile $R/root/.bash_login
rm -rf $R/lib/modules; mkdir -p "$R/lib/modules/$(uname -r)"
mount --bind "/lib/modules/$(uname -r)" "$R/lib/modules/$(uname -r)"
mount --rbind /dev $R/dev; mount -t proc proc $R/proc; mount -t sysfs sysfs $R/sys
# The management NIC is the one with the MAC the parent gave it (drivers load in any order).
mac=$(arg mac)
for i in /sys/class/net/*; do [ "$(cat "$i/address")" = "$mac" ] && dev=${i##*/}; done
ip link set "$dev" up && ip addr add 10.0.2.15/24 dev "$dev" && ip route add default via 10.0.2.2
# A private link to another nested host (kvm_l1_link): the NIC with the link's MAC.
lmac=$(arg linkmac)
if [ -n "$lmac" ]; then
  for i in /sys/class/net/*; do [ "$(cat "$i/address")" = "$lmac" ] && ldev=${i##*/}; done
  ip link set "$ldev" up && ip addr add "$(arg linkaddr)" dev "$ldev"
fi
mkdir -p $R/run/sshd $R/run/pkvm
arg authkey | tr ':' ' ' > $R/run/pkvm/authorized_keys
chroot $R ssh-keygen -q -t ed25519 -N '' -f /run/pkvm/host_key
printf '%s\n' "HostKey /run/pkvm/host_key" "PermitRootLogin prohibit-password" \
  "PubkeyAuthentication yes" "PasswordAuthentication no" "KbdInteractiveAuthentication no" \
  "AuthorizedKeysFile /run/pkvm/authorized_keys" "UsePAM no" "StrictModes no" \
  "MaxSessions 64" "MaxStartups 64:30:128" "PidFile /run/pkvm/sshd.pid" \
  "Subsystem sftp internal-sftp" "LogLevel ERROR" > $R/run/pkvm/sshd_config
chroot $R /usr/sbin/sshd -f /run/pkvm/sshd_config
echo "PKVM-HOSTKEY $(cut -d' ' -f1,2 $R/run/pkvm/host_key.pub) PKVM-END"
