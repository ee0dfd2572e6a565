#!/usr/bin/env bash
# Side by side, per scenario: direct to the stand-in WireServer vs through fastproxy (eBPF
# redirect) vs nginx and HAProxy as reverse proxies, with each proxy's CPU time per request.
# Layout and method of DESIGN.md section 6: the proxy under test (fastproxy run --workers 1,
# nginx with one worker, HAProxy with one thread) pinned to CPU0, the stand-in and the load
# generator (fastproxy-loadtest) pinned to CPU1; the systems alternate within each round (the
# order reverses every other round); the proxy's CPU time is utime+stime of its processes
# (/proc/PID/stat, in clock ticks) before and after each run, divided by the requests done.
# A benchmark: it prints figures and asserts no durations (it only checks that each run got
# 2xx answers without errors and, for fastproxy, went through the proxy; it stops otherwise).
#
# Scenarios: keep-alive with 1, 16 and 64 connections; a new connection per request, 1 and 16
# at a time. Paths:
#   direct     client -> 168.63.129.16:80 (the stand-in), from outside the child cgroup
#   fastproxy  client in the child cgroup -> 168.63.129.16:80, redirected by the kernel
#              programs to fastproxy (127.0.0.1:308) -> stand-in; --secure-channel off (the
#              stand-in's channel is disabled, which would turn the redirect off), so the
#              default modes (enforce) apply and nothing is signed
#   nginx      client -> nginx on 127.0.0.1:8081 -> stand-in (upstream keepalive, no access log)
#   haproxy    client -> HAProxy on 127.0.0.1:8082 -> stand-in (http-reuse always, no log)
# The proxies all stay up for the whole run (idle when not under test; the script reports the
# CPU they took while idle). Configs: loadtest/compare/{nginx.conf.in,haproxy.cfg.in}.
# fastproxy logs as it does by default (an access-log line per request, to a file in the temp
# dir, which is how the script checks the requests went through it); ACCESS_LOG=off turns its
# access log off (RUST_LOG=info,fastproxy::access=off) for a like-for-like comparison with the
# others. HAProxy is installed with apt-get when missing (HAPROXY_INSTALL=no: don't); a
# missing nginx or HAProxy only drops its column.
#
# Runs as root in a private network namespace with the platform addresses on its loopback, a
# child cgroup (never the root cgroup) and its own bpf file system; everything is removed
# again on exit, also on Ctrl-C.
#   usage: [ACCESS_LOG=on|off] [HAPROXY_INSTALL=no] loadtest/compare.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}; rounds=${2:-2}
access_log=${ACCESS_LOG:-on}
case $access_log in on|off) ;; *) echo "compare.sh: ACCESS_LOG must be on or off" >&2; exit 1 ;; esac
[ "$(id -u)" = 0 ] || { echo "compare.sh: needs root" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "compare.sh: needs CPUs 0 and 1" >&2; exit 1; }
here=$PWD/loadtest/compare
clk=$(getconf CLK_TCK)

systems=(direct fastproxy)
notes=()
if command -v nginx >/dev/null; then
  systems+=(nginx)
else
  notes+=("nginx is not installed: no nginx column (and no CPU ratios vs nginx)")
fi
if ! command -v haproxy >/dev/null && [ "${HAPROXY_INSTALL:-yes}" != no ]; then
  echo "compare.sh: installing HAProxy (apt-get install -y haproxy)" >&2
  apt-get install -y -q haproxy >/dev/null 2>&1 || true
fi
if command -v haproxy >/dev/null; then
  systems+=(haproxy)
else
  notes+=("HAProxy is not installed and could not be installed (apt-get install -y haproxy): no haproxy column")
fi

scen_name=("keep-alive, 1 conn" "keep-alive, 16 conns" "keep-alive, 64 conns"
  "new conn/request, 1" "new conn/request, 16")
scen_args=("--connections 1" "--connections 16" "--connections 64"
  "--connections 1 --new-connection-per-request" "--connections 16 --new-connection-per-request")
