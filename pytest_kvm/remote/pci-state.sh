#!/bin/sh
# A PCI device's driver and driver_override. $1: the device.
d=/sys/bus/pci/devices/$1
[ -d "$d" ] || { echo "no PCI device $1"; exit 3; }
drv=; [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
echo "driver=$drv"
echo "override=$(cat "$d/driver_override")"
