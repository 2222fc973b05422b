#!/bin/bash
# DHCPv4 benchmark: ironseed (full mode) vs Kea (kea-dhcp4, memfile) vs
# dnsmasq --no-ping, measured with perfdhcp across a veth pair between two
# network namespaces. Not a test: it prints a table and exits.
#
#   sudo pxe/bench/dhcp.sh
#   env: RATES="100 2000 5000"  PERIOD=10 (s per run)  ROUNDS=3  CLIENTS=60000
#        KEEP=1 keeps the work dir (logs, perfdhcp outputs)
#
# Servers run in interleaved rounds (round → rate → server) with the same
# client, so the ratios are comparable on a noisy shared machine; the table
# shows medians over the rounds. Every server logs each exchange at its
# default level to a file (ironseed RUST_LOG=info, Kea INFO, dnsmasq default).
# Traffic stays inside namespaces dhcbsrv/dhcbcli (10.77.0.0/16).
# Debian packages: kea-admin (perfdhcp) kea-dhcp4-server dnsmasq-base iproute2.
set -euo pipefail

RATES=${RATES:-"100 2000 5000"}
PERIOD=${PERIOD:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-60000}
NS_S=dhcbsrv NS_C=dhcbcli IF_S=dhcbs IF_C=dhcbc
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/dhcbench.XXXXXX)
SRV_PID=""

for tool in perfdhcp kea-dhcp4 dnsmasq ip cargo; do
  command -v $tool >/dev/null || { echo "missing $tool (see tests/packages.txt)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 2; }

stop_server() {
  if [ -n "$SRV_PID" ]; then
    kill "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
  fi
}
cleanup() {
  stop_server
  ip netns del $NS_S 2>/dev/null || true
  ip netns del $NS_C 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Wait up to 30 s for a readiness line in a log file.
wait_for() { # file pattern
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$SRV_PID" 2>/dev/null || { echo "server died:" >&2; tail "$1" >&2; exit 1; }
    sleep 0.1
  done
  echo "timeout waiting for '$2' in $1" >&2; exit 1
}

echo "building ironseed (release)..." >&2
cargo build -q --release --manifest-path "$ROOT/Cargo.toml" -p pxe --example dhcp_serve
IRONSEED="$ROOT/target/release/examples/dhcp_serve"

ip netns del $NS_S 2>/dev/null || true
ip netns del $NS_C 2>/dev/null || true
ip netns add $NS_S; ip netns add $NS_C
ip -n $NS_S link set lo up; ip -n $NS_C link set lo up
ip -n $NS_S link add $IF_S type veth peer name $IF_C netns $NS_C
ip -n $NS_S addr add 10.77.0.1/16 dev $IF_S
# perfdhcp acts as a relay: its giaddr is this address (inside the served subnet).
ip -n $NS_C addr add 10.77.0.2/16 dev $IF_C
ip -n $NS_S link set $IF_S up; ip -n $NS_C link set $IF_C up

POOL_START=10.77.1.0 POOL_END=10.77.254.254

start_ironseed() {
  rm -rf "$WORK/ironseed-state"; mkdir -p "$WORK/ironseed-state"
  cat > "$WORK/ironseed.json" <<EOF
{"interface": "$IF_S", "mode": "full", "subnet": "10.77.0.0/16", "gateway": "10.77.0.1",
 "pool": {"start": "$POOL_START", "end": "$POOL_END"}, "lease_secs": 3600,
 "state_dir": "$WORK/ironseed-state"}
EOF
  RUST_LOG=info ip netns exec $NS_S "$IRONSEED" "$WORK/ironseed.json" \
    >"$WORK/ironseed.out" 2>"$WORK/ironseed.log" &
  SRV_PID=$!
  wait_for "$WORK/ironseed.out" READY
}

start_kea() {
  rm -f "$WORK"/kea-leases4.csv*
  cat > "$WORK/kea.json" <<EOF
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["$IF_S"], "dhcp-socket-type": "raw"},
  "lease-database": {"type": "memfile", "persist": true, "name": "$WORK/kea-leases4.csv", "lfc-interval": 0},
  "valid-lifetime": 3600, "renew-timer": 1800, "rebind-timer": 3150,
  "subnet4": [{"id": 1, "subnet": "10.77.0.0/16", "pools": [{"pool": "$POOL_START - $POOL_END"}],
               "option-data": [{"name": "routers", "data": "10.77.0.1"}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "$WORK/kea.log"}], "severity": "INFO"}]
}}
EOF
  : > "$WORK/kea.log"
  KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK ip netns exec $NS_S kea-dhcp4 -c "$WORK/kea.json" \
    >"$WORK/kea.out" 2>&1 &
  SRV_PID=$!
  wait_for "$WORK/kea.log" DHCP4_STARTED
}

