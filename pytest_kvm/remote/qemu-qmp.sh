#!/bin/sh
# QMP commands to a QEMU that runs no machine, on stdio: one reply per command, in order
# (after qmp_capabilities' own, before quit's).
# $1: the QEMU binary; $2: the accelerator (kvm or tcg); $3...: the commands, one JSON
# object per argument.
# The replies go to a file first: into a pipe whose reader is slow (a loaded host), QEMU
# writes what fits, and quit ends it with the rest unwritten (seen: 57 KB of 264 KB).
q=$1 accel=$2
shift 2
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT
{
  echo '{"execute":"qmp_capabilities"}'
  for command in "$@"; do printf '%s\n' "$command"; done
  echo '{"execute":"quit"}'
} | timeout 60 "$q" -machine none -accel "$accel" -nodefaults -display none -qmp stdio >"$out"
status=$?
cat "$out"
exit "$status"
