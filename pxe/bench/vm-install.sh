#!/usr/bin/env bash
# Benchmark: one VM from blank disk to "cloud-init finished" over the network, ironseed against
# the reference lab (docs/reference.md "The reference lab": dnsmasq for DHCP, the lab's
# stateful python http.server stand-in, its busybox installer doing `wget | dd` plus a
# read-back check), in one run with rounds interleaved. Same VM (SeaBIOS + iPXE ROM, TCG,
# 1 GiB, 2 vCPU, blank 4 GiB virtio disk), same golden image (`builder images build
# debian-12`), same seed (the reference gets the image with the node's CIDATA seed already in
# its slot, as `builder render --usb` makes it), same first boot. Only the provisioning differs.
#
#   sudo pxe/bench/vm-install.sh [ROUNDS]      (default 1 round = one VM per flow, ~5 min)
#
# env: LAB (the reference lab, default ../shared/lab beside the repository),
#      IRONSEED_E2E_CACHE (artifacts cache shared with pxe/tests/vm_install.rs).
# Needs root, the packages of tests/packages.txt, python3. Everything runs in network namespaces
# benchvm-* that are removed at exit; VMs and servers are killed by PID.
set -euo pipefail
ROUNDS=${1:-1}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LAB=${LAB:-$ROOT/../shared/lab}
CACHE=${IRONSEED_E2E_CACHE:-/var/cache/ironseed-e2e}
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces, debootstrap)"; exit 2; }
[ -f "$LAB/httpd.py" ] && [ -f "$LAB/src/init-install" ] || { echo "reference lab not found at $LAB (set LAB=)"; exit 2; }
W=$(mktemp -d /var/tmp/ironseed-bench-vm.XXXXXX)
chmod 755 "$W"
NS=benchvm-pxe$$; RNS=benchvm-rtr$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  ip netns del "$RNS" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
say() { printf '[%6.1fs] %s\n' "$(sub "$(now)" "$T0")" "$*"; }
T0=$(date +%s.%N)

NODE=vm-bios2; MAC=52:54:00:88:00:12
FIX=$ROOT/pxe/tests/fixtures
say "building ironseed (release), the static installer, the golden image and installer environment"
(cd "$ROOT" && cargo build -q --release -p builder -p pxe)
(cd "$ROOT" && RUSTFLAGS='-C target-feature=+crt-static' cargo build -q --release -p images --bin installer --target x86_64-unknown-linux-gnu)
B=$ROOT/target/release/builder
"$B" images build debian-12 --artifacts "$CACHE" --work "$CACHE/work" 2>&1 | tail -1
"$B" images installer --artifacts "$CACHE" --work "$CACHE/work-installer" \
  --installer-bin "$ROOT/target/x86_64-unknown-linux-gnu/release/installer" 2>&1 | tail -1
chmod -R a+rX "$CACHE"
"$B" render -i "$FIX/vmlab.yaml" --secrets "$FIX/vmlab.secrets.yaml" -o "$W/bundle" --usb 2>&1 | tail -1

say "reference: busybox installer initramfs (lab's init-install), raw image with the seed in its slot"
KVER=$(cat "$CACHE/installer/kernel-version")
mkdir -p "$W/ref/http" "$W/ref/tftp" "$W/ref/logs" "$W/k"
(cd "$W/k" && apt-get download -q "linux-image-$KVER" >/dev/null 2>&1 && dpkg-deb -x linux-image-*.deb x)
R=$W/ref/root; mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,run,tmp,lib/modules}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
cp "$LAB/src/init-install" "$R/init"; chmod 755 "$R/init"
cp "$LAB/src/udhcpc.script" "$R/etc/udhcpc.script"
M=$W/k/x/lib/modules/$KVER/kernel
for p in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net drivers/block/virtio_blk \
         drivers/net/ethernet/intel/e1000/e1000; do cp "$M/$p.ko" "$R/lib/modules/"; done