start_dnsmasq() {
  rm -f "$WORK/dnsmasq.leases"
  # stderr to a file, not a pipe (dnsmasq --no-daemon also logs there).
  ip netns exec $NS_S dnsmasq --no-daemon --conf-file=/dev/null --port=0 -u root \
    --interface=$IF_S --bind-interfaces --except-interface=lo \
    --dhcp-range=$POOL_START,$POOL_END,255.255.0.0,1h --dhcp-option=3,10.77.0.1 \
    --dhcp-authoritative --dhcp-lease-max=70000 --no-ping \
    --dhcp-leasefile="$WORK/dnsmasq.leases" --pid-file="$WORK/dnsmasq.pid" \
    >"$WORK/dnsmasq.out" 2>&1 &
  SRV_PID=$!
  wait_for "$WORK/dnsmasq.out" "sockets bound"
}

# perfdhcp output → "rate do_drops% ra_drops% do_avg ra_avg do_max ra_max"
parse() {
  awk '
    /^Rate:/ { rate = $2 }
    /Statistics for: DISCOVER-OFFER/ { s = "do" }
    /Statistics for: REQUEST-ACK/ { s = "ra" }
    /^drops ratio:/ { d[s] = $3 }
    /^avg delay:/ && $3 ~ /^[0-9.]+$/ { a[s] = $3 }
    /^max delay:/ && $3 ~ /^[0-9.]+$/ { m[s] = $3 }
    END {
      printf "%s %s %s %s %s %s %s\n", rate, (d["do"] == "" ? "n/a" : d["do"]), (d["ra"] == "" ? "n/a" : d["ra"]),
        (a["do"] == "" ? "n/a" : a["do"]), (a["ra"] == "" ? "n/a" : a["ra"]),
        (m["do"] == "" ? "n/a" : m["do"]), (m["ra"] == "" ? "n/a" : m["ra"])
    }' "$1"
}

RESULTS="$WORK/results.txt"
: > "$RESULTS"
printf "%-9s %6s %5s %10s %8s %8s %9s %9s %9s %9s\n" server target round "exch/s" "DO drop%" "RA drop%" "DO avg ms" "RA avg ms" "DO max ms" "RA max ms" >&2
for round in $(seq 1 "$ROUNDS"); do
  for rate in $RATES; do
    for srv in ironseed kea dnsmasq; do
      start_$srv
      out="$WORK/perf-$srv-$rate-$round.txt"
      # -R: distinct clients (MACs); the lease state is fresh for every run.
      ip netns exec $NS_C perfdhcp -4 -l $IF_C -r "$rate" -R "$CLIENTS" -p "$PERIOD" >"$out" 2>&1 || true
      stop_server
      read -r got dod rad doa raa dom ram < <(parse "$out")
      echo "$srv $rate $round $got $dod $rad $doa $raa $dom $ram" >> "$RESULTS"
      printf "%-9s %6s %5s %10s %8s %8s %9s %9s %9s %9s\n" "$srv" "$rate" "$round" "$got" "$dod" "$rad" "$doa" "$raa" "$dom" "$ram" >&2
    done
  done
done

echo
echo "DHCPv4 4-way exchanges (DORA) via perfdhcp, medians of $ROUNDS interleaved rounds, ${PERIOD}s each, $CLIENTS clients"
printf "%-9s %6s | %10s %9s %9s | %10s %10s\n" server target "exch/s" "DO drop%" "RA drop%" "DO avg ms" "RA avg ms"
for rate in $RATES; do
  for srv in ironseed kea dnsmasq; do
    med() { # column
      awk -v s="$srv" -v r="$rate" -v c="$1" '$1 == s && $2 == r { print $c }' "$RESULTS" |
        sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else print v[int((NR + 1) / 2)] }'
    }
    printf "%-9s %6s | %10s %9s %9s | %10s %10s\n" "$srv" "$rate" "$(med 4)" "$(med 5)" "$(med 6)" "$(med 7)" "$(med 8)"
  done
done