nruns=$((rounds * ${#scen_name[@]} * ${#systems[@]}))

versions="fastproxy access log $access_log"
[[ " ${systems[*]} " = *" nginx "* ]] && versions+=", nginx $(nginx -v 2>&1 | sed 's|.*nginx/||')"
[[ " ${systems[*]} " = *" haproxy "* ]] && versions+=", HAProxy $(haproxy -v | awk 'NR == 1 { print $3 }')"
echo "compare.sh: ${secs}s per run, $rounds rounds, ${#scen_name[@]} scenarios x ${#systems[@]} systems = $nruns runs;" \
  "expected runtime about $(awk -v n="$nruns" -v s="$secs" -v k="${#systems[@]}" 'BEGIN { printf "%d", n * (s + 0.5) + k * 0.7 + 3 }')s (plus the build)"
echo "systems: ${systems[*]} ($versions)"
echo "layout: proxy under test alone on CPU0 (fastproxy --workers 1, nginx worker_processes 1, haproxy nbthread 1); stand-in and load generator on CPU1; other proxies idle"
for n in "${notes[@]}"; do echo "note: $n"; done

cargo build -q --release -p fastproxy -p fastproxy-loadtest
bin=${CARGO_TARGET_DIR:-$PWD/target}/release

cg_root=$(awk '{ for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' /proc/self/mountinfo)
[ -n "$cg_root" ] && [ -d "$cg_root" ] || { echo "compare.sh: no cgroup2 mount" >&2; exit 1; }
ns=fastproxy-bench-$$; cg=$cg_root/fastproxy-bench-$$
tmp=$(mktemp -d /tmp/fastproxy-bench.XXXXXX); bpffs=$tmp/bpffs; pins=$bpffs/fastproxy
standin=; made_ns=; made_cg=; mounted=
declare -A pid=()      # proxy name -> PID of its (main) process, once started
nginx_workers=()       # nginx worker PIDs, in case one outlives its master
cleanup() {
  set +e
  local name p
  for name in "${!pid[@]}"; do
    kill "${pid[$name]}" 2>/dev/null; wait "${pid[$name]}" 2>/dev/null
  done
  for p in "${nginx_workers[@]}"; do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = nginx ] && kill "$p" 2>/dev/null
  done
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
# A new connection per request closes client-first: no TIME_WAIT and a wide port range in
# the namespace, or the direct runs (not loopback addresses, so no tw_reuse) run out of ports.
nsenter "--net=/run/netns/$ns" sysctl -q -w net.ipv4.tcp_max_tw_buckets=0 \
  net.ipv4.ip_local_port_range="1024 65535"
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
  echo "compare.sh: $3 did not come up; its log:" >&2
  tail -n 20 "$4" >&2
  exit 1
}
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
# The load generator on CPU1; for fastproxy in the child cgroup (so its connects are redirected).
client() {
  local sys=$1; shift
  if [ "$sys" = fastproxy ]; then
    "${in_cg[@]}" "${in_ns[@]}" taskset -c 1 "$bin/fastproxy-loadtest" "$@"
  else
    "${in_ns[@]}" taskset -c 1 "$bin/fastproxy-loadtest" "$@"
  fi
}
url_of() {
  case $1 in
    direct|fastproxy) echo 'http://168.63.129.16/?comp=versions' ;;
    nginx) echo 'http://127.0.0.1:8081/?comp=versions' ;;
    haproxy) echo 'http://127.0.0.1:8082/?comp=versions' ;;
  esac
}
# Waits until SYSTEM answers a request with a 2xx.
wait_answers() {
  local line
  for _ in $(seq 50); do
    kill -0 "${pid[$1]}" 2>/dev/null || break
    line=$(client "$1" --url "$(url_of "$1")" --max-requests 1 --duration 1 --timeout-ms 200 2>/dev/null) || true
    [ "$(field requests "$line")" = 1 ] && [ "$(field errors "$line")" = 0 ] && return 0
    sleep 0.1
  done
  echo "compare.sh: $1 does not answer; its log:" >&2
  tail -n 20 "$tmp/$1.log" >&2
  exit 1
}
# The PID and its children (nginx: master and worker).
tree() { echo "$1"; pgrep -P "$1" || true; }
# utime+stime, in clock ticks, of a proxy's processes (all their threads).
ticks() {
  local t=0 p
  for p in $(tree "$1"); do
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
  done
  echo "$t"
}
# Every thread of every process of PID must be allowed on CPU list $2 only.
check_pinned() {
  local p s
  for p in $(tree "$1"); do
    for s in /proc/"$p"/task/*/status; do
      [ "$(awk '$1 == "Cpus_allowed_list:" { print $2 }' "$s")" = "$2" ] \
        || { echo "compare.sh: $3 ($s) is not pinned to CPU $2" >&2; exit 1; }
    done
  done
}
# Nanoseconds the proxy's threads spent runnable but waiting for a CPU (schedstat field 2):
# time another task, or another thread of the proxy (fastproxy's log writer), held CPU0.
rqwait() {
  local p
  for p in $(tree "$1"); do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{ t += $2 } END { printf "%.0f", t }'
}
access_lines() { grep -c 'fastproxy::access' "$tmp/fastproxy.log" || true; }

# --- start the stand-in (CPU1) and the proxies (CPU0) -------------------------------------
"${in_ns[@]}" taskset -c 1 "$bin/fastproxy" standin --ready-file "$tmp/standin.ready" \
  >"$tmp/standin.log" 2>&1 & standin=$!
wait_ready "$tmp/standin.ready" "$standin" "the stand-in" "$tmp/standin.log"
check_pinned "$standin" 1 "the stand-in"

fp_log_filter=info
[ "$access_log" = off ] && fp_log_filter=info,fastproxy::access=off
# The secure channel off: with it on, the stand-in's (disabled) channel would switch the
# redirect off; off keeps the default modes (enforce) and signs nothing. Its key and tag files
# go to the temp dir, never /var/lib/fastproxy.
# The stand-in's secure channel is off, and a status that says so would turn every redirect
# off: measure with the channel off, telemetry off, and every file in the temp dir.
fp_opts=(--secure-channel off --telemetry off --keys-dir "$tmp/keys" --log-dir "$tmp/logs")
# Appending (O_APPEND), so the log can be truncated between runs.
RUST_LOG=$fp_log_filter "${in_cg[@]}" "${in_ns[@]}" taskset -c 0 "$bin/fastproxy" run \
  --cgroup "$cg" --bpffs-dir "$pins" --workers 1 --ready-file "$tmp/fastproxy.ready" "${fp_opts[@]}" \
  >>"$tmp/fastproxy.log" 2>&1 & pid[fastproxy]=$!
wait_ready "$tmp/fastproxy.ready" "${pid[fastproxy]}" "fastproxy run" "$tmp/fastproxy.log"

for sys in "${systems[@]}"; do
  case $sys in
    nginx)
      sed "s|@DIR@|$tmp|g" "$here/nginx.conf.in" >"$tmp/nginx.conf"
      "${in_ns[@]}" taskset -c 0 nginx -p "$tmp/" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" \
        -g 'daemon off;' >"$tmp/nginx.log" 2>&1 & pid[nginx]=$!
      wait_answers nginx
      mapfile -t nginx_workers < <(pgrep -P "${pid[nginx]}")
      [ "${#nginx_workers[@]}" = 1 ] || { echo "compare.sh: nginx has ${#nginx_workers[@]} workers" >&2; exit 1; }
      ;;
    haproxy)
      sed "s|@DIR@|$tmp|g" "$here/haproxy.cfg.in" >"$tmp/haproxy.cfg"
      "${in_ns[@]}" taskset -c 0 haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 & pid[haproxy]=$!
      wait_answers haproxy
      ;;
  esac
done
for sys in "${!pid[@]}"; do check_pinned "${pid[$sys]}" 0 "$sys"; done

echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg) (anything else on CPU0 or CPU1 distorts the figures)"

# --- warm-up (unmeasured): fills the upstream pools, proves every path answers ---------------
for sys in "${systems[@]}"; do
  line=$(client "$sys" --url "$(url_of "$sys")" --connections 16 --duration 0.5 2>"$tmp/client.err")
  [ "$(field errors "$line")" = 0 ] || { echo "compare.sh: warm-up of $sys failed: $line" >&2; cat "$tmp/client.err" >&2; exit 1; }
done

# --- the runs -----------------------------------------------------------------------------
results=$tmp/results   # sys scenario round requests req_per_s p50 p99 cpu_us_per_req runq_wait_ms
: >"$results"
idle_ticks=0
for round in $(seq "$rounds"); do
  order=("${systems[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=(); for ((i = ${#systems[@]} - 1; i >= 0; i--)); do order+=("${systems[$i]}"); done
  fi
  for s in "${!scen_name[@]}"; do
    for sys in "${order[@]}"; do
      declare -A before=()
      for p in "${!pid[@]}"; do before[$p]=$(ticks "${pid[$p]}"); done
      [ "$sys" = direct ] || wait0=$(rqwait "${pid[$sys]}")
      [ "$sys" = fastproxy ] && : >"$tmp/fastproxy.log"
      # shellcheck disable=SC2086 # scen_args are words
      line=$(client "$sys" --url "$(url_of "$sys")" ${scen_args[$s]} --duration "$secs" 2>"$tmp/client.err")
      requests=$(field requests "$line"); errors=$(field errors "$line")
      if [ -z "$requests" ] || [ "$requests" = 0 ] || [ "$errors" != 0 ]; then
        echo "compare.sh: $sys, ${scen_name[$s]}: $line" >&2; cat "$tmp/client.err" >&2; exit 1
      fi
      # Let the proxy finish what the run left it (fastproxy: the access-log writer) before the
      # CPU sample: that work belongs to these requests.
      sleep 0.3
      if [ "$sys" = fastproxy ] && [ "$access_log" = on ]; then
        seen=-1
        for _ in $(seq 20); do n=$(access_lines); [ "$n" = "$seen" ] && break; seen=$n; sleep 0.1; done
        [ "$seen" -ge "$requests" ] || { echo "compare.sh: $requests requests but $seen access-log lines from fastproxy: not through the proxy? its log:" >&2; tail -n 5 "$tmp/fastproxy.log" >&2; exit 1; }
      fi
      waited=-
      [ "$sys" = direct ] || waited=$(awk -v a="$wait0" -v b="$(rqwait "${pid[$sys]}")" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')
      cpu=-
      for p in "${!pid[@]}"; do
        d=$(( $(ticks "${pid[$p]}") - ${before[$p]} ))
        if [ "$p" = "$sys" ]; then
          [ "$d" -gt 0 ] || { echo "compare.sh: $sys used no CPU for $requests requests: not through the proxy?" >&2; exit 1; }
          cpu=$(awk -v d="$d" -v c="$clk" -v r="$requests" 'BEGIN { printf "%.2f", d * 1e6 / c / r }')
        else
          idle_ticks=$((idle_ticks + d))
        fi
      done
      unset before
      echo "$sys $s $round $requests $(field req_per_s "$line") $(field p50_us "$line") $(field p99_us "$line") $cpu $waited" >>"$results"
      printf 'round %s  %-21s %-10s %9s req/s  p50 %5s us  p99 %6s us%s\n' "$round" \
        "${scen_name[$s]}" "$sys" "$(field req_per_s "$line")" "$(field p50_us "$line")" "$(field p99_us "$line")" \
        "$([ "$cpu" = - ] || echo "  proxy CPU $cpu us/req, waited for CPU0 $waited ms")"
    done
  done
done

# --- the table: means over the rounds -----------------------------------------------------
echo
echo "mean of $rounds rounds, ${secs}s each; (xN) = req/s vs direct, proxy CPU per request vs nginx;"
echo "CPU0 wait = ms per run the proxy's threads were runnable but waited for CPU0 (schedstat): tens of ms for nginx and"
echo "HAProxy on a quiet machine; fastproxy's includes its own threads waiting for each other (the access-log writer)"
awk -v systems="${systems[*]}" -v names="$(printf '%s\n' "${scen_name[@]}")" '
  { k = $1 SUBSEP $2; n[k]++; rps[k] += $5; p50[k] += $6; p99[k] += $7; if ($8 != "-") cpu[k] += $8; if ($9 != "-") wt[k] += $9 }
  END {
    ns = split(systems, sys, " "); split(names, name, "\n")
    out = sprintf("%-22s %-17s", "scenario", "")
    for (i = 1; i <= ns; i++) out = out sprintf(" %-19s", sys[i])
    sub(/ +$/, "", out); print out
    for (s = 0; (s + 1) in name; s++) {
      d = "direct" SUBSEP s; g = "nginx" SUBSEP s
      for (row = 1; row <= 4; row++) {
        out = sprintf("%-22s %-17s", row == 1 ? name[s + 1] : "", row == 1 ? "req/s" : row == 2 ? "p50 / p99 us" : row == 3 ? "proxy CPU us/req" : "CPU0 wait ms")
        for (i = 1; i <= ns; i++) {
          k = sys[i] SUBSEP s; m = n[k]
          if (row == 1) {
            v = sprintf("%.0f", rps[k] / m)
            if (sys[i] != "direct") v = v sprintf(" (x%.2f)", (rps[k] / m) / (rps[d] / n[d]))
          } else if (row == 2) {
            v = sprintf("%.0f / %.0f", p50[k] / m, p99[k] / m)
          } else if (sys[i] == "direct") {
            v = "-"
          } else {
            if (row == 4) v = sprintf("%.1f", wt[k] / m)
            else {
              v = sprintf("%.1f", cpu[k] / m)
              if (sys[i] != "nginx" && (g in n)) v = v sprintf(" (x%.2f)", (cpu[k] / m) / (cpu[g] / n[g]))
            }
          }
          out = out sprintf(" %-19s", v)
        }
        sub(/ +$/, "", out); print out
      }
    }
  }' "$results"
echo "CPU taken by the idle proxies during other systems' runs: $(awk -v t="$idle_ticks" -v c="$clk" 'BEGIN { printf "%.2f", t / c }')s in total (clock tick $(awk -v c="$clk" 'BEGIN { printf "%g", 1000 / c }') ms)"
