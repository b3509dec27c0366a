#!/bin/sh
# Append one JSON record to a journal file, creating it with its owner line first.
# $1: the record (one line); $2: the journal file; $3: the owner line.
set -u
mkdir -p -- "${2%/*}" || exit 1
[ -s "$2" ] || printf '%s\n' "$3" > "$2" || exit 1
printf '%s\n' "$1" >> "$2"
