//! WireServer (168.63.129.16:80): versions, goal state and its configuration documents,
//! health, role properties, telemetry, HealthService and the secure channel (status, key
//! acquisition and attestation; see [`crate::securechannel`]).

use crate::http::{Request, Response};
use crate::{util, State};

/// The goal state incarnation; configuration requests for another one answer 410 Gone.
pub(crate) const INCARNATION: u32 = 1;
pub(crate) const CONTAINER_ID: &str = "c6d5a5a8-5d5b-4a3b-9a7e-3b1e6f2d9c41";
pub(crate) const ROLE_INSTANCE_ID: &str = "7d9b1c4e-2f6a-4e8b-8c3d-5a1f0e9b2d64.standin-vm";
const DEPLOYMENT_ID: &str = "b3f1c0de9a2e4c7f8d6b5a4e3c2d1f0a";
const ROLE_GUID: &str = "{7d9b1c4e-2f6a-4e8b-8c3d-5a1f0e9b2d64}";
pub(crate) const ACTIVITY_ID: &str = "2f7b6a1e-9c3d-4e5f-8a0b-1c2d3e4f5a6b";
pub(crate) const CORRELATION_ID: &str = "8e1d2c3b-4a5f-4678-9b0c-d1e2f3a4b5c6";
pub(crate) const CREATED_ON_TICKS: u64 = 638_400_000_000_000_000;
pub(crate) const STATUS_BLOB: &str =
    "https://standinstorage.blob.core.windows.net/vhds/standin-vm.status?sv=2018-03-28&sr=b&sp=rw&sig=standin";
const XML: &str = "text/xml; charset=utf-8";

const VERSIONS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<Versions>
  <Preferred>
    <Version>2012-11-30</Version>
  </Preferred>
  <Supported>
    <Version>2015-04-05</Version>
    <Version>2012-11-30</Version>
    <Version>2012-09-15</Version>
    <Version>2012-05-15</Version>
    <Version>2011-12-31</Version>
    <Version>2011-10-15</Version>
    <Version>2011-08-31</Version>
    <Version>2011-04-07</Version>
    <Version>2010-12-15</Version>
    <Version>2010-28-10</Version>
  </Supported>
</Versions>
"#;

/// Routes one WireServer request.
pub(crate) fn handle(req: &Request, state: &State) -> Response {
    let (path, query) = req.path_and_query();
    let query = util::Query::parse(query);
    let comp = query.get("comp").unwrap_or("").to_ascii_lowercase();
    let machine = path == "/machine" || path == "/machine/";
    let response = match (req.method.as_str(), comp.as_str()) {
        ("GET", "versions") if path == "/" => Response::new(200, "text/xml", VERSIONS),
        ("GET", "goalstate") if machine => Response::new(200, XML, goal_state(req, state)),
        ("GET", "config") if path == config_path() => config_document(&query),
        ("POST", "health" | "telemetrydata") if machine => Response::new(200, XML, ""),
        ("POST", "roleproperties") if machine => Response::new(202, XML, ""),
        ("POST", _) if path == "/HealthService" => Response::new(200, XML, ""),
        _ if path.starts_with("/secure-channel/") => secure_channel(req, path, state),
        _ => error(
            404,
            "ResourceNotFound",
            "The specified resource does not exist.",
        ),
    };
    response.with_header("x-ms-azure-host-date", util::http_date_now())
}

/// `/secure-channel/...`: SPEC-GPA.md section 6. Signatures were checked before routing; the
/// attestation only gets here with a valid one.
fn secure_channel(req: &Request, path: &str, state: &State) -> Response {
    let channel = &state.channel;
    match (req.method.as_str(), path) {
        ("GET", "/secure-channel/status") => channel.status(),
        ("POST", "/secure-channel/key") => channel.acquire_key(req),
        ("POST", _) if crate::securechannel::attestation_guid(path).is_some() => {
            channel.attest(path, req.signed_by.as_deref())
        }
        _ => error(
            404,
            "ResourceNotFound",
            "The specified resource does not exist.",
        ),
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    Response::new(
        status,
        XML,
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Error xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns=\"http://schemas.microsoft.com/windowsazure\">\n  <Code>{code}</Code>\n  <Message>{message}</Message>\n</Error>\n"
        ),
    )
}

fn config_path() -> String {
    format!("/machine/{CONTAINER_ID}/{ROLE_INSTANCE_ID}")
}

/// `http://ADDR`, the WireServer address clients reach; an unspecified bind address falls
/// back to the address this connection arrived on.
fn base_url(req: &Request, state: &State) -> String {
    let addr = if state.config.wireserver.ip().is_unspecified() {
        req.local
    } else {
        state.config.wireserver
    };
    format!("http://{addr}")
}

