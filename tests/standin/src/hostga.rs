//! HostGAPlugin (168.63.129.16:32526): versions, health, vmSettings with ETag/304,
//! extensionArtifact (deterministic bytes of a requested size, the large-body case), status
//! and vmAgentLog uploads.

use serde_json::json;

use crate::http::{Body, Request, Response};
use crate::util;
use crate::wireserver::{ACTIVITY_ID, CORRELATION_ID, CREATED_ON_TICKS, INCARNATION, STATUS_BLOB};

/// The vmSettings entity tag; `if-none-match` with it answers 304.
pub(crate) const VM_SETTINGS_ETAG: &str = "5526120545417862226";
/// Artifact size when the request names none.
const DEFAULT_ARTIFACT_SIZE: u64 = 1024;
/// Largest artifact served.
const MAX_ARTIFACT_SIZE: u64 = 256 * 1024 * 1024;

/// Byte `i` of every `/extensionArtifact` body, so tests can check what arrived.
pub fn artifact_byte(i: u64) -> u8 {
    // A 251-byte cycle (prime) mixed with the block number, so shifted or dropped ranges show.
    ((i % 251) as u8) ^ ((i >> 16) as u8)
}

/// Routes one HostGAPlugin request.
pub(crate) fn handle(req: &Request) -> Response {
    let (path, query) = req.path_and_query();
    match (req.method.as_str(), path) {
        ("GET", "/versions") => Response::json(200, &json!(["2015-09-01"])),
        ("GET", "/health") => Response::new(200, "text/plain; charset=utf-8", ""),
        ("GET", "/vmSettings") => vm_settings(req),
        ("GET", "/extensionArtifact") => extension_artifact(req, query),
        ("PUT", "/status" | "/vmAgentLog") => Response::new(200, "text/plain; charset=utf-8", ""),
        _ => Response::new(404, "text/plain; charset=utf-8", "Not Found"),
    }
}

fn vm_settings(req: &Request) -> Response {
    let unquote = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    if req
        .header("if-none-match")
        .is_some_and(|tag| unquote(tag) == VM_SETTINGS_ETAG)
    {
        return Response {
            status: 304,
            headers: vec![("ETag".into(), VM_SETTINGS_ETAG.into())],
            body: Body::Bytes(Vec::new()),
        };
    }
    let settings = json!({
        "hostGAPluginVersion": "1.0.8.133",
        "vmSettingsSchemaVersion": "0.0",
        "activityId": ACTIVITY_ID,
        "correlationId": CORRELATION_ID,
        "inSvdSeqNo": INCARNATION,
        "extensionsLastModifiedTickCount": CREATED_ON_TICKS,
        "extensionGoalStatesSource": "Fabric",
        "onHold": false,
        "statusUploadBlob": {"statusBlobType": "BlockBlob", "value": STATUS_BLOB},
        "inVMMetadata": {
            "subscriptionId": crate::imds::SUBSCRIPTION_ID,
            "resourceGroupName": crate::imds::RESOURCE_GROUP,
            "vmName": crate::imds::VM_NAME,
            "location": crate::imds::LOCATION,
            "vmId": crate::imds::VM_ID,
            "vmSize": crate::imds::VM_SIZE,
            "osType": "Linux",
        },
        "requiredFeatures": [],
        "gaFamilies": [],
        "extensionGoalStates": [],
    });
    Response::json(200, &settings).with_header("ETag", VM_SETTINGS_ETAG)
}

/// The size comes from `size=N` on the URL in `x-ms-artifact-location`, else on the target.
fn extension_artifact(req: &Request, query: &str) -> Response {
    let size_of = |q: &str| {
        util::Query::parse(q)
            .get("size")
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let size = req
        .header("x-ms-artifact-location")
        .and_then(|url| size_of(url.split_once('?').map_or("", |(_, q)| q)))
        .or_else(|| size_of(query))
        .unwrap_or(DEFAULT_ARTIFACT_SIZE)
        .min(MAX_ARTIFACT_SIZE);
    Response {
        status: 200,
        headers: vec![("Content-Type".into(), "application/octet-stream".into())],
        body: Body::Pattern(size),
    }
}
