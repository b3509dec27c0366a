#!/bin/sh
# Wait for a guest's QEMU to go (after a QMP quit), then TERM, then KILL, each bounded;
# only a process whose command line names this run dir is ever signalled. Then remove the
# run dir. $1: the run dir; $2: tenths of a second to wait first; $3: keep-dir to keep it.
run=$1; first=$2
pid=$(cat "$run/qemu.pid" 2>/dev/null)
ours() { [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$run/"; }
# gone PREDICATE N: wait up to N tenths of a second for PREDICATE to turn false
gone() { i=0; while "$1"; do [ "$i" -ge "$2" ] && return 1; sleep 0.1; i=$((i+1)); done; }
gone ours "$first" || { kill -TERM "$pid"; gone ours 50 || { kill -KILL "$pid"; gone ours 50; }; }
if ours; then echo "QEMU $pid survived SIGKILL"; exit 1; fi
# A QEMU killed while its disk's storage hangs (an NFS server gone) can take a while to exit:
# its main thread is a zombie with no command line while its I/O threads wait for the
# storage to fail their requests. Wait for it (bounded); its wrapper shell then ends too.
exiting() { [ -n "$pid" ] && [ -d "/proc/$pid" ] &&
            [ -z "$(tr -d '\0' <"/proc/$pid/cmdline" 2>/dev/null)" ]; }
if ! gone exiting 600; then echo "QEMU $pid still exiting after 60 s (its storage hangs?)"; exit 1; fi
[ "$3" = keep-dir ] && exit 0
# QEMU's parent shell may still be writing exit-status into the run dir: retry briefly
i=0; while ! rm -rf "$run" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
[ ! -e "$run" ] || rm -rf "$run"
