//! Policy evaluation with 1, 100 and 1,000 privileges (each with a role, an identity and a
//! role assignment) on the managed-identity token request, the privilege that grants it last
//! (the whole list is walked). Measured: `evaluate` over an already canonical request, and
//! `authorize` (canonicalisation of the raw target into a reused scratch + evaluate), for an
//! allowed caller and a denied one; plus the allocations per `authorize` in steady state
//! (counted by a wrapping global allocator, printed before the timings; the target is zero).
//! Run: `cargo bench -p fastproxy-bench --bench policy`.

use std::net::{Ipv4Addr, SocketAddrV4};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use fastproxy::policy::{
    authorize, AuthorizationItem, CanonicalRequest, CompiledPolicy, CompiledRules, KnownCaller,
};
use fastproxy::upstream::{EndpointKind, EndpointMode, GuardedEndpoint};

/// The @azure/identity (Node) shape: trailing slash, encoded resource.
const TOKEN_PATH: &str = "/metadata/identity/oauth2/token/";
const TOKEN_QUERY: &str = "api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com";

#[global_allocator]
static GLOBAL: fastproxy_bench::Counting = fastproxy_bench::Counting;

/// IMDS rules with `n` privileges: `n - 1` others (a quarter of them with a required query
/// value, all under `/metadata/`), then the token privilege granted to user `svc`.
fn policy(n: usize) -> CompiledPolicy {
    let mut privileges = Vec::new();
    let mut roles = Vec::new();
    let mut identities = Vec::new();
    let mut assignments = Vec::new();
    for i in 0..n {
        let (path, query) = if i + 1 == n {
            (
                "/metadata/identity/oauth2/token".to_owned(),
                r#", "queryParameters": {"resource": "https://management.azure.com"}"#.to_owned(),
            )
        } else if i % 4 == 0 {
            (
                format!("/metadata/identity/oauth2/token{i}"),
                format!(r#", "queryParameters": {{"resource": "https://app{i}.example"}}"#),
            )
        } else {
            (format!("/metadata/instance/compute/app{i}"), String::new())
        };
        privileges.push(format!(r#"{{"name": "p{i}", "path": "{path}"{query}}}"#));
        roles.push(format!(r#"{{"name": "r{i}", "privileges": ["p{i}"]}}"#));
        let user = if i + 1 == n {
            "svc".to_owned()
        } else {
            format!("user{i}")
        };
        identities.push(format!(r#"{{"name": "i{i}", "userName": "{user}"}}"#));
        assignments.push(format!(r#"{{"role": "r{i}", "identities": ["i{i}"]}}"#));
    }
    let json = format!(
        r#"{{"defaultAccess": "deny", "mode": "enforce", "id": "bench", "rules": {{
            "privileges": [{}], "roles": [{}], "identities": [{}], "roleAssignments": [{}]}}}}"#,
        privileges.join(","),
        roles.join(","),
        identities.join(","),
        assignments.join(",")
    );
    let item = AuthorizationItem::from_json(&json).expect("bench rules parse");
    let rules = CompiledRules::compile("imds", &item).expect("bench rules compile");
    CompiledPolicy::new(None, Some(rules))
}

fn caller(user: &str) -> KnownCaller {
    KnownCaller {
        uid: 1000,
        user_name: Some(user.to_owned()),
        groups: vec!["users".to_owned()],
        exe_path: Some("/usr/bin/node".to_owned()),
    }
}

fn imds() -> GuardedEndpoint {
    GuardedEndpoint {
        kind: EndpointKind::Imds,
        addr: SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80),
        mode: EndpointMode::Enforce,
    }
}

/// Allocations per `authorize` after warm-up, with the scratch reused as a connection does.
fn allocations_per_authorize(policy: &CompiledPolicy, who: &mut KnownCaller) -> f64 {
    let endpoint = imds();
    let mut scratch = CanonicalRequest::new();
    let mut run = |n: u64| {
        for _ in 0..n {
            let v = authorize(
                policy,
                &endpoint,
                who,
                black_box(TOKEN_PATH),
                black_box(Some(TOKEN_QUERY)),
                &mut scratch,
            );
            black_box(v);
        }
    };
    run(100);
    let before = fastproxy_bench::allocations();
    run(10_000);
    (fastproxy_bench::allocations() - before) as f64 / 10_000.0
}

fn bench_policy(c: &mut Criterion) {
    let sizes = [1usize, 100, 1000];
    let policies: Vec<(usize, CompiledPolicy)> = sizes.iter().map(|&n| (n, policy(n))).collect();
    let endpoint = imds();
    for (n, policy) in &policies {
        let mut svc = caller("svc");
        let mut eve = caller("eve");
        let allowed = {
            let mut scratch = CanonicalRequest::new();
            authorize(
                policy,
                &endpoint,
                &mut svc,
                TOKEN_PATH,
                Some(TOKEN_QUERY),
                &mut scratch,
            )
        };
        assert!(
            allowed.is_allowed(),
            "{n} rules: {}",
            allowed.explain(policy)
        );
        println!(
            "allocations per authorize, {n} rules: allowed {}, denied {}",
            allocations_per_authorize(policy, &mut svc),
            allocations_per_authorize(policy, &mut eve)
        );
    }

    let mut group = c.benchmark_group("policy");
    for (n, policy) in &policies {
        let mut request = CanonicalRequest::new();
        request
            .canonicalize(TOKEN_PATH, Some(TOKEN_QUERY))
            .expect("canonical");
        for (who, mut facts) in [("allow", caller("svc")), ("deny", caller("eve"))] {
            group.bench_with_input(BenchmarkId::new(format!("evaluate/{who}"), n), n, |b, _| {
                b.iter(|| policy.evaluate(EndpointKind::Imds, &mut facts, black_box(&request)))
            });
            let mut scratch = CanonicalRequest::new();
            group.bench_with_input(
                BenchmarkId::new(format!("authorize/{who}"), n),
                n,
                |b, _| {
                    b.iter(|| {
                        authorize(
                            policy,
                            &endpoint,
                            &mut facts,
                            black_box(TOKEN_PATH),
                            black_box(Some(TOKEN_QUERY)),
                            &mut scratch,
                        )
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_policy);
criterion_main!(benches);
