//! The request-head parser must never panic, and whatever it accepts must survive
//! re-serialisation with the same meaning.
#![no_main]

use fastproxy::http::rewrite::write_upstream_request;
use fastproxy::http::{parse_request, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(Some(head)) = parse_request(data, &limits) {
        let mut out = Vec::new();
        write_upstream_request(&mut out, &head, &[("x-ms-azure-host-claims", b"{}")]);
        let again = parse_request(&out, &limits)
            .expect("re-serialised head parses")
            .expect("re-serialised head is complete");
        assert_eq!(again.method, head.method);
        assert_eq!(again.target, head.target);
        assert_eq!(again.body, head.body);
    }
});
