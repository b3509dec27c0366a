#!/bin/sh
# Serve a directory over NFSv4.2 with the kernel's NFS server (a nested host of the lab): a
# tmpfs at $1 (NFS cannot export the L1's overlay root), read-write for the network $2 only,
# as the NFSv4 root (fsid=0: clients mount server:/; the overlay root cannot be a pseudo root).
# NFSv4 only: rpc.mountd and rpc.nfsd, no rpcbind. The 90 s grace period after the start is
# ended at once (no client has state to reclaim), or the first opens would wait in it.
# Idempotent: a running server is left as it is.
set -eu
dir=$1; clients=$2
if [ -e /proc/fs/nfsd/threads ] && [ "$(cat /proc/fs/nfsd/threads)" -gt 0 ]; then exit 0; fi
modprobe nfsd
mountpoint -q /proc/fs/nfsd || mount -t nfsd nfsd /proc/fs/nfsd
mkdir -p "$dir" /var/lib/nfs/v4recovery
mountpoint -q "$dir" || mount -t tmpfs -o mode=0755 pytest-kvm-nfs "$dir"
exportfs -o rw,sync,no_root_squash,no_subtree_check,insecure,fsid=0 "$clients:$dir"
rpc.mountd -N 3 --no-udp
rpc.nfsd -N 3 --no-udp 8
echo Y > /proc/fs/nfsd/v4_end_grace
echo "exported $dir to $clients: $(cat /proc/fs/nfsd/versions)"
