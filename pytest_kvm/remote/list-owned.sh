#!/bin/sh
# List the entries of a directory in the work dir with their owner line, NUL-separated:
# "<name>\0<first line of the owner file>\0" for each. Links and odd entries are left out
# (the caller also checks every name).
# $1: the directory; $2: "dir" (run dirs, owner file "owner") or "file" (journals *.log).
set -u
cd -- "$1" 2>/dev/null || exit 0
for name in *; do
  [ -L "$name" ] && continue
  case $2 in
    dir) if [ ! -d "$name" ] || [ ! -f "$name/owner" ] || [ -L "$name/owner" ]; then
           continue
         fi
         owner=$(head -n1 -- "$name/owner") ;;
    file) case $name in *.log) ;; *) continue ;; esac
          [ -f "$name" ] || continue
          owner=$(head -n1 -- "$name") ;;
    *) exit 2 ;;
  esac
  printf '%s\0%s\0' "$name" "$owner"
done
