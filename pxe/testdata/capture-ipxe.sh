#!/bin/bash
# Capture real iPXE DHCP datagrams: qemu (TCG, SeaBIOS, no disk) boots the
# iPXE option ROM of its virtio NIC (Debian ipxe-qemu) on a tap device inside
# network namespace dhcipxe, ironseed's dhcp_serve answers in full mode, and
# tcpdump records the exchange. The first DISCOVER and REQUEST that iPXE
# sends (user class "iPXE", option 93 = 0) and our OFFER/ACK are written to
# ipxe_*.bin here. Needs root, qemu-system-x86, ipxe-qemu, tcpdump, python3.
# Usage: pxe/testdata/capture-ipxe.sh   (then regenerate the .txt goldens:
#   IRONSEED_REGEN_TESTDATA=1 cargo test -p pxe --test dhcp_golden)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
NS=dhcipxe TAP=dhcipxetap NET=10.77.241
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del $NS 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build -q --manifest-path "$ROOT/Cargo.toml" -p pxe --example dhcp_serve
BIN="$ROOT/target/debug/examples/dhcp_serve"

ip netns add $NS
ip -n $NS link set lo up
ip -n $NS tuntap add dev $TAP mode tap
ip -n $NS addr add $NET.1/24 dev $TAP
ip -n $NS link set $TAP up

cat > "$WORK/dhcp.json" <<JSON
{"interface": "$TAP", "mode": "full", "subnet": "$NET.0/24", "gateway": "$NET.1",
 "pool": {"start": "$NET.100", "end": "$NET.150"}, "lease_secs": 600,
 "nodes": [{"mac": "52:54:00:77:f1:01", "hostname": "ipxevm", "ip": "$NET.10", "firmware": "bios"}]}
JSON
ip netns exec $NS tcpdump -i $TAP -n -U --immediate-mode -s 0 -Z root -w "$WORK/cap.pcap" \
  'udp and (port 67 or port 68 or port 4011)' 2>"$WORK/tcpdump.err" &
PIDS+=($!)
until grep -q "listening on" "$WORK/tcpdump.err"; do sleep 0.2; done
ip netns exec $NS "$BIN" "$WORK/dhcp.json" >"$WORK/srv.out" 2>"$WORK/srv.log" &
PIDS+=($!)
until grep -q READY "$WORK/srv.out"; do sleep 0.2; done

ip netns exec $NS qemu-system-x86_64 -machine pc,accel=tcg -m 256 -smp 1 -nographic \
  -monitor none -serial file:"$WORK/serial.log" -no-reboot \
  -netdev tap,id=n0,ifname=$TAP,script=no,downscript=no \
  -device virtio-net-pci,netdev=n0,mac=52:54:00:77:f1:01,bootindex=1 &
QEMU=$!
PIDS+=($QEMU)
# Wait (up to 10 min under load) for iPXE's REQUEST to have been ACKed.
for _ in $(seq 1 3000); do
  grep -q 'ipxe=true msg=Request.*decision=ack' "$WORK/srv.log" && break
  kill -0 $QEMU 2>/dev/null || { echo "qemu exited"; exit 1; }
  sleep 0.2
done
grep -q 'ipxe=true msg=Request.*decision=ack' "$WORK/srv.log" || { echo "no iPXE exchange"; exit 1; }
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true

python3 - "$WORK/cap.pcap" "$HERE" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read(); out = sys.argv[2]
off, seen = 24, set()
while off + 16 <= len(data):
    incl = struct.unpack_from("<I", data, off + 8)[0]; pkt = data[off + 16: off + 16 + incl]; off += 16 + incl
    ip = pkt[14:]; ihl = (ip[0] & 15) * 4; udp = ip[ihl:]; ulen = struct.unpack(">H", udp[4:6])[0]
    p = udp[8:ulen]
    if len(p) < 240: continue
    opts, i, mt, ipxe = p[240:], 0, None, False
    while i < len(opts) and opts[i] != 255:
        if opts[i] == 0: i += 1; continue
        code, ln = opts[i], opts[i + 1]; val = opts[i + 2:i + 2 + ln]
        if code == 53: mt = val[0]
        if code == 77 and b"iPXE" in val: ipxe = True
        i += 2 + ln
    name = {1: "ipxe_discover_bios", 3: "ipxe_request_bios", 2: "ironseed_offer_to_ipxe", 5: "ironseed_ack_to_ipxe"}.get(mt)
    if name and name not in seen and (p[0] == 2 or ipxe):
        seen.add(name); open(f"{out}/{name}.bin", "wb").write(p); print("wrote", name)
PY
echo "serial console:"; tr -d '\r' < "$WORK/serial.log" | grep -a -i -E "ipxe|dhcp|net0" | head -20 || true
