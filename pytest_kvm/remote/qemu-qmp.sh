#!/bin/sh
# QMP commands to a QEMU that runs no machine, on stdio: one reply per command, in order
# (after qmp_capabilities' own, before quit's).
# $1: the QEMU binary; $2: the accelerator (kvm or tcg); $3...: the commands, one JSON
# object per argument.
q=$1 accel=$2
shift 2
{
  echo '{"execute":"qmp_capabilities"}'
  for command in "$@"; do printf '%s\n' "$command"; done
  echo '{"execute":"quit"}'
} | timeout 60 "$q" -machine none -accel "$accel" -nodefaults -display none -qmp stdio
