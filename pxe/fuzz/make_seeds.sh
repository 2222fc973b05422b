#!/bin/sh
# Seed corpus for the dhcp_request fuzz target: the captured datagrams from
# pxe/testdata (real udhcpc/iPXE requests and ironseed replies).
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/dhcp_request
for f in ../testdata/*.bin; do
  cp "$f" "corpus/dhcp_request/seed-$(basename "$f" .bin)"
done
ls corpus/dhcp_request
