#!/bin/sh
# Move bytes over TCP between this host and a port forwarded to a guest, timed.
# $1: send | recv; $2: the port on 127.0.0.1; $3: the file (send: made of $4 random bytes
# first; recv: written); $4: bytes to send. Prints "<sha256> <bytes> <seconds>".
set -eu
mode=$1 port=$2 file=$3
if [ "$mode" = send ]; then
  head -c "$4" /dev/urandom > "$file"
  start=$(date +%s.%N)
  timeout 120 socat -u "FILE:$file" "TCP:127.0.0.1:$port"
else
  start=$(date +%s.%N)
  timeout 120 socat -u "TCP:127.0.0.1:$port" "CREATE:$file"
fi
end=$(date +%s.%N)
seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
echo "$(sha256sum < "$file" | cut -d' ' -f1) $(wc -c < "$file") $seconds"
