#!/bin/sh
# The PCI functions that carry the host's management connection: the interfaces of the
# default routes and of the SSH session (plus any named as arguments), followed down through
# bridges, bonds, VLANs, macvlans and teams (their lower_* links) to the devices under them;
# for an SR-IOV VF, its PF too (a change of the PF's VFs would take the VF away).
# Prints one PCI address per line.
set -u
ifs="$*"
ifs="$ifs $(ip -o route show default 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')"
ifs="$ifs $(ip -o -6 route show default 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')"
if [ -n "${SSH_CONNECTION:-}" ]; then
  client=${SSH_CONNECTION%% *}
  ifs="$ifs $(ip -o route get "$client" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')"
fi
seen=" "
visit() {
  case $seen in *" $1 "*) return 0 ;; esac
  seen="$seen$1 "
  d=/sys/class/net/$1
  # the PCI function behind the interface (for virtio-net the link is virtioN, under it)
  if [ -e "$d/device" ]; then
    readlink -f "$d/device" | tr / '\n' |
      grep -E '^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$' | tail -n1
    if [ -e "$d/device/physfn" ]; then
      pf=$(readlink -f "$d/device/physfn")
      echo "${pf##*/}"
    fi
  fi
  for lower in "$d"/lower_*; do
    [ -e "$lower" ] && visit "${lower##*/lower_}"
  done
  return 0
}
for i in $ifs; do visit "$i"; done
true
