//! IMDS (169.254.169.254:80): the `Metadata: true` and no-`X-Forwarded-For` rules, versions,
//! the instance document with route filters and `format=text`, and managed-identity tokens.

use serde_json::{json, Value};

use crate::http::{Request, Response};
use crate::util;

pub(crate) const SUBSCRIPTION_ID: &str = "5d4b2a1c-7e3f-4a8b-9c0d-1e2f3a4b5c6d";
pub(crate) const RESOURCE_GROUP: &str = "standin-rg";
pub(crate) const VM_NAME: &str = "standin-vm";
pub(crate) const LOCATION: &str = "eastus";
pub(crate) const VM_ID: &str = "0a1b2c3d-4e5f-4061-8273-94a5b6c7d8e9";
pub(crate) const VM_SIZE: &str = "Standard_D2s_v5";
const CLIENT_ID: &str = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f";

const API_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2022-02-01",
    "2022-03-01",
    "2022-05-01",
    "2022-07-01",
    "2022-08-01",
    "2022-09-01",
    "2022-11-01",
    "2023-07-01",
    "2023-11-15",
    "2024-03-15",
];

fn bad_request(message: &str) -> Response {
    Response::json(400, &json!({ "error": format!("Bad request. {message}") }))
}

/// Managed-identity errors are OAuth style.
fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    Response::json(
        status,
        &json!({ "error": error, "error_description": description }),
    )
}

/// Routes one IMDS request.
pub(crate) fn handle(req: &Request) -> Response {
    let (path, query) = req.path_and_query();
    let query = util::Query::parse(query);
    let path = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    let identity = path.starts_with("/metadata/identity/");
    if req.method != "GET" {
        return Response::json(405, &json!({ "error": "Method not allowed" }))
            .with_header("Allow", "GET");
    }
    if req.header("x-forwarded-for").is_some() {
        return bad_request("Request contains the X-Forwarded-For header, which is not allowed.");
    }
    if !req
        .header("metadata")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return if identity {
            oauth_error(
                400,
                "invalid_request",
                "Required metadata header not specified",
            )
        } else {
            bad_request("Required metadata header not specified")
        };
    }
    if path == "/metadata/versions" {
        return Response::json(200, &json!({ "apiVersions": API_VERSIONS }));
    }
    let instance_route = if path == "/metadata/instance" {
        Some("")
    } else {
        path.strip_prefix("/metadata/instance/")
    };
    let is_token = path == "/metadata/identity/oauth2/token";
    if instance_route.is_none() && !is_token {
        return Response::json(404, &json!({ "error": "Not found" }));
    }
    if query.get("api-version").is_none_or(|v| v.trim().is_empty()) {
        return if is_token {
            oauth_error(
                400,
                "invalid_request",
                "Required query variable 'api-version' is missing",
            )
        } else {
            Response::json(
                400,
                &json!({
                    "error": "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
                    "newest-versions": API_VERSIONS.iter().rev().take(3).collect::<Vec<_>>(),
                }),
            )
        };
    }
    match instance_route {
        Some(route) => instance(route, query.get("format")),
        None => token(&query),
    }
}

fn instance(route: &str, format: Option<&str>) -> Response {
    let document = instance_document();
    let mut node = &document;
    for segment in route.split('/').filter(|s| !s.is_empty()) {
        let next = match node {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return Response::json(404, &json!({ "error": "Not found" })),
        }
    }
    if format.is_some_and(|f| f.eq_ignore_ascii_case("text")) {
        return Response::new(200, "text/plain; charset=utf-8", as_text(node));
    }
    Response::json(200, node)
}

/// `format=text`: a leaf's value, or the children of an object or array, one a line, with a
/// trailing `/` on those that have children of their own.
fn as_text(node: &Value) -> String {
    let entry = |name: String, v: &Value| {
        if v.is_object() || v.is_array() {
            format!("{name}/")
        } else {
            name
        }
    };
    match node {
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| entry(k.clone(), v))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| entry(i.to_string(), v))
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// The instance document; every primitive is a string, as in the real one.
fn instance_document() -> Value {
    let resource_id = format!(
        "/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute/virtualMachines/{VM_NAME}"
    );
    json!({
        "compute": {
            "azEnvironment": "AzurePublicCloud",
            "isHostCompatibilityLayerVm": "false",
            "licenseType": "",
            "location": LOCATION,
            "name": VM_NAME,
            "offer": "0001-com-ubuntu-server-jammy",
            "osProfile": {
                "adminUsername": "azureuser",
                "computerName": VM_NAME,
                "disablePasswordAuthentication": "true",
            },
            "osType": "Linux",
            "placementGroupId": "",
            "plan": {"name": "", "product": "", "publisher": ""},
            "platformFaultDomain": "0",
            "platformUpdateDomain": "0",
            "priority": "",
            "provider": "Microsoft.Compute",
            "publicKeys": [],
            "publisher": "canonical",
            "resourceGroupName": RESOURCE_GROUP,
            "resourceId": resource_id,
            "securityProfile": {"secureBootEnabled": "false", "virtualTpmEnabled": "false"},
            "sku": "22_04-lts-gen2",
            "subscriptionId": SUBSCRIPTION_ID,
            "tags": "env:standin",
            "tagsList": [{"name": "env", "value": "standin"}],
            "userData": "",
            "version": "22.04.202401010",
            "vmId": VM_ID,
            "vmScaleSetName": "",
            "vmSize": VM_SIZE,
            "zone": "1",
        },
        "network": {
            "interface": [{
                "ipv4": {
                    "ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": "20.62.10.4"}],
                    "subnet": [{"address": "10.0.0.0", "prefix": "24"}],
                },
                "ipv6": {"ipAddress": []},
                "macAddress": "000D3A6B2C1F",
            }],
        },
    })
}

/// `/metadata/identity/oauth2/token`: a token for `resource`, valid for 3599 seconds.
fn token(query: &util::Query) -> Response {
    let Some(resource) = query.get("resource").filter(|r| !r.trim().is_empty()) else {
        return oauth_error(
            400,
            "invalid_request",
            "Required audience parameter not specified",
        );
    };
    let now = util::unix_now();
    let expires_on = now + 3599;
    let header = util::base64url(br#"{"typ":"JWT","alg":"RS256","kid":"standin"}"#);
    let claims = json!({
        "aud": resource,
        "iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
        "iat": now,
        "nbf": now,
        "exp": expires_on,
        "appid": CLIENT_ID,
        "oid": "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
        "sub": "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
        "xms_mirid": format!("/subscriptions/{SUBSCRIPTION_ID}/resourcegroups/{RESOURCE_GROUP}/providers/Microsoft.Compute/virtualMachines/{VM_NAME}"),
    });
    let access_token = format!(
        "{header}.{}.{}",
        util::base64url(claims.to_string().as_bytes()),
        util::base64url(b"standin-signature")
    );
    Response::json(
        200,
        &json!({
            "access_token": access_token,
            "refresh_token": "",
            "expires_in": "3599",
            "expires_on": expires_on.to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}
