#!/usr/bin/env bash
# Choose the splice threshold by measurement: large bodies through fastproxy relayed by copy
# (--splice-threshold 0) vs by io_uring splice (--splice-threshold 1), per body size, side by
# side, alternating; with the proxy's CPU time per request. The upstream is nginx serving
# static files (fast, so the proxy is what is measured), standing in for HostGAPlugin's
# artifacts. Root; private namespace, child cgroup and bpffs; nginx from Debian.
#   usage: loadtest/splice.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}; rounds=${2:-2}
cargo build -q --release -p fastproxy -p fastproxy-loadtest
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
ns=fastproxy-splice-$$; cg="$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)/$ns"
tmp=$(mktemp -d /tmp/fastproxy-splice.XXXXXX); mkdir "$tmp/bpffs"
proxy=; nginx=
mkdir "$tmp/www" "$tmp/nginx"
for size in 65536 262144 1048576 8388608; do head -c "$size" /dev/urandom > "$tmp/www/$size"; done
chmod 755 "$tmp" "$tmp/www"; chmod 644 "$tmp/www"/*   # nginx workers run unprivileged
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  server { listen 127.0.0.9:8082; root $tmp/www; }
}
CONF
stop_proxy() {
  if [ -n "$proxy" ]; then kill "$proxy" 2>/dev/null || true; wait "$proxy" 2>/dev/null || true; proxy=; fi
  "$bin/fastproxy" detach --bpffs-dir "$tmp/bpffs/fastproxy" >/dev/null 2>&1 || true
}
cleanup() {
  stop_proxy
  [ -n "$nginx" ] && kill "$nginx" 2>/dev/null; wait 2>/dev/null || true
  rmdir "$cg" 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true
  umount "$tmp/bpffs" 2>/dev/null || true; rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
ip netns add "$ns"; ip -n "$ns" link set lo up
mkdir "$cg"; mount -t bpf bpf "$tmp/bpffs"
in_ns="nsenter --net=/run/netns/$ns"
$in_ns taskset -c 1 nginx -c "$tmp/nginx.conf" -g 'daemon off;' & nginx=$!
sleep 0.5
start_proxy() {
  rm -f "$tmp/ready"
  sh -c "echo \$\$ > $cg/cgroup.procs; exec $in_ns taskset -c 0 $bin/fastproxy run --cgroup $cg \
    --bpffs-dir $tmp/bpffs/fastproxy --workers 1 --splice-threshold $1 --ready-file $tmp/ready \
    --endpoint hostga=127.0.0.9:8082 --secure-channel off --telemetry off \
    --keys-dir $tmp/keys --log-dir $tmp/logs" 2>/dev/null &
  proxy=$!
  for _ in $(seq 100); do [ -f "$tmp/ready" ] && return; sleep 0.05; done
  echo "proxy did not start" >&2; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$proxy/stat"; }
run() { # size [direct]
  local before after cgroup
  cgroup=$cg; [ "${2:-}" = direct ] && cgroup=$(dirname "$cg")   # outside the guarded cgroup: not redirected
  before=$( [ -n "$proxy" ] && cpu_ticks || echo 0)
  out=$(sh -c "echo \$\$ > $cgroup/cgroup.procs; exec $in_ns taskset -c 1 $bin/fastproxy-loadtest \
    --url http://127.0.0.9:8082/$1 --connections 4 --duration $secs")
  after=$( [ -n "$proxy" ] && cpu_ticks || echo 0)
  echo "$out" | awk -v size="$1" -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '{
      for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "%8.1f MB/s p50 %6s us p99 %6s us proxy %7.1f us/req errors %s",
        v["req_per_s"] * size / 1e6, v["p50_us"], v["p99_us"],
        (v["requests"] > 0 ? ticks * 1e6 / hz / v["requests"] : 0), v["errors"] }'
}
echo "4 connections, ${secs}s per run, ${rounds} rounds; proxy on CPU0, nginx and client on CPU1"
for round in $(seq "$rounds"); do
  for size in 65536 262144 1048576 8388608; do
    direct=$(run "$size" direct)
    start_proxy 0; copy=$(run "$size"); stop_proxy
    start_proxy 1; spl=$(run "$size"); stop_proxy
    printf 'round %s %8s B  direct: %s\n                      copy: %s\n                    splice: %s\n' \
      "$round" "$size" "$direct" "$copy" "$spl"
  done
done
