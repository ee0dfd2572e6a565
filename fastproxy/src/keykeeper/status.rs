//! The secure-channel status WireServer answers (SPEC-GPA.md section 6): parsed strictly,
//! reduced to what the keeper acts on: the key guid, and the mode of each endpoint.

use serde::Deserialize;
use thiserror::Error;

use crate::upstream::EndpointMode;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StatusError {
    #[error("the status is not JSON of the expected shape: {0}")]
    NotJson(String),
    #[error("unsupported status version {0:?}")]
    Version(String),
    #[error("unsupported authorization scheme {0:?}")]
    Scheme(String),
}

/// `GET /secure-channel/status`, as delivered.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecureChannelStatus {
    pub authorization_scheme: Option<String>,
    pub key_delivery_method: Option<String>,
    pub key_incarnation_id: Option<serde_json::Value>,
    pub key_guid: Option<String>,
    pub required_claims_header_pairs: Option<Vec<String>>,
    pub version: String,
    /// v1.0: "disabled" | "wireserver" | "wireserverandimds".
    pub secure_channel_state: Option<String>,
    /// v2.0.
    pub secure_channel_enabled: Option<bool>,
    /// v2.0: per-endpoint authorization items (handed to the policy layer as they are).
    pub authorization_rules: Option<serde_json::Value>,
}

/// The mode of each endpoint, as a status sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    pub wireserver: EndpointMode,
    pub imds: EndpointMode,
    pub hostga: EndpointMode,
}

impl Modes {
    pub const DISABLED: Modes = Modes {
        wireserver: EndpointMode::Disabled,
        imds: EndpointMode::Disabled,
        hostga: EndpointMode::Disabled,
    };

    /// The state text of SPEC-GPA.md section 6.2 (note the two spaces before IMDS).
    pub fn state_text(&self) -> String {
        if *self == Modes::DISABLED {
            return "disabled".to_owned();
        }
        format!(
            "WireServer {} -  IMDS {} - HostGA {}",
            capitalised(self.wireserver),
            capitalised(self.imds),
            capitalised(self.hostga)
        )
    }
}

fn capitalised(mode: EndpointMode) -> &'static str {
    match mode {
        EndpointMode::Disabled => "Disabled",
        EndpointMode::Audit => "Audit",
        EndpointMode::Enforce => "Enforce",
    }
}

/// A mode name as GPA parses it: case-insensitive, anything unknown is `disabled`.
pub fn lenient_mode(name: Option<&str>) -> EndpointMode {
    name.and_then(|n| n.parse().ok())
        .unwrap_or(EndpointMode::Disabled)
}

impl SecureChannelStatus {
    pub fn parse(body: &[u8]) -> Result<Self, StatusError> {
        let status: SecureChannelStatus =
            serde_json::from_slice(body).map_err(|e| StatusError::NotJson(e.to_string()))?;
        if status.version != "1.0" && status.version != "2.0" {
            return Err(StatusError::Version(status.version));
        }
        if let Some(scheme) = &status.authorization_scheme {
            if scheme != crate::signing::SCHEME {
                return Err(StatusError::Scheme(scheme.clone()));
            }
        }
        Ok(status)
    }

    /// SPEC-GPA.md section 6.1. HostGAPlugin follows WireServer in both versions.
    pub fn modes(&self) -> Modes {
        let (wireserver, imds) = if self.version == "2.0" {
            let rules = self.authorization_rules.as_ref();
            let mode =
                |ep: &str| lenient_mode(rules.and_then(|r| r.get(ep)?.get("mode")?.as_str()));
            (mode("wireserver"), mode("imds"))
        } else {
            match self
                .secure_channel_state
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("wireserver") => (EndpointMode::Enforce, EndpointMode::Audit),
                Some("wireserverandimds") => (EndpointMode::Enforce, EndpointMode::Enforce),
                _ => (EndpointMode::Disabled, EndpointMode::Disabled),
            }
        };
        Modes {
            wireserver,
            imds,
            hostga: wireserver,
        }
    }

    /// Whether a key must be latched (the channel is on for some endpoint).
    pub fn wants_key(&self) -> bool {
        self.modes() != Modes::DISABLED && self.key_guid.as_deref().is_some_and(|g| !g.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_states() {
        let cases = [
            ("disabled", "disabled"),
            (
                "wireserver",
                "WireServer Enforce -  IMDS Audit - HostGA Enforce",
            ),
            (
                "WireServerAndImds",
                "WireServer Enforce -  IMDS Enforce - HostGA Enforce",
            ),
            ("something-new", "disabled"),
        ];
        for (state, text) in cases {
            let body = format!(
                r#"{{"authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http","keyGuid":"g1","version":"1.0","secureChannelState":"{state}"}}"#
            );
            let status = SecureChannelStatus::parse(body.as_bytes()).expect("parses");
            assert_eq!(status.modes().state_text(), text, "{state}");
        }
    }

    #[test]
    fn v2_modes_from_rules_missing_is_disabled() {
        let body = br#"{"authorizationScheme":"Azure-HMAC-SHA256","keyGuid":"g2","version":"2.0","secureChannelEnabled":true,
            "authorizationRules":{"wireserver":{"mode":"ENFORCE","defaultAccess":"allow"},"imds":{"mode":"audit"},"hostga":{"mode":"disabled"}}}"#;
        let status = SecureChannelStatus::parse(body).expect("parses");
        let modes = status.modes();
        assert_eq!(modes.wireserver, EndpointMode::Enforce);
        assert_eq!(modes.imds, EndpointMode::Audit);
        assert_eq!(
            modes.hostga,
            EndpointMode::Enforce,
            "HostGA follows WireServer"
        );
        assert!(status.wants_key());
        let none = SecureChannelStatus::parse(br#"{"version":"2.0","secureChannelEnabled":false}"#)
            .expect("parses");
        assert_eq!(none.modes(), Modes::DISABLED);
        assert!(!none.wants_key());
    }

    #[test]
    fn bad_statuses_are_errors() {
        assert!(matches!(
            SecureChannelStatus::parse(b"<html>"),
            Err(StatusError::NotJson(_))
        ));
        assert!(matches!(
            SecureChannelStatus::parse(br#"{"version":"3.0"}"#),
            Err(StatusError::Version(_))
        ));
        assert!(matches!(
            SecureChannelStatus::parse(br#"{"version":"1.0","authorizationScheme":"Other"}"#),
            Err(StatusError::Scheme(_))
        ));
    }
}