fn goal_state(req: &Request, state: &State) -> String {
    let base = base_url(req, state);
    let url = |kind: &str| {
        format!(
            "{base}{}?comp=config&amp;type={kind}&amp;incarnation={INCARNATION}",
            config_path()
        )
    };
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xmlns="http://schemas.microsoft.com/windowsazure">
  <Version>2012-11-30</Version>
  <Incarnation>{INCARNATION}</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts>
      <Port>16001</Port>
    </LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>{CONTAINER_ID}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{ROLE_INSTANCE_ID}</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>{hosting}</HostingEnvironmentConfig>
          <SharedConfig>{shared}</SharedConfig>
          <ExtensionsConfig>{extensions}</ExtensionsConfig>
          <FullConfig>{full}</FullConfig>
          <ConfigName>{ROLE_INSTANCE_ID}.{INCARNATION}.xml</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"#,
        hosting = url("hostingEnvironmentConfig"),
        shared = url("sharedConfig"),
        extensions = url("extensionsConfig"),
        full = url("fullConfig"),
    )
}

/// `?comp=config&type=...&incarnation=N`.
fn config_document(query: &util::Query) -> Response {
    if let Some(n) = query.get("incarnation") {
        if n.trim().parse::<u32>().ok() != Some(INCARNATION) {
            return error(
                410,
                "ResourceGone",
                "The requested incarnation is no longer current.",
            );
        }
    }
    let kind = query.get("type").unwrap_or("").to_ascii_lowercase();
    let body = match kind.as_str() {
        "hostingenvironmentconfig" => hosting_environment_config(),
        "sharedconfig" => shared_config(),
        "extensionsconfig" => extensions_config(),
        "fullconfig" => full_config(),
        _ => return error(400, "InvalidParameter", "Unknown configuration type."),
    };
    Response::new(200, XML, body)
}

fn deployment() -> String {
    format!(
        r#"  <Deployment name="{DEPLOYMENT_ID}" guid="{ROLE_GUID}" incarnation="0" isNonCancellableTopologyChangeEnabled="false">
    <Service name="standin-vm" guid="{{00000000-0000-0000-0000-000000000000}}" />
    <ServiceInstance name="{DEPLOYMENT_ID}.0" guid="{ROLE_GUID}" />
  </Deployment>
  <Incarnation number="{INCARNATION}" instance="standin-vm" guid="{ROLE_GUID}" />"#
    )
}

fn hosting_environment_config() -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="{INCARNATION}">
  <StoredCertificates />
{deployment}
  <Role guid="{ROLE_GUID}" name="standin-vm" hostingEnvironmentVersion="1" software="" softwareType="ApplicationPackage" entryPoint="" parameters="" settleTimeSeconds="10" />
  <HostingEnvironmentSettings name="full" Runtime="rd_fabric_stable.standin.RuntimePackage_1.0.0.8.zip">
    <CAS mode="full" />
    <PrivilegeLevel mode="max" />
    <AdditionalProperties><CgiHandlers></CgiHandlers></AdditionalProperties>
  </HostingEnvironmentSettings>
  <ApplicationSettings />
  <ResourceReferences />
</HostingEnvironmentConfig>
"#,
        deployment = deployment()
    )
}

fn shared_config() -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<SharedConfig version="1.0.0.0" goalStateIncarnation="{INCARNATION}">
{deployment}
  <Role guid="{ROLE_GUID}" name="standin-vm" settleTimeSeconds="0" />
  <LoadBalancerSettings timeoutSeconds="0" waitLoadBalancerProbeCount="8">
    <Probes>
      <Probe name="D41D8CD98F00B204E9800998ECF8427E" />
    </Probes>
  </LoadBalancerSettings>
  <OutputEndpoints />
  <Instances>
    <Instance id="standin-vm" address="10.0.0.4">
      <FaultDomains randomId="0" updateId="0" updateCount="0" />
      <InputEndpoints />
    </Instance>
  </Instances>
</SharedConfig>
"#,
        deployment = deployment()
    )
}

fn extensions_config() -> String {
    let blob = STATUS_BLOB.replace('&', "&amp;");
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<Extensions version="1.0.0.0" goalStateIncarnation="{INCARNATION}">
  <GuestAgentExtension xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
    <GAFamilies />
  </GuestAgentExtension>
  <Plugins />
  <PluginSettings />
  <StatusUploadBlob statusBlobType="BlockBlob">{blob}</StatusUploadBlob>
  <InVMGoalStateMetaData inSvdSeqNo="{INCARNATION}" createdOnTicks="{CREATED_ON_TICKS}" activityId="{ACTIVITY_ID}" correlationId="{CORRELATION_ID}" />
</Extensions>
"#
    )
}

fn full_config() -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<FullConfig version="1.0.0.0" goalStateIncarnation="{INCARNATION}">
{deployment}
  <Role guid="{ROLE_GUID}" name="standin-vm" />
  <Instances>
    <Instance id="{ROLE_INSTANCE_ID}" address="10.0.0.4" />
  </Instances>
</FullConfig>
"#,
        deployment = deployment()
    )
}
