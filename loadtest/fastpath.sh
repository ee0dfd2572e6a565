#!/usr/bin/env bash
# The kernel fast paths, side by side, for an unprivileged caller (uid 65534), one fresh
# connection per request (connbench connect-request):
#   (a) WireServer refused by the proxy (403) vs in the kernel (`--kernel-deny`: EPERM at connect)
#   (b) IMDS GET /metadata/instance through the proxy (enforce) vs direct (`--mode imds=disabled`)
# A benchmark: it prints figures, it asserts no durations (only that each run got the outcome it
# was meant to measure).
#
# Runs as root in a private network namespace with the platform addresses on its loopback, the
# stand-in endpoints, a child cgroup (never the root cgroup) and its own bpf file system for the
# pins; everything is removed again on exit. The proxy (`run --workers 1`) is alone on CPU0, the
# client and the stand-in on CPU1 (as in compare.sh). Between configurations the proxy is
# stopped and `fastproxy detach` removes its pins, so every `run` attaches fresh.
#   usage: loadtest/fastpath.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}; rounds=${2:-1}
[ "$(id -u)" = 0 ] || { echo "fastpath.sh: needs root" >&2; exit 1; }
cargo build -q --release -p fastproxy -p fastproxy-loadtest
bin=${CARGO_TARGET_DIR:-$PWD/target}/release

cg_root=$(awk '{ for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' /proc/self/mountinfo)
[ -n "$cg_root" ] && [ -d "$cg_root" ] || { echo "fastpath.sh: no cgroup2 mount" >&2; exit 1; }
ns=fastproxy-bench-$$; cg=$cg_root/fastproxy-bench-$$
tmp=$(mktemp -d /tmp/fastproxy-bench.XXXXXX); bpffs=$tmp/bpffs; pins=$bpffs/fastproxy
proxy=; standin=; made_ns=; made_cg=; mounted=
cleanup() {
  set +e
  if [ -n "$proxy" ]; then kill "$proxy" 2>/dev/null; wait "$proxy" 2>/dev/null; fi
  if [ -n "$standin" ]; then kill "$standin" 2>/dev/null; wait "$standin" 2>/dev/null; fi
  if [ -n "$mounted" ]; then
    "$bin/fastproxy" detach --bpffs-dir "$pins" >/dev/null 2>&1
    umount "$bpffs"
  fi
  [ -n "$made_cg" ] && rmdir "$cg"
  [ -n "$made_ns" ] && ip netns del "$ns"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$ns"; made_ns=1
ip -n "$ns" link set lo up
ip -n "$ns" addr add 168.63.129.16/32 dev lo
ip -n "$ns" addr add 169.254.169.254/32 dev lo
mkdir "$cg"; made_cg=1
mkdir "$bpffs"; mount -t bpf bpf "$bpffs"; mounted=1
in_ns=(nsenter "--net=/run/netns/$ns")
# Runs a command as a member of the child cgroup (the shell joins it, then execs).
in_cg=(sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg")

# Waits for FILE to appear while process PID lives.
wait_ready() {
  for _ in $(seq 100); do
    [ -e "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "fastpath.sh: $3 did not come up; its log:" >&2
  tail -n 20 "$4" >&2
  exit 1
}

"${in_ns[@]}" taskset -c 1 "$bin/fastproxy" standin --ready-file "$tmp/standin.ready" \
  >"$tmp/standin.log" 2>&1 & standin=$!
wait_ready "$tmp/standin.ready" "$standin" "the stand-in" "$tmp/standin.log"

# start_proxy NAME [fastproxy run options]: the proxy alone on CPU0, logging to $tmp/NAME.log.
start_proxy() {
  local name=$1; shift
  log=$tmp/$name.log
  rm -f "$tmp/proxy.ready"
  "${in_cg[@]}" "${in_ns[@]}" taskset -c 0 "$bin/fastproxy" run --cgroup "$cg" --bpffs-dir "$pins" \
    --workers 1 --ready-file "$tmp/proxy.ready" --secure-channel off --telemetry off \
    --keys-dir "$tmp/keys" --log-dir "$tmp/logs" "$@" >"$log" 2>&1 & proxy=$!
  wait_ready "$tmp/proxy.ready" "$proxy" "fastproxy run $*" "$log"
}
stop_proxy() {
  kill "$proxy"; wait "$proxy" || true; proxy=
  "$bin/fastproxy" detach --bpffs-dir "$pins" >/dev/null
}
# The client: nobody, in the cgroup, on CPU1.
client() {
  "${in_cg[@]}" "${in_ns[@]}" taskset -c 1 setpriv --reuid 65534 --regid 65534 --clear-groups \
    "$bin/connbench" --mode connect-request --duration "$secs" --warmup 0.5 "$@"
}
wire() { client --addr 168.63.129.16:80 --path '/?comp=versions' "$@"; }
imds() {
  client --addr 169.254.169.254:80 --path '/metadata/instance?api-version=2021-08-01' \
    --header 'Metadata: true' --expect http200
}
imds_logged() { grep -c '"imds"' "$1" || true; }  # access-log lines for IMDS
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
brief() { printf '%s ops/s  p50 %s us  p99 %s us  %s' "$(field ops_per_s "$1")" \
  "$(field p50_us "$1")" "$(field p99_us "$1")" "$(field outcomes "$1")"; }
ratio() { awk -v a="$(field ops_per_s "$1")" -v b="$(field ops_per_s "$2")" \
  -v c="$(field p50_us "$1")" -v d="$(field p50_us "$2")" \
  'BEGIN { printf "ops/s x%.2f, p50 x%.2f", a / b, (d > 0 ? c / d : 0) }'; }

echo "uid 65534, one connection per request, ${secs}s per run (proxy CPU0, client and stand-in CPU1)"
for round in $(seq "$rounds"); do
  start_proxy enforce
  wire_proxy=$(wire --expect http403)
  imds_proxy=$(imds)
  enforce_log=$log
  stop_proxy
  [ "$(imds_logged "$enforce_log")" -gt 0 ] || { echo "fastpath.sh: IMDS did not go through the proxy; its log:" >&2; tail -n 5 "$enforce_log" >&2; exit 1; }

  start_proxy kernel-deny --kernel-deny
  wire_kernel=$(wire --expect eperm)
  stop_proxy

  start_proxy imds-disabled --mode imds=disabled
  imds_direct=$(imds)
  stop_proxy
  [ "$(imds_logged "$log")" = 0 ] || { echo "fastpath.sh: IMDS went through the proxy while disabled" >&2; exit 1; }

  echo "round $round"
  echo "(a) WireServer GET /?comp=versions, refused"
  echo "    by the proxy (403):     $(brief "$wire_proxy")"
  echo "    in the kernel (EPERM):  $(brief "$wire_kernel")"
  echo "    kernel vs proxy:        $(ratio "$wire_kernel" "$wire_proxy")"
  echo "(b) IMDS GET /metadata/instance?api-version=2021-08-01, Metadata: true"
  echo "    through the proxy:      $(brief "$imds_proxy")"
  echo "    direct (imds=disabled): $(brief "$imds_direct")"
  echo "    direct vs proxy:        $(ratio "$imds_direct" "$imds_proxy")"
done