(cd "$R" && find . | sort | cpio -o -H newc -R 0:0 --quiet | gzip -9) > "$W/ref/http/initrd-install.gz"
cp "$CACHE/installer/vmlinuz" "$W/ref/http/vmlinuz"
zstd -q -d "$CACHE/images/debian-12.raw.zst" -o "$W/ref/http/disk.img"
SLOT=$(sfdisk -J "$W/ref/http/disk.img" | python3 -c 'import json,sys; print([p["start"] for p in json.load(sys.stdin)["partitiontable"]["partitions"] if p.get("name")=="cidata"][0])')
dd if="$W/bundle/usb/$NODE-cidata.img" of="$W/ref/http/disk.img" bs=512 seek="$SLOT" conv=notrunc status=none
(cd "$W/ref/http" && sha256sum disk.img > disk.img.sha256 && stat -c %s disk.img > disk.img.size)
cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/snponly.efi "$W/ref/tftp/"

say "network: namespace $NS (bridge 10.88.0.1/24, tap) and $RNS (the LAN's router for the ironseed round)"
ip netns add "$NS"; ip netns add "$RNS"
ip -n "$NS" link set lo up; ip -n "$RNS" link set lo up
ip -n "$NS" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$NS" addr add 10.88.0.1/24 dev br0
ip -n "$NS" addr add fd88::1/64 dev br0 nodad
ip -n "$NS" link set br0 up
ip -n "$NS" tuntap add dev tap0 mode tap
ip -n "$NS" link set tap0 master br0 up
ip -n "$NS" link add rtr0 type veth peer name rtr1 netns "$RNS"
ip -n "$NS" link set rtr0 master br0 up
ip -n "$RNS" addr add 10.88.0.254/24 dev rtr1
ip -n "$RNS" addr add fd88::fe/64 dev rtr1 nodad
ip -n "$RNS" link set rtr1 up

# A server in the background, its output in $W/<name>.log, its PID kept for cleanup.
bg() { local name=$1; shift; "$@" >"$W/$name.log" 2>&1 & PIDS+=($!); }
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; PIDS=(); }

# One VM: fresh blank disk, PXE first, disk second, serial to a file. Sets VM_INST and VM_TOTAL:
# seconds to the installer's done marker and to cloud-init's final message.
vm() { # $1=tag $2=install-done marker
  local disk=$W/$1.img serial=$W/$1.serial
  rm -f "$disk"; truncate -s 4G "$disk"; : > "$serial"
  local s; s=$(now)
  ip netns exec "$NS" qemu-system-x86_64 -machine pc,accel=tcg -m 1024 -smp 2 -nographic -monitor none \
    -serial "file:$serial" -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device "virtio-net-pci,netdev=n0,mac=$MAC,bootindex=1" \
    -drive "file=$disk,format=raw,if=none,id=d0,cache=unsafe" -device virtio-blk-pci,drive=d0,bootindex=2 \
    </dev/null >"$W/$1.qemu.log" 2>&1 &
  local q=$! inst="" until=$(( $(date +%s) + 900 ))
  PIDS+=("$q")
  while :; do
    if [ -z "$inst" ] && grep -aq "$2" "$serial"; then inst=$(sub "$(now)" "$s"); fi
    if grep -aq "ironseed: $NODE finished first boot" "$serial"; then break; fi
    kill -0 "$q" 2>/dev/null || { echo "qemu exited early; see $serial" >&2; KEEP=1; exit 1; }
    [ "$(date +%s)" -lt "$until" ] || { echo "timeout; see $serial" >&2; KEEP=1; exit 1; }
    sleep 0.2
  done
  VM_TOTAL=$(sub "$(now)" "$s"); VM_INST=$inst
  kill "$q"; wait "$q" 2>/dev/null || true
}

