#!/bin/sh
# A stream to a unix socket: socat reads ',' and ':' in an address as its own syntax, so the
# directory (any path) is entered first and only the socket's own name is in the address.
# $1: the directory; $2: the socket's name.
cd "$1" && exec socat - "UNIX-CONNECT:$2"
