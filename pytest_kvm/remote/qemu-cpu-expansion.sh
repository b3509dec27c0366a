#!/bin/sh
# QEMU's full expansion of a CPU model under TCG, over QMP on stdio.
# $1: the QEMU binary; $2: the CPU model.
printf '%s\n' '{"execute":"qmp_capabilities"}' \
  '{"execute":"query-cpu-model-expansion","arguments":{"type":"full","model":{"name":"'"$2"'"}}}' \
  '{"execute":"quit"}' |
  timeout 60 "$1" -machine none -accel tcg -nodefaults -display none -qmp stdio
