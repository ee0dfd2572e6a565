#!/usr/bin/env bash
# Refresh (default) or check (--check) the committed prebuilt kernel object. The compile command
# is the one in build.rs; the object is reproducible for a given clang, so --check compares bytes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
clang=${FASTPROXY_CLANG:-clang-19}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
(cd "$here/bpf" && "$clang" -O2 -g -target bpf -Wall -Werror -I/usr/include/x86_64-linux-gnu \
  "-ffile-prefix-map=$here/bpf=." -c fastproxy.bpf.c -o "$tmp")
if [ "${1:-}" = "--check" ]; then
  if ! cmp -s "$tmp" "$here/prebuilt/fastproxy.bpf.o"; then
    echo "ebpf/prebuilt/fastproxy.bpf.o is stale: run ebpf/build-object.sh and commit it" >&2
    exit 1
  fi
  echo "ebpf/prebuilt/fastproxy.bpf.o is up to date"
else
  cp "$tmp" "$here/prebuilt/fastproxy.bpf.o"
  echo "wrote ebpf/prebuilt/fastproxy.bpf.o"
fi
