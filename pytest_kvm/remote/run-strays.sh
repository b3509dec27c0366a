#!/bin/sh
# The run dirs of one pytest-kvm process on this host, for its stray check before a boot:
# each as "NAME ALIVE" (ALIVE is 1 while a QEMU whose command line names the dir runs), then
# "load LOAD1 CPUS". $1: the run/ dir of the work dir; $2: the process's run dir prefix.
set -u
if cd -- "$1" 2>/dev/null; then
  for d in "$2"*; do
    { [ -d "$d" ] && [ ! -L "$d" ]; } || continue
    pid=$(cat "$d/qemu.pid" 2>/dev/null)
    alive=0
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1/$d/"; then
      alive=1
    fi
    echo "$d $alive"
  done
fi
echo "load $(cut -d' ' -f1 /proc/loadavg) $(nproc)"
