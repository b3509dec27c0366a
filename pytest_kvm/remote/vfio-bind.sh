#!/bin/sh
# Bind a PCI device to vfio-pci through driver_override (nothing if it already is).
# $1: the device. Prints its driver and override before.
set -e
d=/sys/bus/pci/devices/$1
[ -d "$d" ] || { echo "no PCI device $1"; exit 3; }
modprobe vfio-pci 2>/dev/null || true
drv=; [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
override=$(cat "$d/driver_override")
echo "driver=$drv"
echo "override=$override"
[ "$drv" = vfio-pci ] && exit 0
echo vfio-pci > "$d/driver_override"
[ -n "$drv" ] && echo "$1" > "$d/driver/unbind"
echo "$1" > /sys/bus/pci/drivers_probe
[ "$(basename "$(readlink "$d/driver")")" = vfio-pci ] || { echo "vfio-pci did not bind"; exit 4; }
