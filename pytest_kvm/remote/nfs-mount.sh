#!/bin/sh
# Mount an NFSv4.2 export ($1, server:/path) at $2. soft with a bounded retry (timeo in
# tenths of a second): when the server goes away, I/O fails within about a minute instead of
# hanging a QEMU in uninterruptible sleep for good.
set -eu
modprobe nfsv4
# A client's NFSv4 identity is its hostname unless it has a unique id: two nested hosts of one
# parent share the parent's hostname, and the server would take the second for the first
# (whose opens and locks are then lost: EIO). This boot's id is unique.
id=/sys/module/nfs/parameters/nfs4_unique_id
[ -n "$(cat "$id")" ] || cat /proc/sys/kernel/random/boot_id > "$id"
mkdir -p "$2"
mountpoint -q "$2" && exit 0
mount -t nfs4 -o vers=4.2,soft,timeo=100,retrans=2,lookupcache=none "$1" "$2"
