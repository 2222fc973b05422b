#!/usr/bin/env bash
# HTTP benchmark: `pxe serve` against nginx (sendfile) serving the same artifact file, with the
# same client (curl to /dev/null), one stream and 50 at once, in interleaved rounds (only ratios
# from one run mean anything on this noisy 2-core machine; docs/reference.md "Benchmark method").
#
#   bash pxe/bench/http.sh                 # installs nginx-light if missing (root)
#   ROUNDS=5 SIZE_MB=512 CONC=50 bash pxe/bench/http.sh
#
# Prints MB/s (MB = 10^6 bytes; median of ROUNDS, min-max), the ratio ironseed/nginx, and
# ironseed's peak resident memory (VmHWM) while serving CONC clients. Loopback only:
# 127.0.0.1:46950 (ironseed) and :46951 (nginx); PORT_BASE moves them.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SIZE_MB=${SIZE_MB:-512}
CONC=${CONC:-50}
# PORT_BASE lets several people benchmark on one machine without colliding.
P_IRON=${PORT_BASE:-46950}
P_NGINX=$((P_IRON + 1))
here=$(cd "$(dirname "$0")/../.." && pwd)

command -v nginx >/dev/null || { apt-get install -y -qq nginx-light >/dev/null; }
command -v curl >/dev/null || { apt-get install -y -qq curl >/dev/null; }

work=$(mktemp -d /tmp/http-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# PXE_BIN / BUILDER_BIN: benchmark prebuilt binaries (e.g. a baseline) instead of building.
pxe_bin=${PXE_BIN:-$here/target/release/pxe}
builder_bin=${BUILDER_BIN:-$here/target/release/builder}
if [[ -z ${PXE_BIN:-} || -z ${BUILDER_BIN:-} ]]; then
    echo "== building (release)" >&2
    (cd "$here" && cargo build --release -q -p pxe -p builder)
fi
"$builder_bin" render -o "$work/bundle" --secrets "$work/s.yaml" >/dev/null 2>&1
mkdir -p "$work/artifacts/images" "$work/ipxe" "$work/state"
head -c $((SIZE_MB << 20)) /dev/urandom > "$work/artifacts/images/bench.img"
chmod -R a+rX "$work"

"$pxe_bin" serve --bundle "$work/bundle" --listen 127.0.0.1 --dhcp off \
    --http-port $P_IRON --tftp-port 0 --state "$work/state" --ipxe-dir "$work/ipxe" \
    --artifacts "$work/artifacts" --http-max-per-address 4096 --http-max-connections 4096 \
    > "$work/pxe.out" 2> "$work/pxe.err" &
pids+=($!)
iron_pid=$!
cat > "$work/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {
        listen 127.0.0.1:$P_NGINX;
        root $work/artifacts;
        location /artifacts/ { alias $work/artifacts/; }
    }
}
CONF
nginx -c "$work/nginx.conf" &
pids+=($!)
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$P_IRON/healthz" && curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$P_NGINX/artifacts/images/bench.img" && break
    sleep 0.1
done

bytes=$((SIZE_MB << 20))
one() { # port -> MB/s of one download
    local t
    t=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$1/artifacts/images/bench.img")
    python3 -c "print(f'{$bytes/1e6/$t:.0f}')"
}
many() { # port -> aggregate MB/s of CONC parallel downloads
    local start end
    start=$(date +%s.%N)
    for _ in $(seq "$CONC"); do
        curl -s -o /dev/null "http://127.0.0.1:$1/artifacts/images/bench.img" &
    done
    wait $(jobs -p | grep -v -e "$iron_pid" || true) 2>/dev/null || true
    end=$(date +%s.%N)
    python3 -c "print(f'{$CONC*$bytes/1e6/($end-$start):.0f}')"
}

declare -A r
for round in $(seq "$ROUNDS"); do
    echo "== round $round/$ROUNDS" >&2
    r[iron1]+="$(one $P_IRON) "; r[nginx1]+="$(one $P_NGINX) "
    r[ironN]+="$(many $P_IRON) "; r[nginxN]+="$(many $P_NGINX) "
done
hwm=$(awk '/VmHWM/ {print $2}' /proc/$iron_pid/status)

stats() { python3 -c "import statistics,sys; v=sorted(map(float,sys.argv[1:])); print(f'{statistics.median(v):.0f} ({v[0]:.0f}-{v[-1]:.0f})')" $1; }
med() { python3 -c "import statistics,sys; print(statistics.median(map(float,sys.argv[1:])))" $1; }
printf '\nHTTP, %d MiB file, curl to /dev/null, MB/s median of %d (min-max)\n' "$SIZE_MB" "$ROUNDS"
printf '%-22s %-20s %-20s %s\n' "" "ironseed pxe" "nginx (sendfile)" "ratio"
for k in 1 N; do
    label=$([ $k = 1 ] && echo "one stream" || echo "$CONC at once, aggregate")
    ratio=$(python3 -c "print(f'{$(med "${r[iron$k]}")/$(med "${r[nginx$k]}"):.2f}x')")
    printf '%-22s %-20s %-20s %s\n' "$label" "$(stats "${r[iron$k]}")" "$(stats "${r[nginx$k]}")" "$ratio"
done
printf '\nironseed pxe peak resident memory (VmHWM) over the run: %d KiB (%.1f MiB)\n' "$hwm" "$(python3 -c "print($hwm/1024)")"
