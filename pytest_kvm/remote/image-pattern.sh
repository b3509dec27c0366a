#!/bin/sh
# Does a disk image hold a byte pattern? Read from the image file itself (shared with the
# running QEMU, read-only), as it is on the host's storage.
# $1: the image; $2: its format; $3: the pattern byte (e.g. 0xa5); $4: offset; $5: length.
exec qemu-io -r -U -f "$2" -c "read -P $3 $4 $5" "$1"
