#!/usr/bin/env bash
# TFTP benchmark: ironseed's server against tftpd-hpa, atftpd and dnsmasq, with
# the same clients and the same file, in interleaved rounds (only ratios from
# one run mean anything on this noisy 2-core machine: docs/reference.md "Benchmark method").
#
#   bash pxe/bench/tftp.sh            # needs root (network namespace for dnsmasq)
#   ROUNDS=5 SIZE_MB=64 CONC=50 CONC_MB=30 CONC_ROUNDS=2 bash pxe/bench/tftp.sh
#
# Prints one table of MB/s (MB = 10^6 bytes; median of ROUNDS, min-max) with the
# ratio of ironseed to each peer, then CONC concurrent clients x CONC_MB MiB: wall
# time, each server's CPU time (clients and servers share the 2 cores, so CPU
# per transfer is the steadier figure) and ironseed's peak resident memory.
#
# Ports: 127.0.0.1:46960-46963 on the host (PORT_BASE moves them); dnsmasq 2.90 has no --tftp-port, so
# it runs on port 69 inside the namespace "tftbench" (NS renames it) (only lo, 127.0.0.1) and its
# clients run there too. Traffic never leaves loopback.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
SIZE_MB=${SIZE_MB:-64}
CONC=${CONC:-50}
CONC_MB=${CONC_MB:-30}
CONC_ROUNDS=${CONC_ROUNDS:-2}
# PORT_BASE and NS let several people benchmark on one machine without colliding.
PORT_BASE=${PORT_BASE:-46960}
P_IRON=$PORT_BASE
P_HPA=$((PORT_BASE + 1))
P_ATFTPD=$((PORT_BASE + 2))
P_IRON16=$((PORT_BASE + 3))
NS=${NS:-tftbench}

