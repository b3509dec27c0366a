#!/bin/sh
# Write a value to a file (no newline added). $1: the value; $2: the file.
printf '%s' "$1" > "$2"
