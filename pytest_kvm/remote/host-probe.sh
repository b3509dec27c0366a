#!/bin/sh
# One round trip: everything a suite needs to decide what it can check on this host.
# Arguments: the PCI addresses the inventory names. Environment: QEMU, the binary.
q=${QEMU:-qemu-system-x86_64}
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
echo "cpu_vendor=$(sed -n 's/^vendor_id[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
echo "cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
virt=
for f in $(sed -n 's/^flags[[:space:]]*: //p' /proc/cpuinfo | head -n1); do
  case $f in vmx|svm) virt=$f;; esac
done
echo "virt_flag=$virt"
echo "cpus=$(getconf _NPROCESSORS_ONLN)"
echo "mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)"
mods=
for m in kvm kvm_intel kvm_amd kvm_pvm vfio_pci; do [ -d /sys/module/$m ] && mods="$mods$m,"; done
echo "modules=$mods"
for m in kvm_intel kvm_amd; do
  [ -r /sys/module/$m/parameters/nested ] && echo "nested_$m=$(cat /sys/module/$m/parameters/nested)"
done
[ -c /dev/kvm ] && echo "dev_kvm=1"
echo "iommu_groups=$(find /sys/kernel/iommu_groups -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
echo "socat=$(command -v socat)"
qp=$(command -v "$q")
echo "qemu_path=$qp"
if [ -n "$qp" ]; then
  echo "qemu_version=$("$qp" --version | sed -n '1s/.*version \([0-9.]*\).*/\1/p')"
  echo "qemu_devices=$("$qp" -device help 2>/dev/null | sed -n 's/^name "\([^"]*\)".*/\1/p' | tr '\n' ',')"
fi
for bdf in "$@"; do
  d=/sys/bus/pci/devices/$bdf
  if [ -d "$d" ]; then
    drv=; [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    grp=; [ -e "$d/iommu_group" ] && grp=$(basename "$(readlink "$d/iommu_group")")
    echo "pci $bdf vendor=$(cat "$d/vendor") device=$(cat "$d/device") driver=$drv iommu_group=$grp totalvfs=$(cat "$d/sriov_totalvfs" 2>/dev/null) numvfs=$(cat "$d/sriov_numvfs" 2>/dev/null)"
  else
    echo "pci $bdf missing=1"
  fi
done
# UEFI firmware for guests that boot an image's own EFI bootloader (code and variables)
for pair in /usr/share/OVMF/OVMF_CODE_4M.fd:/usr/share/OVMF/OVMF_VARS_4M.fd \
            /usr/share/OVMF/OVMF_CODE.fd:/usr/share/OVMF/OVMF_VARS.fd \
            /usr/share/edk2/ovmf/OVMF_CODE.fd:/usr/share/edk2/ovmf/OVMF_VARS.fd \
            /usr/share/edk2/x64/OVMF_CODE.4m.fd:/usr/share/edk2/x64/OVMF_VARS.4m.fd; do
  if [ -r "${pair%%:*}" ] && [ -r "${pair#*:}" ]; then
    echo "ovmf_code=${pair%%:*}"
    echo "ovmf_vars=${pair#*:}"
    break
  fi
done
