//! The secure channel over real sockets: status, keys, attestation, signatures, rotation and
//! the control file.

use super::*;

use crate::signing;

const KEY_BODY: &[u8] = br#"{"authorizationScheme": "Azure-HMAC-SHA256"}"#;
const WIRE: (&str, &str) = ("x-ms-version", "2012-11-30");
const CLAIMS: (&str, &str) = ("x-ms-azure-host-claims", r#"{ "isRoot": "true"}"#);
const GOAL_STATE: &str = "/machine/?comp=goalstate";

#[derive(Debug, Clone)]
struct TestKey {
    guid: String,
    hex: String,
}

/// Every header [`send`] writes, in order: Host, the extra ones, Content-Length when there is
/// a body or the method is POST/PUT, Connection.
fn wire_headers(
    addr: SocketAddr,
    method: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<(String, String)> {
    let mut headers = vec![("Host".to_string(), addr.to_string())];
    headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    if !body.is_empty() || method == "POST" || method == "PUT" {
        headers.push(("Content-Length".into(), body.len().to_string()));
    }
    headers.push(("Connection".into(), "close".into()));
    headers
}

/// Sends exactly these headers.
fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

fn authorization(
    key: &TestKey,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> String {
    let pairs = headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    signing::authorization_value(&key.guid, &key.hex, method, target, pairs, body).expect("sign")
}

/// The headers of a request signed with `key`, the authorization header last.
fn signed_headers(
    addr: SocketAddr,
    key: &TestKey,
    method: &str,
    target: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<(String, String)> {
    let mut headers = wire_headers(addr, method, extra, body);
    let value = authorization(key, method, target, &headers, body);
    headers.push((signing::AUTHORIZATION_HEADER.into(), value));
    headers
}

fn signed(
    addr: SocketAddr,
    key: &TestKey,
    method: &str,
    target: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let headers = signed_headers(addr, key, method, target, extra, body);
    send(addr, method, target, &headers, body)
}

fn status(f: &Fixture) -> Value {
    let r = get(f.ws, "/secure-channel/status", &[MD, CLAIMS]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn acquire(f: &Fixture) -> TestKey {
    let r = request(f.ws, "POST", "/secure-channel/key", &[MD, CLAIMS], KEY_BODY);
    assert_eq!(r.status, 200, "{}", r.text());
    let k = r.json();
    TestKey {
        guid: k["guid"].as_str().expect("guid").to_string(),
        hex: k["key"].as_str().expect("key").to_string(),
    }
}

fn last_signature(f: &Fixture) -> Option<SignatureCheck> {
    f.records().last().expect("a record").signature
}

#[test]
fn status_v1_for_each_state() {
    let f = Fixture::start();
    let guid = f.handle().secure_channel().key_guid.expect("a key");
    for state in [
        SecureChannelState::Disabled,
        SecureChannelState::WireServer,
        SecureChannelState::WireServerAndImds,
    ] {
        f.handle().set_secure_channel(state);
        let r = get(f.ws, "/secure-channel/status", &[MD]);
        assert_eq!(r.status, 200);
        assert!(r
            .header("x-ms-azure-host-date")
            .is_some_and(|d| d.ends_with(" GMT")));
        assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")));
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        let s = r.json();
        assert_eq!(s["authorizationScheme"], "Azure-HMAC-SHA256");
        assert_eq!(s["keyDeliveryMethod"], "http");
        assert_eq!(s["keyIncarnationId"], 1);
        assert_eq!(
            s["requiredClaimsHeaderPairs"],
            serde_json::json!(["isRoot"])
        );
        assert_eq!(s["version"], "1.0");
        assert_eq!(s["secureChannelState"], state.as_str());
        assert!(s.get("secureChannelEnabled").is_none());
        assert!(s.get("authorizationRules").is_none());
        if state == SecureChannelState::Disabled {
            assert!(s["keyGuid"].is_null());
        } else {
            assert_eq!(s["keyGuid"], guid.as_str());
        }
    }
    // Status and key acquisition never need a signature.
    assert_eq!(last_signature(&f), Some(SignatureCheck::NotRequired));
}

#[test]
fn status_v2_for_each_state() {
    let f = Fixture::start_with(|c| c.secure_channel.version = StatusVersion::V2);
    for (state, enabled, [imds, ws, hg]) in [
        (
            SecureChannelState::Disabled,
            false,
            ["disabled", "disabled", "disabled"],
        ),
        (
            SecureChannelState::WireServer,
            true,
            ["audit", "enforce", "enforce"],
        ),
        (
            SecureChannelState::WireServerAndImds,
            true,
            ["enforce", "enforce", "enforce"],
        ),
    ] {
        f.handle().set_secure_channel(state);
        let s = status(&f);
        assert_eq!(s["version"], "2.0");
        assert_eq!(s["authorizationScheme"], "Azure-HMAC-SHA256");
        assert_eq!(s["keyDeliveryMethod"], "http");
        assert_eq!(
            s["requiredClaimsHeaderPairs"],
            serde_json::json!(["isRoot"])
        );
        assert_eq!(s["secureChannelEnabled"], enabled);
        assert_eq!(s["keyGuid"].is_string(), enabled);
        assert!(s.get("secureChannelState").is_none());
        let rules = &s["authorizationRules"];
        for (name, mode) in [("imds", imds), ("wireserver", ws), ("hostga", hg)] {
            let item = &rules[name];
            assert_eq!(item["mode"], mode, "{state} {name}");
            assert_eq!(item["defaultAccess"], "allow");
            assert!(item["id"].is_string());
            assert!(item["rules"].is_null());
        }
    }
    // Back to 1.0 at run time.
    f.handle().set_status_version(StatusVersion::V1);
    assert_eq!(status(&f)["secureChannelState"], "wireserverandimds");
}

#[test]
fn key_acquisition() {
    let f = Fixture::start_with(|c| c.secure_channel.state = SecureChannelState::WireServer);
    let r = request(f.ws, "POST", "/secure-channel/key", &[MD, CLAIMS], KEY_BODY);
    assert_eq!(r.status, 200);
    assert!(r.header("x-ms-azure-host-date").is_some());
    let k = r.json();
    assert_eq!(k["authorizationScheme"], "Azure-HMAC-SHA256");
    assert_eq!(k["incarnationId"], 1);
    let guid = k["guid"].as_str().expect("guid");
    assert_eq!(status(&f)["keyGuid"], guid);
    let key = k["key"].as_str().expect("key");
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    let issued = k["issued"].as_str().expect("issued");
    assert!(
        issued.len() == 20 && issued.ends_with('Z') && issued.as_bytes()[10] == b'T',
        "{issued}"
    );
    let snap = f.handle().secure_channel();
    assert_eq!(snap.key_guid.as_deref(), Some(guid));
    assert_eq!(snap.key_hex.as_deref(), Some(key));
    // The same key until a rotation.
    assert_eq!(acquire(&f).hex, key);

    for body in [
        &b""[..],
        b"{",
        b"{}",
        br#"{"authorizationScheme": "Azure-HMAC-SHA1"}"#,
        br#"{"authorizationScheme": 1}"#,
    ] {
        let r = request(f.ws, "POST", "/secure-channel/key", &[MD], body);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(r.json()["error"], "InvalidRequest");
    }
    assert_eq!(get(f.ws, "/secure-channel/key", &[MD]).status, 404);
}

#[test]
fn attestation() {
    // Attestation is signed even while the channel is disabled.
    for state in [SecureChannelState::Disabled, SecureChannelState::WireServer] {
        let f = Fixture::start_with(|c| c.secure_channel.state = state);
        let key = acquire(&f);
        let path = format!("/secure-channel/key/{}/key-attestation", key.guid);
        let r = signed(f.ws, &key, "POST", &path, &[MD, CLAIMS], b"");
        assert_eq!(r.status, 200, "{state}: {}", r.text());
        assert_eq!(last_signature(&f), Some(SignatureCheck::Valid));

        let r = request(f.ws, "POST", &path, &[MD, CLAIMS], b"");
        assert_eq!(r.status, 401, "unsigned");
        assert_eq!(r.json()["error"], "MissingSignature");
        assert_eq!(last_signature(&f), Some(SignatureCheck::Missing));

        let wrong = TestKey {
            guid: key.guid.clone(),
            hex: "00".repeat(32),
        };
        let r = signed(f.ws, &wrong, "POST", &path, &[MD, CLAIMS], b"");
        assert_eq!(r.status, 401, "wrong key");
        assert_eq!(r.json()["error"], "InvalidSignature");
        assert_eq!(last_signature(&f), Some(SignatureCheck::Invalid));

        // An unknown guid, signed with a key of that name or with the real key.
        let other = "0b0e5b38-0000-4000-8000-000000000000";
        let path = format!("/secure-channel/key/{other}/key-attestation");
        let stranger = TestKey {
            guid: other.into(),
            hex: key.hex.clone(),
        };
        let r = signed(f.ws, &stranger, "POST", &path, &[MD], b"");
        assert_eq!(r.status, 401);
        let r = signed(f.ws, &key, "POST", &path, &[MD], b"");
        assert_eq!(r.status, 403);
        assert_eq!(r.json()["error"], "UnknownKey");
    }
}

#[test]
fn signed_wireserver_requests_and_tampering() {
    let f = Fixture::start_with(|c| c.secure_channel.state = SecureChannelState::WireServer);
    let key = acquire(&f);
    let extra = [
        WIRE,
        CLAIMS,
        ("x-ms-azure-host-date", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ];

    // Unsigned: refused and recorded.
    let r = get(f.ws, GOAL_STATE, &[WIRE]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.json()["error"], "MissingSignature");
    let rec = f.records();
    let last = rec.last().expect("recorded");
    assert_eq!(
        (last.status, last.signature),
        (401, Some(SignatureCheck::Missing))
    );

    // Signed: accepted.
    let r = signed(f.ws, &key, "GET", GOAL_STATE, &extra, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("<GoalState"));
    assert_eq!(last_signature(&f), Some(SignatureCheck::Valid));
    let body = b"<Health><GoalStateIncarnation>1</GoalStateIncarnation></Health>";
    let target = "/machine?comp=health";
    let r = signed(f.ws, &key, "POST", target, &extra, body);
    assert_eq!(r.status, 200);

    // Body changed after signing.
    let headers = signed_headers(f.ws, &key, "POST", target, &extra, body);
    let mut tampered = body.to_vec();
    tampered[10] ^= 1;
    let r = send(f.ws, "POST", target, &headers, &tampered);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "InvalidSignature");
    assert_eq!(last_signature(&f), Some(SignatureCheck::Invalid));

    // A header value changed, one added, one removed.
    let mut changed = signed_headers(f.ws, &key, "GET", GOAL_STATE, &extra, b"");
    changed[1].1 = "2015-04-05".into();
    assert_eq!(send(f.ws, "GET", GOAL_STATE, &changed, b"").status, 401);
    let mut added = signed_headers(f.ws, &key, "GET", GOAL_STATE, &extra, b"");
    added.insert(1, ("Accept-Encoding".into(), "identity".into()));
    assert_eq!(send(f.ws, "GET", GOAL_STATE, &added, b"").status, 401);
    let mut removed = signed_headers(f.ws, &key, "GET", GOAL_STATE, &extra, b"");
    removed.remove(2);
    assert_eq!(send(f.ws, "GET", GOAL_STATE, &removed, b"").status, 401);
    // Header names in another case, values padded, signed order irrelevant: still valid.
    let mut recased = signed_headers(f.ws, &key, "GET", GOAL_STATE, &extra, b"");
    recased[1].0 = "X-MS-VERSION".into();
    recased.swap(2, 3);
    assert_eq!(send(f.ws, "GET", GOAL_STATE, &recased, b"").status, 200);
    // A repeated header: the later value is the one signed.
    let mut twice = wire_headers(f.ws, "GET", &[WIRE, ("x-ms-version", "2015-04-05")], b"");
    let mut only_later = twice.clone();
    only_later.remove(1);
    let value = authorization(&key, "GET", GOAL_STATE, &only_later, b"");
    twice.push((signing::AUTHORIZATION_HEADER.into(), value));
    assert_eq!(send(f.ws, "GET", GOAL_STATE, &twice, b"").status, 200);

    // The query reordered or its keys re-cased: the canonical query is the same.
    let cfg = format!(
        "/machine/{}/{}",
        crate::wireserver::CONTAINER_ID,
        crate::wireserver::ROLE_INSTANCE_ID
    );
    let signed_target = format!("{cfg}?comp=config&type=sharedConfig&incarnation=1");
    let sent_target = format!("{cfg}?incarnation=1&TYPE=sharedConfig&comp=config&comp=config");
    let headers = signed_headers(f.ws, &key, "GET", &signed_target, &extra, b"");
    let r = send(f.ws, "GET", &sent_target, &headers, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    // A query value changed: refused.
    let sent_target = format!("{cfg}?comp=config&type=SharedConfig&incarnation=1");
    assert_eq!(send(f.ws, "GET", &sent_target, &headers, b"").status, 401);

    // The path changed (even to an equivalent spelling): refused.
    let headers = signed_headers(f.ws, &key, "GET", GOAL_STATE, &extra, b"");
    let r = send(f.ws, "GET", "/machine?comp=goalstate", &headers, b"");
    assert_eq!(r.status, 401);
    let r = send(f.ws, "GET", "/%6dachine/?comp=goalstate", &headers, b"");
    assert_eq!(r.status, 401);
    // The method changed: refused.
    let headers = signed_headers(f.ws, &key, "HEAD", GOAL_STATE, &extra, b"");
    assert_eq!(send(f.ws, "GET", GOAL_STATE, &headers, b"").status, 401);

    // Malformed authorization values.
    for value in [
        "Azure-HMAC-SHA256".to_string(),
        format!("Azure-HMAC-SHA1 {} {}", key.guid, "0".repeat(64)),
        format!("Azure-HMAC-SHA256 {}", key.guid),
        format!("Azure-HMAC-SHA256 {} nothex", key.guid),
        format!("Azure-HMAC-SHA256 {} {} extra", key.guid, "0".repeat(64)),
    ] {
        let mut headers = wire_headers(f.ws, "GET", &[WIRE], b"");
        headers.push((signing::AUTHORIZATION_HEADER.into(), value.clone()));
        let r = send(f.ws, "GET", GOAL_STATE, &headers, b"");
        assert_eq!(r.status, 401, "{value}");
        assert_eq!(last_signature(&f), Some(SignatureCheck::Invalid));
    }

    // HostGAPlugin follows WireServer.
    assert_eq!(get(f.hg, "/vmSettings", &[]).status, 401);
    let hg = [("x-ms-version", "2015-09-01"), CLAIMS];
    assert_eq!(
        signed(f.hg, &key, "GET", "/vmSettings", &hg, b"").status,
        200
    );
    // An absolute-form target signs its path and query.
    let abs = format!("http://{}/machine/?comp=goalstate", f.ws);
    assert_eq!(signed(f.ws, &key, "GET", &abs, &extra, b"").status, 200);
}

#[test]
fn rotation_keeps_the_previous_key_until_the_next() {
    let f = Fixture::start_with(|c| c.secure_channel.state = SecureChannelState::WireServer);
    let first = acquire(&f);
    assert_eq!(status(&f)["keyIncarnationId"], 1);

    let second_guid = f.handle().rotate_key();
    assert_ne!(second_guid, first.guid);
    let s = status(&f);
    assert_eq!(s["keyGuid"], second_guid.as_str());
    assert_eq!(s["keyIncarnationId"], 2);
    let second = acquire(&f);
    assert_eq!(second.guid, second_guid);
    assert_ne!(second.hex, first.hex);
    let r = request(f.ws, "POST", "/secure-channel/key", &[MD], KEY_BODY);
    assert_eq!(r.json()["incarnationId"], 2);

    // Both keys verify, and both can be attested.
    for key in [&first, &second] {
        assert_eq!(
            signed(f.ws, key, "GET", GOAL_STATE, &[WIRE], b"").status,
            200
        );
        let path = format!("/secure-channel/key/{}/key-attestation", key.guid);
        assert_eq!(signed(f.ws, key, "POST", &path, &[], b"").status, 200);
    }
    // Attesting one key with the other's signature is refused.
    let path = format!("/secure-channel/key/{}/key-attestation", second.guid);
    assert_eq!(signed(f.ws, &first, "POST", &path, &[], b"").status, 403);

    // The next rotation retires the first key.
    let third_guid = f.handle().rotate_key();
    assert_eq!(status(&f)["keyIncarnationId"], 3);
    assert_eq!(status(&f)["keyGuid"], third_guid.as_str());
    let r = signed(f.ws, &first, "GET", GOAL_STATE, &[WIRE], b"");
    assert_eq!(r.status, 401);
    assert_eq!(
        signed(f.ws, &second, "GET", GOAL_STATE, &[WIRE], b"").status,
        200
    );
    let third = acquire(&f);
    assert_eq!(
        signed(f.ws, &third, "GET", GOAL_STATE, &[WIRE], b"").status,
        200
    );
}

#[test]
fn skip_signature_requests_pass_unsigned() {
    let f = Fixture::start_with(|c| {
        c.secure_channel.state = SecureChannelState::WireServerAndImds;
    });
    let xml = [("Content-Type", "text/xml; charset=utf-8")];
    let telemetry = b"<TelemetryData version=\"1.0\"></TelemetryData>";
    for target in [
        "/machine/?comp=telemetrydata",
        "/machine/?Comp=TelemetryData",
    ] {
        let r = request(f.ws, "POST", target, &xml, telemetry);
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(last_signature(&f), Some(SignatureCheck::NotRequired));
    }
    // Only that exact spelling: without the slash it is an ordinary, signed request.
    let r = request(f.ws, "POST", "/machine?comp=telemetrydata", &xml, telemetry);
    assert_eq!(r.status, 401);
    let zip = vec![b'z'; 2_000_000];
    let r = request(f.hg, "PUT", "/vmAgentLog", &[], &zip);
    assert_eq!(r.status, 200);
    let rec = f.records();
    let last = rec.last().expect("recorded");
    assert_eq!(last.body_len, 2_000_000);
    assert_eq!(last.signature, Some(SignatureCheck::NotRequired));
    // Other uploads are not skip-signature requests.
    assert_eq!(request(f.hg, "PUT", "/status", &[], b"{}").status, 401);
    assert_eq!(request(f.hg, "POST", "/vmAgentLog", &[], b"x").status, 401);
}

#[test]
fn imds_is_signed_only_in_wireserverandimds() {
    let f = Fixture::start();
    let key = acquire(&f);
    let target = "/metadata/instance?api-version=2021-08-01";
    let token = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com";

    // Disabled: nothing needs a signature.
    assert_eq!(get(f.imds, target, &[MD]).status, 200);
    assert_eq!(get(f.ws, GOAL_STATE, &[WIRE]).status, 200);
    assert_eq!(get(f.hg, "/vmSettings", &[]).status, 200);
    assert_eq!(last_signature(&f), Some(SignatureCheck::NotRequired));

    // wireserver: IMDS audits, so unsigned passes; a signature sent anyway is still checked.
    f.handle()
        .set_secure_channel(SecureChannelState::WireServer);
    assert_eq!(get(f.imds, target, &[MD]).status, 200);
    assert_eq!(last_signature(&f), Some(SignatureCheck::NotRequired));
    assert_eq!(signed(f.imds, &key, "GET", target, &[MD], b"").status, 200);
    assert_eq!(last_signature(&f), Some(SignatureCheck::Valid));
    let mut bad = signed_headers(f.imds, &key, "GET", target, &[MD], b"");
    bad[1].1 = "True".into();
    assert_eq!(send(f.imds, "GET", target, &bad, b"").status, 200);
    assert_eq!(last_signature(&f), Some(SignatureCheck::Invalid));
    assert_eq!(get(f.ws, GOAL_STATE, &[WIRE]).status, 401);

    // wireserverandimds: IMDS too.
    f.handle()
        .set_secure_channel(SecureChannelState::WireServerAndImds);
    let r = get(f.imds, target, &[MD]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "MissingSignature");
    assert_eq!(send(f.imds, "GET", target, &bad, b"").status, 401);
    assert_eq!(signed(f.imds, &key, "GET", target, &[MD], b"").status, 200);
    let r = signed(f.imds, &key, "GET", token, &[MD], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["token_type"], "Bearer");
    // Signed but otherwise wrong: IMDS's own answer.
    assert_eq!(signed(f.imds, &key, "GET", target, &[], b"").status, 400);

    // And off again.
    f.handle().set_secure_channel(SecureChannelState::Disabled);
    assert_eq!(get(f.imds, target, &[MD]).status, 200);
    assert_eq!(get(f.ws, GOAL_STATE, &[WIRE]).status, 200);
}

#[test]
fn control_file_changes_the_running_stand_in() {
    let control = temp_path("control.json");
    let path = control.clone();
    let f = Fixture::start_with(move |c| c.control = Some(path));
    let write = |text: &str| std::fs::write(&control, text).expect("write control file");

    // No file: the configured state.
    assert_eq!(status(&f)["secureChannelState"], "disabled");
    let first = f.handle().secure_channel().key_guid.expect("guid");

    write(r#"{"state": "wireserver", "rotate": false}"#);
    let s = status(&f);
    assert_eq!(s["secureChannelState"], "wireserver");
    assert_eq!(s["keyGuid"], first.as_str());
    assert_eq!(get(f.ws, GOAL_STATE, &[WIRE]).status, 401);

    // Rotate: once per change of the file, not on every read.
    write(r#"{"state": "wireserverandimds", "rotate": true}"#);
    let s = status(&f);
    assert_eq!(s["secureChannelState"], "wireserverandimds");
    let second = s["keyGuid"].as_str().expect("guid").to_string();
    assert_ne!(second, first);
    assert_eq!(s["keyIncarnationId"], 2);
    assert_eq!(status(&f)["keyGuid"], second.as_str());
    assert_eq!(f.handle().secure_channel().key_guid, Some(second.clone()));
    let target = "/metadata/instance?api-version=2021-08-01";
    assert_eq!(get(f.imds, target, &[MD]).status, 401);

    // Any change applies it again (here an extra field).
    write(r#"{"state": "wireserverandimds", "rotate": true, "n": 2}"#);
    let third = status(&f)["keyGuid"].as_str().expect("guid").to_string();
    assert_ne!(third, second);

    // The version too; a bad file is ignored; removing it changes nothing.
    write(r#"{"version": "2.0"}"#);
    let s = status(&f);
    assert_eq!(s["version"], "2.0");
    assert_eq!(s["authorizationRules"]["imds"]["mode"], "enforce");
    write(r#"{"state": "sideways"}"#);
    assert_eq!(status(&f)["secureChannelEnabled"], true);
    write("not json");
    assert_eq!(status(&f)["keyGuid"], third.as_str());
    std::fs::remove_file(&control).expect("remove control file");
    assert_eq!(status(&f)["secureChannelEnabled"], true);

    // The API and the file both act on the same state.
    f.handle().set_secure_channel(SecureChannelState::Disabled);
    assert_eq!(status(&f)["secureChannelEnabled"], false);
    write(r#"{"state": "wireserver", "version": "1.0"}"#);
    assert_eq!(status(&f)["secureChannelState"], "wireserver");
    let _ = std::fs::remove_file(&control);
}

#[test]
fn configured_key_signs_as_given() {
    // The spec's key, uppercase as WireServer hands keys out.
    let hex = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";
    let f = Fixture::start_with(|c| {
        c.secure_channel = SecureChannel {
            state: SecureChannelState::WireServer,
            version: StatusVersion::V1,
            key_guid: Some("a1b2c3d4-0000-4000-8000-000000000001".into()),
            key_hex: Some(hex.into()),
            incarnation: 5,
        };
    });
    let key = acquire(&f);
    assert_eq!(key.guid, "a1b2c3d4-0000-4000-8000-000000000001");
    assert_eq!(key.hex, hex);
    assert_eq!(status(&f)["keyIncarnationId"], 5);
    // The expected signature computed by hand from SPEC-GPA.md section 4.
    let headers = wire_headers(f.ws, "GET", &[WIRE], b"");
    let message = format!(
        "GET\n\nconnection:close\nhost:{}\nx-ms-version:2012-11-30\n/machine/\ncomp=goalstate",
        f.ws
    );
    let signature = signing::hmac_hex(&signing::decode_hex(hex).expect("hex"), message.as_bytes());
    let mut sent = headers.clone();
    sent.push((
        "X-Ms-Azure-Host-Authorization".into(),
        format!("Azure-HMAC-SHA256 {} {signature}", key.guid.to_uppercase()),
    ));
    assert_eq!(send(f.ws, "GET", GOAL_STATE, &sent, b"").status, 200);
}
