#!/bin/sh
# A PF's VFs: "<index> <resolved device path>" per virtfn link. $1: the PF.
for l in "/sys/bus/pci/devices/$1"/virtfn*; do [ -e "$l" ] && echo "${l##*virtfn} $(readlink -f "$l")"; done
true
