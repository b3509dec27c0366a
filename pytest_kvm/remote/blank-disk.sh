#!/bin/sh
# A blank qcow2 base of a size, made once (atomically). $1: the file; $2: the size.
[ -f "$1" ] || { qemu-img create -q -f qcow2 "$1.$$" "$2" && mv -f "$1.$$" "$1"; }
