#!/bin/sh
# A PCI device's IOMMU group: its number, then every device in it (nothing without one).
# $1: the device.
g=$(readlink -f "/sys/bus/pci/devices/$1/iommu_group") && [ -d "$g" ] || exit 0
echo "${g##*/}"
ls "$g/devices"
