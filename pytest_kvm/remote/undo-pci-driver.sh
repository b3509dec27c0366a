#!/bin/sh
# Undo: give a PCI device back its driver and driver_override.
# $1: the device (0000:01:00.0); $2: its driver before ("" for none); $3: its
# driver_override before ("(null)" for none).
set -u
d=/sys/bus/pci/devices/$1
[ -d "$d" ] || exit 0
cur=
[ -e "$d/driver" ] && cur=$(basename "$(readlink "$d/driver")")
[ -n "$cur" ] && [ "$cur" != "$2" ] && echo "$1" > "$d/driver/unbind"
if [ "$3" = "(null)" ] || [ -z "$3" ]; then echo > "$d/driver_override"; else echo "$3" > "$d/driver_override"; fi
if [ -n "$2" ] && [ "$cur" != "$2" ]; then
  echo "$1" > "/sys/bus/pci/drivers/$2/bind" 2>/dev/null || echo "$1" > /sys/bus/pci/drivers_probe
fi
now=
[ -e "$d/driver" ] && now=$(basename "$(readlink "$d/driver")")
[ "$now" = "$2" ] || { echo "driver is '$now', not '$2'"; exit 4; }
