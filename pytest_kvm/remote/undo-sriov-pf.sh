#!/bin/sh
# Undo: give an SR-IOV PF back its number of VFs and its drivers_autoprobe.
# $1: the PF (0000:01:00.0); $2: sriov_numvfs before; $3: sriov_drivers_autoprobe before.
set -u
d=/sys/bus/pci/devices/$1
echo "$3" > "$d/sriov_drivers_autoprobe"
cur=$(cat "$d/sriov_numvfs")
if [ "$cur" != "$2" ]; then
  [ "$cur" != 0 ] && echo 0 > "$d/sriov_numvfs"
  echo "$2" > "$d/sriov_numvfs"
fi
