#!/usr/bin/env bash
# With PACK=1: the files of folder $1 as one tar file in it, $2.tar (a machine that sends back
# only a few files: tar -xf it where it lands). Without, nothing.
#   PACK=1 bash tools/pack_out.sh OUT NAME
set -euo pipefail
[ "${PACK:-0}" = 1 ] || exit 0
out=${1:?the folder} name=${2:?the name of the tar file}
tar -cf "/tmp/$name.tar" -C "$out" .
rm -rf "${out:?}"/*
mv "/tmp/$name.tar" "$out/"
