#!/bin/sh
# A PCI device as sysfs shows it, one key=value per line (empty when the file is absent):
# its driver, driver_override, IDs, class, IOMMU group and SR-IOV settings. $1: the device.
d=/sys/bus/pci/devices/$1
[ -d "$d" ] || { echo "no PCI device $1"; exit 3; }
drv=; [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
grp=; [ -e "$d/iommu_group" ] && grp=$(basename "$(readlink "$d/iommu_group")")
echo "driver=$drv"
echo "iommu_group=$grp"
echo "override=$(cat "$d/driver_override" 2>/dev/null)"
for f in vendor device class sriov_totalvfs sriov_numvfs sriov_vf_device sriov_drivers_autoprobe; do
  echo "$f=$(cat "$d/$f" 2>/dev/null)"
done