ref_round() {
  rm -f "$W/ref/logs/state.json"
  # The lab's services.sh with SPK_FAST (no ping check, option 175/176, RAs), on this bridge.
  bg ref-dnsmasq ip netns exec "$NS" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface=br0 \
    --bind-interfaces --except-interface=lo --dhcp-range=10.88.0.100,10.88.0.199,255.255.255.0,1h \
    --dhcp-authoritative --dhcp-leasefile="$W/ref/logs/leases" --dhcp-option=3 --dhcp-option=6 \
    --enable-tftp --tftp-root="$W/ref/tftp" --dhcp-userclass=set:ipxe,iPXE \
    --dhcp-match=set:efi64,option:client-arch,7 --dhcp-match=set:efi64,option:client-arch,9 \
    --dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,10.88.0.1 \
    --dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi,,10.88.0.1 \
    --dhcp-boot=tag:ipxe,http://10.88.0.1:8080/boot.ipxe \
    --no-ping --dhcp-option=tag:ipxe,encap:175,176,1b --enable-ra --dhcp-range=fd88::,ra-only,64 \
    --user=root --log-facility="$W/ref/logs/dnsmasq.log"
  # The stand-in boot server, and the same script again on the appliance port as the sink for the
  # node's phone_home and first-boot reports (it records any POST), so first boot waits on nothing.
  bg ref-httpd env LAB_DIR="$W/ref" SPK_LOCAL=sanboot SPK_STATE="$W/ref/logs/state.json" \
    ip netns exec "$NS" python3 -u "$LAB/httpd.py" 10.88.0.1 8080
  bg ref-sink env LAB_DIR="$W/ref" SPK_STATE="$W/ref/logs/sink.json" \
    ip netns exec "$NS" python3 -u "$LAB/httpd.py" 10.88.0.1 8088
  sleep 1.5
  vm "ref" "SPIKE-INSTALL-DONE"
  stop_all
}

iron_round() {
  rm -rf "$W/state"
  bg router ip netns exec "$RNS" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface=rtr1 \
    --bind-interfaces --except-interface=lo --dhcp-range=10.88.0.100,10.88.0.199,255.255.255.0,1h \
    --dhcp-authoritative --no-ping --enable-ra --dhcp-range=fd88::,ra-only,64 --user=root \
    --dhcp-leasefile="$W/rtr.leases" --log-facility="$W/rtr.log"
  ip netns exec "$NS" "$ROOT/target/release/pxe" serve --bundle "$W/bundle" --interface br0 \
    --dhcp proxy --http-port 8088 --state "$W/state" --artifacts "$CACHE" \
    >"$W/pxe.out" 2>"$W/pxe.log" &
  PIDS+=($!)
  local i=0; until grep -q READY "$W/pxe.out"; do i=$((i+1)); [ $i -lt 100 ] || { cat "$W/pxe.log"; exit 1; }; sleep 0.1; done
  vm "ironseed" "ironseed: installed $NODE"
  stop_all
}

printf '\n%-10s %-6s %12s %22s\n' flow round "installed s" "cloud-init finished s"
declare -a RI RT II IT
for r in $(seq 1 "$ROUNDS"); do
  ref_round;  RI+=("$VM_INST"); RT+=("$VM_TOTAL"); printf '%-10s %-6s %12.1f %22.1f\n' reference "$r" "$VM_INST" "$VM_TOTAL"
  iron_round; II+=("$VM_INST"); IT+=("$VM_TOTAL"); printf '%-10s %-6s %12.1f %22.1f\n' ironseed "$r" "$VM_INST" "$VM_TOTAL"
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ri=$(med "${RI[@]}"); rt=$(med "${RT[@]}"); ii=$(med "${II[@]}"); it=$(med "${IT[@]}")
echo
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf 'median     installed: ironseed %.1f s vs reference %.1f s = %sx\n' "$ii" "$ri" "$(div "$ii" "$ri")"
printf 'median     blank disk -> cloud-init finished: ironseed %.1f s vs reference %.1f s = %sx (target <= 0.8x)\n' \
  "$it" "$rt" "$(div "$it" "$rt")"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores; other work on the machine skews both flows)"
