#!/bin/sh
# Run every ironseed fuzz target in turn, then minimise its corpus.
#
#   pxe/fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 600); TARGETs default to all five:
# dhcp_request, tftp_packet, http_path, http_request (pxe/fuzz) and inventory (builder/fuzz).
# One fuzzer process at a time, niced: the build machine is shared.
# Needs `cargo +nightly` and cargo-fuzz (`cargo install cargo-fuzz`).
#
# Each run grows corpus/<target>/; afterwards `cargo fuzz cmin` shrinks it to
# the inputs that keep the coverage, and the hand-written seed-* files are put
# back under their names. Commit the result. A crash stops the script (libFuzzer
# exits non-zero) with the input in <crate>/fuzz/artifacts/<target>/.
# Logs: <crate>/fuzz/logs/<target>.log (last "#N ... cov: ... corp: ..." line
# is the summary).
set -eu
secs=${1:-600}
[ $# -gt 0 ] && shift
targets=${*:-dhcp_request tftp_packet http_path http_request inventory}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

for t in $targets; do
  case $t in
    inventory) crate=$root/builder ;;
    dhcp_request | tftp_packet | http_path | http_request) crate=$root/pxe ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  corpus=$crate/fuzz/corpus/$t
  logs=$crate/fuzz/logs
  mkdir -p "$corpus" "$logs"
  echo "== $t: ${secs}s"
  cd "$crate"
  nice -n 10 cargo +nightly fuzz build "$t"
  # -jobs=1 -workers=1: a single worker; libFuzzer writes its output to
  # fuzz-0.log in the current folder, moved to logs/ afterwards (the parent
  # prints it again when the job ends: logs/<target>.run.log).
  status=0
  nice -n 10 cargo +nightly fuzz run "$t" -- \
    -max_total_time="$secs" -jobs=1 -workers=1 -timeout=25 \
    -print_final_stats=1 >"$logs/$t.run.log" 2>&1 || status=$?
  mv -f fuzz-0.log "$logs/$t.log" 2>/dev/null || true
  grep -E '^#[0-9]+' "$logs/$t.log" | tail -n 1 || true
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$logs/$t.log" || true
  if [ "$status" -ne 0 ]; then
    echo "$t: fuzzer exited with $status (crash?): see $logs/$t.log" >&2
    exit "$status"
  fi

  # Minimise, keeping the named seeds.
  seeds=$(mktemp -d)
  find "$corpus" -maxdepth 1 -name 'seed-*' -exec cp {} "$seeds/" \;
  nice -n 10 cargo +nightly fuzz cmin "$t" >"$logs/$t.cmin.log" 2>&1
  for s in "$seeds"/seed-*; do
    [ -e "$s" ] || continue
    rm -f "$corpus/$(sha1sum "$s" | cut -d' ' -f1)"
    cp "$s" "$corpus/"
  done
  rm -rf "$seeds"
  echo "$t corpus: $(find "$corpus" -type f | wc -l) files, $(du -sh --apparent-size "$corpus" | cut -f1)"
done
