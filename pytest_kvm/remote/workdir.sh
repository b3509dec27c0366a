#!/bin/sh
# pytest-kvm's work dir on a host: make it (0700) and check that it can be trusted.
# $1: the work dir (absolute), or "" for the default /var/tmp/pytest-kvm-<uid>.
# $2: "shared" to check a shared-storage directory instead: it must exist, and may itself be
# a root-owned sticky directory (others may add files, not touch ours); its entries are
# other runs' and are not checked (each disk is checked before use).
# It and every directory above it (the path as given and as resolved) must be owned by the
# connecting user or root and writable by nobody else; a root-owned sticky directory above
# it (/tmp, /var/tmp) may be world-writable. Every entry inside it (on its file system) must
# be the connecting user's or root's, not a symbolic link, and writable by nobody else (a
# socket aside): what another user planted there before it was safe is refused, not used.
# Prints "ok <resolved path>", or "unsafe <path> <owner uid> <mode>" /
# "planted <path>" / "error <reason>" and exits 1.
set -u
me=$(id -u)
dir=${1:-/var/tmp/pytest-kvm-$me}
kind=${2:-work}
case $dir in
  /*) ;;
  *) echo "error $dir is not an absolute path"; exit 1 ;;
esac

verify() {  # $1: a path (not followed if a link); $2: the work dir itself (1) or above it (0)
  info=$(stat -c '%u %f' -- "$1" 2>/dev/null) || { echo "error cannot stat $1"; exit 1; }
  uid=${info% *}
  mode=$((0x${info#* }))
  perm=$(printf '%04o' $((mode & 07777)))
  if [ "$uid" != 0 ] && [ "$uid" != "$me" ]; then
    echo "unsafe $1 $uid $perm"; exit 1
  fi
  [ $((mode & 0170000)) = $((0120000)) ] && return 0  # a link: its owner is what counts
  [ $((mode & 0022)) = 0 ] && return 0
  if [ "$2" = 0 ] && [ "$uid" = 0 ] && [ $((mode & 01000)) != 0 ]; then
    return 0  # root's sticky dir: others cannot rename or remove what is ours in it
  fi
  echo "unsafe $1 $uid $perm"; exit 1
}

walk() {  # every directory from / down to $1; $2: 1 when $1 is the work dir itself
  verify / 0
  path=
  rest=${1#/}
  while [ -n "$rest" ]; do
    part=${rest%%/*}
    rest=${rest#"$part"}
    rest=${rest#/}
    [ -n "$part" ] || continue
    path=$path/$part
    if [ -n "$rest" ]; then verify "$path" 0; else verify "$path" "$2"; fi
  done
}

if [ "$kind" = shared ]; then
  [ -d "$dir" ] || { echo "error $dir is not a directory"; exit 1; }
  walk "$dir" 0
  real=$(readlink -f -- "$dir") || { echo "error cannot resolve $dir"; exit 1; }
  [ "$real" = "$dir" ] || walk "$real" 0
  echo "ok $real"
  exit 0
fi

# Check what exists before creating anything under it.
parent=$dir
while [ ! -e "$parent" ] && [ ! -L "$parent" ]; do parent=${parent%/*}; parent=${parent:-/}; done
if [ "$parent" != "$dir" ]; then
  walk "$parent" 0
  (umask 077 && mkdir -p -- "$dir") || { echo "error cannot create $dir"; exit 1; }
fi
walk "$dir" 1
real=$(readlink -f -- "$dir") || { echo "error cannot resolve $dir"; exit 1; }
[ -d "$real" ] || { echo "error $dir is not a directory"; exit 1; }
[ "$real" = "$dir" ] || walk "$real" 1
planted=$(find "$real" -xdev -mindepth 1 \( \( ! -user "$me" ! -user 0 \) -o -type l -o \
  \( ! -type s \( -perm -0002 -o -perm -0020 \) \) \) -print 2>/dev/null | head -n 1)
[ -z "$planted" ] || { echo "planted $planted"; exit 1; }
echo "ok $real"
