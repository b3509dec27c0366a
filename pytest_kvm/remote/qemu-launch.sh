#!/bin/sh
# Start QEMU detached in its own session (the guest outlives the SSH channel); its stderr
# goes to qemu.log, its exit status to exit-status. Returns once QEMU's sockets are up
# ("pid=N"), or says it died ("died") or was slow ("slow").
# $1: the run dir; the rest: QEMU's argv.
run=$1; shift
cd "$run" || exit 2
# QEMU's exit status goes to exit-status (a guest that dies on its own is explained by it)
setsid sh -c '"$@"; echo $? >exit-status' qemu "$@" </dev/null >>qemu.log 2>&1 &
child=$!
i=0
while [ $i -lt 600 ]; do
  if [ -S q.sock ] && [ -S c.sock ] && [ -s qemu.pid ]; then
    # (a QEMU that fails on a later option removes its pidfile as it exits: read it once)
    pid=$(cat qemu.pid 2>/dev/null)
    case $pid in ''|*[!0-9]*) ;; *) echo "pid=$pid"; exit 0 ;; esac
  fi
  kill -0 $child 2>/dev/null || { echo died; exit 3; }
  sleep 0.05; i=$((i+1))
done
echo slow; exit 4
