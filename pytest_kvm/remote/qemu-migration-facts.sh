#!/bin/sh
# What a migration pair must agree on, over QMP on stdio: QEMU's version, its machine types
# and its named CPU models with the features each lacks under the accelerator.
# $1: the QEMU binary; $2: the accelerator (kvm or tcg).
printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-version"}' \
  '{"execute":"query-machines"}' '{"execute":"query-cpu-definitions"}' '{"execute":"quit"}' |
  timeout 60 "$1" -machine none -accel "$2" -nodefaults -display none -qmp stdio
