#!/bin/sh
# Undo: bring a link back up that a migration's failure path took down ($1: the interface).
set -u
ip link set dev "$1" up
