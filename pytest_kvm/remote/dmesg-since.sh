#!/bin/sh
# The kernel log from a point in time on. $1: seconds since boot.
dmesg | awk -v s="$1" '{t=$0; sub(/^\[ */,"",t); sub(/\].*/,"",t); if (t+0 >= s) print}'