here=$(cd "$(dirname "$0")/../.." && pwd)
for bin in tftp curl atftp in.tftpd dnsmasq ip; do
    command -v "$bin" >/dev/null || { echo "missing $bin (apt-get install tftp-hpa curl atftp tftpd-hpa dnsmasq-base iproute2)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/tftp-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# IRON_BIN: benchmark a prebuilt tftp_serve (e.g. a baseline) instead of building.
iron_bin=${IRON_BIN:-$here/target/release/examples/tftp_serve}
if [[ -z ${IRON_BIN:-} ]]; then
    echo "== building ironseed (release)" >&2
    (cd "$here" && cargo build --release -q -p pxe --example tftp_serve)
fi

# atftpd conflicts with tftpd-hpa as a package: unpack it instead.
atftpd_bin="$here/target/bench-peers/usr/sbin/atftpd"
if [[ ! -x $atftpd_bin ]]; then
    echo "== unpacking atftpd" >&2
    mkdir -p "$here/target/bench-peers"
    (cd "$work" && apt-get download atftpd >/dev/null 2>&1 && dpkg-deb -x atftpd_*.deb "$here/target/bench-peers")
fi

# The root must be world-readable: in.tftpd and dnsmasq drop privileges.
root="$work/root"
out="$work/out"
mkdir -p "$root" "$out"
chmod 755 "$work" "$root"
head -c $((SIZE_MB * 1048576)) /dev/urandom >"$root/big.bin"
head -c $((CONC_MB * 1048576)) /dev/urandom >"$root/conc.bin"
chmod 644 "$root"/*.bin
size_big=$(stat -c %s "$root/big.bin")
size_conc=$(stat -c %s "$root/conc.bin")

echo "== starting servers" >&2
RUST_LOG=warn "$iron_bin" "$root" 127.0.0.1:$P_IRON 128 >"$work/iron.log" 2>&1 &
iron_pid=$!; pids+=("$iron_pid")
# The same server with 16 runtime threads instead of one per core. Here the 50
# clients share the 2 cores with the server, and the peers get one scheduler
# share per transfer (a process per transfer in tftpd-hpa, a thread in atftpd):
# this instance showed how much of the concurrent wall time was that share.
# Transfers now run on a blocking-pool thread each, so both instances should
# match; a gap between them would point at the runtime again.
TFTP_THREADS=16 RUST_LOG=warn "$iron_bin" "$root" 127.0.0.1:$P_IRON16 128 >"$work/iron16.log" 2>&1 &
iron16_pid=$!; pids+=("$iron16_pid")
in.tftpd -L -s "$root" -a 127.0.0.1:$P_HPA >"$work/hpa.log" 2>&1 &
hpa_pid=$!; pids+=("$hpa_pid")
"$atftpd_bin" --daemon --no-fork --port $P_ATFTPD --bind-address 127.0.0.1 \
    --user root --group root --maxthread 128 --logfile /dev/null "$root" >"$work/atftpd.log" 2>&1 &
atftpd_pid=$!; pids+=("$atftpd_pid")
ip netns add "$NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 \
    --enable-tftp --tftp-root="$root" --listen-address=127.0.0.1 --bind-interfaces \
    --user=root --group=root --tftp-max=128 --log-facility="$work/dnsmasq.log" &
dnsmasq_pid=$!; pids+=("$dnsmasq_pid")  # ip netns exec execs: same PID
sleep 1
declare -A server_pid=([ironseed]=$iron_pid [ironseed-t16]=$iron16_pid [tftpd-hpa]=$hpa_pid [atftpd]=$atftpd_pid [dnsmasq]=$dnsmasq_pid)

# server name -> "prefix port": how a client reaches it.
declare -A where=(
    [ironseed]=":$P_IRON"
    [ironseed-t16]=":$P_IRON16"
    [tftpd-hpa]=":$P_HPA"
    [atftpd]=":$P_ATFTPD"
    [dnsmasq]="ns:69"
)

# fetch SERVER CLIENT FILE OUTFILE: one download; the client's exit code.
fetch() {
    local server=$1 client=$2 file=$3 dest=$4
    local spec=${where[$server]} pre=()
    local port=${spec#*:}
    [[ $spec == ns:* ]] && pre=(ip netns exec "$NS")
    case $client in
    tftp512) "${pre[@]}" tftp -m binary 127.0.0.1 "$port" -c get "$file" "$dest" 2>/dev/null ;;
    curl*) "${pre[@]}" curl -sS --tftp-blksize "${client#curl}" -o "$dest" "tftp://127.0.0.1:$port/$file" 2>/dev/null ;;
    atftp-ws*) "${pre[@]}" atftp --get -r "$file" -l "$dest" --option "blksize 1468" \
        --option "windowsize ${client#atftp-ws}" 127.0.0.1 "$port" >/dev/null 2>&1 ;;
    esac
}

now() { date +%s.%N; }

# cases: client and the servers it is measured against (ironseed first).
cases=(
    "tftp512 ironseed tftpd-hpa atftpd dnsmasq"
    "curl1468 ironseed tftpd-hpa atftpd dnsmasq"
    "curl65464 ironseed tftpd-hpa atftpd dnsmasq"
    "atftp-ws8 ironseed atftpd"
    "atftp-ws16 ironseed atftpd"
)
declare -A results  # "client server" -> space-separated MB/s

echo "== single client, $SIZE_MB MiB, $ROUNDS interleaved rounds" >&2
for round in $(seq 1 "$ROUNDS"); do
    for c in "${cases[@]}"; do
        read -r client servers <<<"$c"
        read -ra list <<<"$servers"
        # Rotate the order each round so no server always runs first.
        n=${#list[@]}
        for i in $(seq 0 $((n - 1))); do
            server=${list[$(((i + round) % n))]}
            rm -f "$out/one"
            t0=$(now)
            fetch "$server" "$client" big.bin "$out/one" || true
            t1=$(now)
            got=$(stat -c %s "$out/one" 2>/dev/null || echo 0)
            if [[ $got -eq $size_big ]]; then
                mbs=$(awk -v b="$size_big" -v a="$t0" -v z="$t1" 'BEGIN{printf "%.1f", b/(z-a)/1e6}')
            else
                mbs=FAIL
            fi
            results["$client $server"]+="$mbs "
            echo "   round $round $client $server $mbs" >&2
        done
    done
done

# median, min, max of a list of numbers ("FAIL" makes the cell FAIL).
stats() {
    tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '
        /FAIL/ {fail=1} {v[NR]=$1}
        END { if (fail || NR==0) { print "FAIL"; exit }
              m = (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2
              printf "%.1f %.1f %.1f\n", m, v[1], v[NR] }'
}

echo
echo "TFTP, one client on loopback, ${SIZE_MB} MiB file, MB/s median (min-max) of $ROUNDS rounds"
printf '%-12s | %-20s | %-20s | %-20s | %-20s | %s\n' client ironseed tftpd-hpa atftpd dnsmasq "ironseed / peer"
printf '%s\n' "-------------+----------------------+----------------------+----------------------+----------------------+-------------------------"
for c in "${cases[@]}"; do
    read -r client servers <<<"$c"
    read -r im _ _ <<<"$(stats "${results["$client ironseed"]}")"
    row=$(printf '%-12s' "$client")
    ratios=""
    for server in ironseed tftpd-hpa atftpd dnsmasq; do
        if [[ -z ${results["$client $server"]+x} ]]; then
            row+=$(printf ' | %-20s' "-")
            continue
        fi
        read -r m lo hi <<<"$(stats "${results["$client $server"]}")"
        if [[ $m == FAIL ]]; then
            row+=$(printf ' | %-20s' "FAIL")
        else
            row+=$(printf ' | %-20s' "$m ($lo-$hi)")
        fi
        if [[ $server != ironseed && $m != FAIL && $im != FAIL ]]; then
            ratios+=$(awk -v a="$im" -v b="$m" -v s="$server" 'BEGIN{printf "%s %.2fx  ", s, a/b}')
        fi
    done
    echo "$row | $ratios"
done

# cpu_ticks PID: CPU time of a server process in clock ticks, including reaped
# children (in.tftpd forks one per transfer).
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }

# conc SERVER CLIENT: CONC clients at once, each CONC_MB MiB. Prints wall
# seconds, failures, server CPU seconds and (ironseed) the peak RSS sampled.
conc() {
    local server=$1 client=$2 t0 t1 fails=0 cpids=() i c0 c1
    local spid=${server_pid[$server]}
    rm -rf "$out/c" && mkdir -p "$out/c"
    c0=$(cpu_ticks "$spid")
    t0=$(now)
    for i in $(seq 1 "$CONC"); do
        fetch "$server" "$client" conc.bin "$out/c/$i" &
        cpids+=($!)
    done
    local peak=0 rss
    if [[ $server == ironseed* ]]; then
        while kill -0 "${cpids[@]}" 2>/dev/null; do
            rss=$(awk '/VmRSS/ {print $2}' "/proc/$spid/status")
            ((rss > peak)) && peak=$rss
            sleep 0.1 # polling granularity adds at most 0.1 s to wall time
        done
    fi
    for p in "${cpids[@]}"; do wait "$p" || true; done
    t1=$(now)
    c1=$(cpu_ticks "$spid")
    for i in $(seq 1 "$CONC"); do
        [[ $(stat -c %s "$out/c/$i" 2>/dev/null || echo 0) -eq $size_conc ]] || fails=$((fails + 1))
    done
    awk -v a="$t0" -v z="$t1" -v f="$fails" -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v p="$peak" \
        'BEGIN{printf "%.1f %d %.1f %d\n", z-a, f, c/hz, p}'
}

echo >&2
echo "== $CONC concurrent x $CONC_MB MiB, $CONC_ROUNDS interleaved rounds" >&2
conc_cases=(
    "ironseed atftp-ws8" "ironseed-t16 atftp-ws8" "atftpd atftp-ws8"
    "ironseed curl1468" "ironseed-t16 curl1468" "tftpd-hpa curl1468" "dnsmasq curl1468"
)
declare -A conc_wall conc_fail conc_cpu
peak_rss=0
for round in $(seq 1 "$CONC_ROUNDS"); do
    n=${#conc_cases[@]}
    for i in $(seq 0 $((n - 1))); do
        cc=${conc_cases[$(((i + round) % n))]}
        read -r server client <<<"$cc"
        read -r wall fails cpu peak <<<"$(conc "$server" "$client")"
        conc_wall["$cc"]+="$wall "
        conc_cpu["$cc"]+="$cpu "
        conc_fail["$cc"]=$((${conc_fail["$cc"]:-0} + fails))
        ((peak > peak_rss)) && peak_rss=$peak
        echo "   round $round $cc wall $wall s, failures $fails, server CPU $cpu s" >&2
    done
done

echo
echo "TFTP, $CONC concurrent clients x $CONC_MB MiB, median (min-max) of $CONC_ROUNDS rounds"
printf '%-24s | %-18s | %-8s | %-9s | %s\n' "server / client" "wall s" failures "agg MB/s" "server CPU s"
printf '%s\n' "-------------------------+--------------------+----------+-----------+-------------------"
declare -A wall_med cpu_med
for cc in "${conc_cases[@]}"; do
    read -r wm wlo whi <<<"$(stats "${conc_wall["$cc"]}")"
    read -r cm clo chi <<<"$(stats "${conc_cpu["$cc"]}")"
    wall_med["$cc"]=$wm
    cpu_med["$cc"]=$cm
    agg=$(awk -v w="$wm" -v n="$CONC" -v b="$size_conc" 'BEGIN{printf "%.0f", n*b/w/1e6}')
    printf '%-24s | %-18s | %-8s | %-9s | %s\n' "${cc/ / \/ }" "$wm ($wlo-$whi)" \
        "${conc_fail["$cc"]}/$((CONC * CONC_ROUNDS))" "$agg" "$cm ($clo-$chi)"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2fx", a/b}'; }
for iron in ironseed ironseed-t16; do
    echo "wall $iron / atftpd (atftp ws8): $(ratio "${wall_med["$iron atftp-ws8"]}" "${wall_med["atftpd atftp-ws8"]}") (target <= 0.70); server CPU: $(ratio "${cpu_med["$iron atftp-ws8"]}" "${cpu_med["atftpd atftp-ws8"]}")"
    echo "wall $iron / tftpd-hpa (curl 1468): $(ratio "${wall_med["$iron curl1468"]}" "${wall_med["tftpd-hpa curl1468"]}"), / dnsmasq: $(ratio "${wall_med["$iron curl1468"]}" "${wall_med["dnsmasq curl1468"]}"); server CPU / dnsmasq: $(ratio "${cpu_med["$iron curl1468"]}" "${cpu_med["dnsmasq curl1468"]}")"
done
echo "(tftpd-hpa's CPU is not measured: its per-transfer children are not accounted to the listener)"
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$iron_pid/status")
hwm16=$(awk '/VmHWM/ {print $2}' "/proc/$iron16_pid/status")
echo "ironseed resident memory: peak VmRSS sampled while serving $CONC clients $peak_rss kB; VmHWM over the whole run $hwm kB, $hwm16 kB with 16 threads (target < 51200 kB)"
echo "atftpd VmHWM over the whole run: $(awk '/VmHWM/ {print $2}' "/proc/$atftpd_pid/status") kB"
