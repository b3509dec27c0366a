#!/bin/sh
# QEMU's full expansion of CPU models, one QMP session on stdio: a reply per model, in order.
# $1: the QEMU binary; $2: the accelerator (kvm or tcg); $3...: the CPU models (names as QEMU
# lists them: letters, digits, . _ -).
q=$1 accel=$2
shift 2
{
  echo '{"execute":"qmp_capabilities"}'
  for m in "$@"; do
    case $m in *[!A-Za-z0-9._-]*|'') echo "bad CPU model name" >&2; exit 2;; esac
    printf '{"execute":"query-cpu-model-expansion","arguments":{"type":"full","model":{"name":"%s"}}}\n' "$m"
  done
  echo '{"execute":"quit"}'
} | timeout 60 "$q" -machine none -accel "$accel" -nodefaults -display none -qmp stdio
