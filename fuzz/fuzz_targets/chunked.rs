//! The chunked scanner must never panic and must agree with itself however the input is split.
#![no_main]

use fastproxy::http::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = usize::from(data[0]) % data.len();
    let body = &data[1..];
    let mut whole = ChunkedDecoder::new(false);
    let expected = whole.advance(body).map(|n| (n, whole.is_done()));
    let split = split.min(body.len());
    let mut parts = ChunkedDecoder::new(false);
    let got = parts.advance(&body[..split]).and_then(|a| {
        if parts.is_done() {
            Ok(a)
        } else {
            parts.advance(&body[split..]).map(|b| a + b)
        }
    });
    assert_eq!(got.map(|n| (n, parts.is_done())), expected);
});
