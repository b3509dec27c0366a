#!/bin/sh
# A relay for one migration stream: socat between two addresses, in a session of its own
# (so that its process group, socat included, can be stopped, continued and killed at once),
# for at most $1 seconds. Waits until it listens, then prints "pgid=N".
# $1: seconds; $2: what it listens on (a unix socket path, or "tcp" and $3: address:port);
# the rest: where it connects (a unix socket path, or "tcp" and address:port).
set -u
limit=$1; shift
if [ "$1" = tcp ]; then
  listen="TCP-LISTEN:${2##*:},bind=${2%:*},reuseaddr"; port=${2##*:}; shift 2
else
  listen="UNIX-LISTEN:$1"; path=$1; port=; shift
fi
if [ "$1" = tcp ]; then target="TCP:$2"; else target="UNIX-CONNECT:$1"; fi
setsid timeout "$limit" socat "$listen" "$target" </dev/null >/dev/null 2>&1 &
pid=$!
i=0
while [ $i -lt 100 ]; do
  if [ -n "$port" ]; then
    ss -Hltn "sport = :$port" | grep -q . && { echo "pgid=$pid"; exit 0; }
  else
    [ -S "$path" ] && { echo "pgid=$pid"; exit 0; }
  fi
  kill -0 "$pid" 2>/dev/null || { echo "died"; exit 3; }
  sleep 0.05; i=$((i+1))
done
kill -TERM "-$pid" 2>/dev/null  # (dash: a negative pid, no "--")
echo "slow"; exit 4
