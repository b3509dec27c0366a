#!/bin/sh
# Is process $1 a QEMU of run dir $2 (its command line names the run dir)?
tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2/"
