#!/bin/sh
# Write a PF's sriov_numvfs (through 0 when it changes between non-zero counts).
# $1: the PF; $2: the count.
d=/sys/bus/pci/devices/$1
cur=$(cat "$d/sriov_numvfs")
[ "$cur" = "$2" ] && exit 0
[ "$cur" != 0 ] && echo 0 > "$d/sriov_numvfs"
echo "$2" > "$d/sriov_numvfs"
