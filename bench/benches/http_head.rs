//! Head parse + rewrite on realistic WireServer and IMDS heads (what every request costs
//! before any I/O), and the allocations it makes per request in steady state (counted by a
//! wrapping global allocator, printed before the timings; the target is zero).
//! Run: `cargo bench -p fastproxy-bench`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fastproxy::http::rewrite::write_upstream_request;
use fastproxy::http::{parse_request, Limits};

const WIRESERVER: &[u8] = b"GET /machine/a8016240-7286-49ef-8981-63520cb8f6d0/49c242ba%2Dc18a%2D4f6c%2D8cf8%2D85ff790b6431.%5Fvm?comp=config&type=hostingEnvironmentConfig&incarnation=1 HTTP/1.1\r\n\
Host: 168.63.129.16\r\nx-ms-version: 2012-11-30\r\nx-ms-agent-name: WALinuxAgent\r\nUser-Agent: WALinuxAgent/2.15\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n";

const IMDS: &[u8] = b"GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com HTTP/1.1\r\n\
Host: 169.254.169.254\r\nUser-Agent: azsdk-python-identity/1.27.0 Python/3.11.7 (Linux-6.18)\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\nMetadata: true\r\n\r\n";

#[global_allocator]
static GLOBAL: fastproxy_bench::Counting = fastproxy_bench::Counting;

/// Allocations per parse + rewrite after warm-up (the output buffer is reused, as the proxy
/// reuses its per-connection buffers).
fn allocations_per_request(head: &[u8]) -> f64 {
    let limits = Limits::default();
    let claims: &[(&str, &[u8])] = &[("x-ms-azure-host-claims", b"{ \"isRoot\": \"true\"}")];
    let mut out = Vec::with_capacity(4096);
    let mut run = |n: u64| {
        for _ in 0..n {
            out.clear();
            if let Ok(Some(h)) = parse_request(black_box(head), &limits) {
                write_upstream_request(&mut out, &h, claims);
            }
        }
    };
    run(100);
    let before = fastproxy_bench::allocations();
    run(10_000);
    (fastproxy_bench::allocations() - before) as f64 / 10_000.0
}

fn bench_heads(c: &mut Criterion) {
    for (name, head) in [("wireserver", WIRESERVER), ("imds", IMDS)] {
        println!(
            "allocations per request, parse + rewrite, {name}: {}",
            allocations_per_request(head)
        );
    }
    let limits = Limits::default();
    let claims: &[(&str, &[u8])] = &[("x-ms-azure-host-claims", b"{ \"isRoot\": \"true\"}")];
    let mut group = c.benchmark_group("head");
    for (name, head) in [("wireserver", WIRESERVER), ("imds", IMDS)] {
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| parse_request(black_box(head), &limits).map(|h| h.map(|h| h.head_len)))
        });
        let mut out = Vec::with_capacity(4096);
        group.bench_function(format!("parse+rewrite/{name}"), |b| {
            b.iter(|| {
                out.clear();
                if let Ok(Some(h)) = parse_request(black_box(head), &limits) {
                    write_upstream_request(&mut out, &h, claims);
                }
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_heads);
criterion_main!(benches);
