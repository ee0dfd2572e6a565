#!/usr/bin/env bash
# Side-by-side latency/throughput: direct to the stand-in vs through fastproxy, in a private
# network namespace with the platform addresses on its loopback (root). Layout of DESIGN.md
# section 6: proxy alone on CPU0, stand-in and load generator on CPU1.
#   usage: loadtest/compare.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}; rounds=${2:-2}
cargo build -q --release -p fastproxy -p fastproxy-loadtest
bin=$PWD/target/release
ns=fastproxy-bench-$$; cg="$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)/$ns"
bpffs=$(mktemp -d /tmp/fastproxy-compare.XXXXXX)
cleanup() {
  [ -n "${proxy:-}" ] && kill "$proxy" 2>/dev/null; [ -n "${standin:-}" ] && kill "$standin" 2>/dev/null
  wait 2>/dev/null || true; rmdir "$cg" 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true
  umount "$bpffs" 2>/dev/null || true; rmdir "$bpffs" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"; ip -n "$ns" link set lo up
ip -n "$ns" addr add 168.63.129.16/32 dev lo; ip -n "$ns" addr add 169.254.169.254/32 dev lo
mkdir "$cg"
mount -t bpf bpf "$bpffs"
in_ns="nsenter --net=/run/netns/$ns"
$in_ns taskset -c 1 "$bin/fastproxy" standin >/dev/null 2>&1 & standin=$!
sh -c "echo \$\$ > $cg/cgroup.procs; exec $in_ns taskset -c 0 $bin/fastproxy run --cgroup $cg --bpffs-dir $bpffs/fastproxy --workers 1" 2>/dev/null & proxy=$!
sleep 1
url=http://168.63.129.16/?comp=versions
for round in $(seq "$rounds"); do
  for c in 1 16 64; do
    d=$($in_ns taskset -c 1 "$bin/fastproxy-loadtest" --url "$url" --connections "$c" --duration "$secs" | cut -d' ' -f4-8)
    p=$(sh -c "echo \$\$ > $cg/cgroup.procs; exec $in_ns taskset -c 1 $bin/fastproxy-loadtest --url $url --connections $c --duration $secs" | cut -d' ' -f4-8)
    printf 'round %s conns %-3s direct: %s\n                fastproxy: %s\n' "$round" "$c" "$d" "$p"
  done
done
