#!/bin/bash
# Capture real firmware DHCP datagrams: qemu (TCG, no disk) on a tap device
# inside network namespace dhcipxe, ironseed's dhcp_serve answering in full
# mode, tcpdump recording the exchange.
#   bios: SeaBIOS + the iPXE option ROM of the virtio NIC (Debian ipxe-qemu):
#         iPXE's DISCOVER/REQUEST (user class "iPXE", option 93 = 0) and our
#         OFFER/ACK → ipxe_*.bin, ironseed_*_to_ipxe.bin
#   uefi: OVMF with the NIC's ROM removed, so EDK2's own PXE client runs
#         (option 93 = 7, vendor class PXEClient:Arch:00007) → edk2_*.bin,
#         ironseed_*_to_edk2.bin
# Needs root, qemu-system-x86, ipxe-qemu, ovmf (uefi), tcpdump, python3.
# Usage: pxe/testdata/capture-firmware.sh bios|uefi   (then regenerate the
#   .txt goldens: UPDATE_GOLDEN=1 cargo test -p pxe --test dhcp_golden)
set -euo pipefail
MODE=${1:-bios}
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

# tests/dhcp_golden.rs (Lab::Firmware241) rebuilds our captured replies with this same
# configuration: change both together.
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

if [ "$MODE" = uefi ]; then
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"
  # romfile= (empty): no iPXE ROM, EDK2's PXE client; IPv6 PXE off so the
  # IPv4 entry is tried first (docs/reference.md "Firmware behaviour").
  FW=(-machine q35,accel=tcg
      -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
      -drive if=pflash,format=raw,unit=1,file="$WORK/vars.fd"
      -fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=no
      -fw_cfg name=opt/org.tianocore/IPv6Support,string=no
      -device virtio-net-pci,netdev=n0,mac=52:54:00:77:f1:01,bootindex=1,romfile=)
  WANT='arch=Some(7) ipxe=false msg=Request.*decision=ack'
else
  FW=(-machine pc,accel=tcg -device virtio-net-pci,netdev=n0,mac=52:54:00:77:f1:01,bootindex=1)
  WANT='ipxe=true msg=Request.*decision=ack'
fi
ip netns exec $NS qemu-system-x86_64 "${FW[@]}" -m 256 -smp 1 -nographic \
  -monitor none -serial file:"$WORK/serial.log" -no-reboot \
  -netdev tap,id=n0,ifname=$TAP,script=no,downscript=no &
QEMU=$!
PIDS+=($QEMU)
# Wait (up to 10 min under load) for the firmware's REQUEST to have been ACKed.
for _ in $(seq 1 3000); do
  grep -q "$WANT" "$WORK/srv.log" && break
  kill -0 $QEMU 2>/dev/null || { echo "qemu exited"; exit 1; }
  sleep 0.2
done
grep -q "$WANT" "$WORK/srv.log" || { echo "no firmware exchange"; cat "$WORK/srv.log"; exit 1; }
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true

python3 - "$WORK/cap.pcap" "$HERE" "$MODE" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read(); out = sys.argv[2]; mode = sys.argv[3]
who, tag = ("edk2", "uefi") if mode == "uefi" else ("ipxe", "bios")
off, seen = 24, set()
while off + 16 <= len(data):
    incl = struct.unpack_from("<I", data, off + 8)[0]; pkt = data[off + 16: off + 16 + incl]; off += 16 + incl
    ip = pkt[14:]; ihl = (ip[0] & 15) * 4; udp = ip[ihl:]; ulen = struct.unpack(">H", udp[4:6])[0]
    p = udp[8:ulen]
    if len(p) < 240: continue
    opts, i, mt, ipxe, arch7 = p[240:], 0, None, False, False
    while i < len(opts) and opts[i] != 255:
        if opts[i] == 0: i += 1; continue
        code, ln = opts[i], opts[i + 1]; val = opts[i + 2:i + 2 + ln]
        if code == 53: mt = val[0]
        if code == 77 and b"iPXE" in val: ipxe = True
        if code == 60 and b"Arch:00007" in val: arch7 = True
        i += 2 + ln
    name = {1: f"{who}_discover_{tag}", 3: f"{who}_request_{tag}",
            2: f"ironseed_offer_to_{who}", 5: f"ironseed_ack_to_{who}"}.get(mt)
    ours = (p[0] == 1 and (ipxe if who == "ipxe" else arch7 and not ipxe)) or p[0] == 2
    if name and name not in seen and ours:
        seen.add(name); open(f"{out}/{name}.bin", "wb").write(p); print("wrote", name)
PY
echo "serial console:"; tr -d '\r' < "$WORK/serial.log" | grep -a -i -E "ipxe|dhcp|net0|pxe|station ip|nbp" | head -20 || true
