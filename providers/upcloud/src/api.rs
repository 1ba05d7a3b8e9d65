//! A small typed client for the parts of UpCloud's REST API (1.3) the
//! provider uses: servers (create from a template, details, list by label,
//! stop, delete with storage) and private SDN networks (create, list by
//! zone, delete).
//!
//! Paths are spelled as UpCloud's own Go SDK spells them (a trailing `/`
//! on `network/`, `server/{uuid}/?storages=1`), which its recordings show
//! the real service accepting.

use std::time::Duration;

use drover_core::FailureKind;
use serde::Deserialize;
use serde_json::{Value, json};

/// The production API.
pub const API_URL: &str = "https://api.upcloud.com/1.3";

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How drover authenticates to the API.
#[derive(Clone)]
pub enum Credentials {
    /// An API user (a sub-account with API access) and its password: HTTP
    /// basic auth.
    Basic {
        /// The API user.
        username: String,
        /// Its password.
        password: String,
    },
    /// An API token: bearer auth.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { .. } => f.write_str("Credentials::Basic(<redacted>)"),
            Credentials::Token(_) => f.write_str("Credentials::Token(<redacted>)"),
        }
    }
}

/// An API call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// UpCloud answered with an error.
    #[error("{call}: UpCloud answered {status} {code}: {message}")]
    Refused {
        /// Method and path.
        call: String,
        /// HTTP status.
        status: u16,
        /// UpCloud's `error_code` (the HTTP status when the body had none).
        code: String,
        /// UpCloud's `error_message`.
        message: String,
    },
    /// No answer: connection refused or reset, timeout.
    #[error("{call}: no answer from the UpCloud API: {detail}")]
    Unreachable {
        /// Method and path.
        call: String,
        /// What happened.
        detail: String,
    },
    /// An answer drover cannot read.
    #[error("{call}: cannot read UpCloud's answer ({status}): {detail}")]
    Unreadable {
        /// Method and path.
        call: String,
        /// HTTP status.
        status: u16,
        /// What is wrong with it.
        detail: String,
    },
}

impl ApiError {
    /// Whether another attempt can help: no answer, rate limiting (429)
    /// and server-side errors (5xx) may pass; other refusals (bad
    /// credentials, an unknown plan or zone, an illegal state) will not.
    pub fn kind(&self) -> FailureKind {
        match self {
            ApiError::Refused { status, .. } if *status == 429 || *status == 408 || *status >= 500 => {
                FailureKind::Transient
            }
            ApiError::Refused { .. } => FailureKind::Permanent,
            ApiError::Unreachable { .. } => FailureKind::Transient,
            // A garbled answer is most often a proxy or an outage page.
            ApiError::Unreadable { status, .. } if *status >= 500 => FailureKind::Transient,
            ApiError::Unreadable { .. } => FailureKind::Permanent,
        }
    }

    /// UpCloud's `error_code`, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether it says the thing asked about does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Refused { status: 404, .. })
    }
}

/// A label (`key=value`) on a server or network.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Label {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Labels {
    #[serde(default)]
    label: Vec<Label>,
}

/// An IP address of a server.
#[derive(Debug, Clone, Deserialize)]
pub struct IpAddress {
    /// `public`, `private` or `utility`.
    #[serde(default)]
    pub access: String,
    /// The address.
    pub address: String,
    /// `IPv4` or `IPv6`.
    #[serde(default)]
    pub family: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct IpAddresses {
    #[serde(default)]
    ip_address: Vec<IpAddress>,
}

/// A network interface of a server.
#[derive(Debug, Clone, Deserialize)]
pub struct Interface {
    /// `public`, `private` or `utility`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The network's uuid.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    ip_addresses: IpAddresses,
}

impl Interface {
    /// Its IPv4 addresses.
    pub fn ipv4(&self) -> impl Iterator<Item = &str> {
        self.ip_addresses
            .ip_address
            .iter()
            .filter(|a| a.family == "IPv4")
            .map(|a| a.address.as_str())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Interfaces {
    #[serde(default)]
    interface: Vec<Interface>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Networking {
    #[serde(default)]
    interfaces: Interfaces,
}

/// A server as the API describes it (the fields drover uses).
#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    /// Its id.
    pub uuid: String,
    /// Its hostname.
    #[serde(default)]
    pub hostname: String,
    /// Its title.
    #[serde(default)]
    pub title: String,
    /// Its zone.
    #[serde(default)]
    pub zone: String,
    /// Its plan (`custom` for one made by cores and memory).
    #[serde(default)]
    pub plan: String,
    /// `started`, `stopped`, `maintenance` or `error`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    ip_addresses: IpAddresses,
    #[serde(default)]
    networking: Networking,
}

impl Server {
    /// Its labels.
    pub fn labels(&self) -> &[Label] {
        &self.labels.label
    }

    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels().iter().find(|l| l.key == key).map(|l| l.value.as_str())
    }

    /// Its addresses (details only; lists leave them out).
    pub fn ip_addresses(&self) -> &[IpAddress] {
        &self.ip_addresses.ip_address
    }

    /// Its network interfaces (details only).
    pub fn interfaces(&self) -> &[Interface] {
        &self.networking.interfaces.interface
    }

    /// Its first IPv4 address of kind `access` (`public`, `private`,
    /// `utility`).
    pub fn ipv4(&self, access: &str) -> Option<&str> {
        self.ip_addresses()
            .iter()
            .find(|a| a.access == access && a.family == "IPv4")
            .map(|a| a.address.as_str())
    }
}

/// A private SDN network.
#[derive(Debug, Clone, Deserialize)]
pub struct Network {
    /// Its id.
    pub uuid: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its zone.
    #[serde(default)]
    pub zone: String,
    /// `private`, `public` or `utility`.
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// What a new server is made of.
#[derive(Debug, Clone)]
pub struct NewServer<'a> {
    /// Zone id (`de-fra1`).
    pub zone: &'a str,
    /// Plan name (`2xCPU-4GB`).
    pub plan: &'a str,
    /// Hostname.
    pub hostname: &'a str,
    /// Title shown in the control panel.
    pub title: &'a str,
    /// The storage template cloned for its disk (a uuid).
    pub template: &'a str,
    /// Disk size in GiB (the plan's own when None).
    pub disk_gib: Option<u64>,
    /// The user the SSH key logs in as.
    pub login_user: &'a str,
    /// The public key (`ssh-ed25519 AAAA… comment`).
    pub ssh_key: &'a str,
    /// The private SDN network to attach (its uuid).
    pub network: Option<&'a str>,
    /// Labels.
    pub labels: &'a [(&'a str, &'a str)],
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    error_code: String,
    error_message: String,
}

#[derive(Deserialize)]
struct ServerBody {
    server: Server,
}

#[derive(Deserialize)]
struct ServersBody {
    servers: ServerList,
}

#[derive(Deserialize)]
struct ServerList {
    #[serde(default)]
    server: Vec<Server>,
}

#[derive(Deserialize)]
struct NetworkBody {
    network: Network,
}

#[derive(Deserialize)]
struct NetworksBody {
    networks: NetworkList,
}

#[derive(Deserialize)]
struct NetworkList {
    #[serde(default)]
    network: Vec<Network>,
}

/// A client of one API endpoint with one set of credentials.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    credentials: Credentials,
}

impl Client {
    /// A client of the API at `base` (no trailing `/`; production:
    /// [`API_URL`]).
    pub fn new(base: &str, credentials: Credentials) -> Result<Client, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Unreachable {
                call: "making the HTTP client".into(),
                detail: e.to_string(),
            })?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            credentials,
        })
    }

    /// One call; the answer's body (JSON; `Null` when empty).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<(u16, Value), ApiError> {
        let call = format!("{method} {path}");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, "application/json");
        if !query.is_empty() {
            request = request.query(query);
        }
        request = match &self.credentials {
            Credentials::Basic { username, password } => request.basic_auth(username, Some(password)),
            Credentials::Token(token) => request.bearer_auth(token),
        };
        if let Some(body) = body {
            request = request.json(&body);
        }
        // reqwest's errors name the URL, never the Authorization header.
        let response = request.send().await.map_err(|e| ApiError::Unreachable {
            call: call.clone(),
            detail: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| ApiError::Unreachable {
            call: call.clone(),
            detail: format!("the answer broke off: {e}"),
        })?;
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_str::<ErrorBody>(&text) {
                Ok(b) => ApiError::Refused {
                    call,
                    status,
                    code: b.error.error_code,
                    message: b.error.error_message,
                },
                Err(_) => ApiError::Refused {
                    call,
                    status,
                    code: format!("HTTP {status}"),
                    message: text.chars().take(200).collect(),
                },
            });
        }
        if text.trim().is_empty() {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_str(&text).map_err(|e| ApiError::Unreadable {
            call,
            status,
            detail: e.to_string(),
        })?;
        Ok((status, value))
    }

    fn decode<T: serde::de::DeserializeOwned>(call: &str, status: u16, value: Value) -> Result<T, ApiError> {
        serde_json::from_value(value).map_err(|e| ApiError::Unreadable {
            call: call.to_string(),
            status,
            detail: e.to_string(),
        })
    }

    /// `POST /server`: a server cloned from a template, which then starts.
    pub async fn create_server(&self, new: &NewServer<'_>) -> Result<Server, ApiError> {
        let mut disk = json!({
            "action": "clone",
            "storage": new.template,
            "title": format!("{}-disk1", new.hostname),
            "tier": "maxiops",
        });
        if let Some(size) = new.disk_gib {
            disk["size"] = json!(size);
        }
        let v4 = json!({"ip_address": [{"family": "IPv4"}]});
        let mut interfaces = vec![
            json!({"type": "public", "ip_addresses": v4}),
            json!({"type": "utility", "ip_addresses": v4}),
        ];
        if let Some(network) = new.network {
            interfaces.push(json!({"type": "private", "network": network, "ip_addresses": v4}));
        }
        let labels: Vec<Value> = new.labels.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        let body = json!({"server": {
            "zone": new.zone,
            "plan": new.plan,
            "hostname": new.hostname,
            "title": new.title,
            "labels": {"label": labels},
            // cloud-init templates read the SSH key from the metadata service.
            "metadata": "yes",
            "password_delivery": "none",
            "login_user": {
                "username": new.login_user,
                "create_password": "no",
                "ssh_keys": {"ssh_key": [new.ssh_key]},
            },
            "storage_devices": {"storage_device": [disk]},
            "networking": {"interfaces": {"interface": interfaces}},
        }});
        let (status, v) = self.call(reqwest::Method::POST, "/server", &[], Some(body)).await?;
        Ok(Self::decode::<ServerBody>("POST /server", status, v)?.server)
    }

    /// `GET /server/{uuid}`; None when there is no such server.
    pub async fn server(&self, uuid: &str) -> Result<Option<Server>, ApiError> {
        let path = format!("/server/{uuid}");
        match self.call(reqwest::Method::GET, &path, &[], None).await {
            Ok((status, v)) => Ok(Some(Self::decode::<ServerBody>(&path, status, v)?.server)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /server/?label=…`: the servers carrying every label given
    /// (`key` alone: any value; `key=value`: that value).
    pub async fn servers_labelled(&self, labels: &[&str]) -> Result<Vec<Server>, ApiError> {
        let query: Vec<(&str, &str)> = labels.iter().map(|l| ("label", *l)).collect();
        let (status, v) = self.call(reqwest::Method::GET, "/server/", &query, None).await?;
        Ok(Self::decode::<ServersBody>("GET /server/", status, v)?.servers.server)
    }

    /// `POST /server/{uuid}/stop`, hard: the server is cut off at once.
    pub async fn stop_server(&self, uuid: &str) -> Result<Server, ApiError> {
        let path = format!("/server/{uuid}/stop");
        let body = json!({"stop_server": {"stop_type": "hard", "timeout": "900"}});
        let (status, v) = self.call(reqwest::Method::POST, &path, &[], Some(body)).await?;
        Ok(Self::decode::<ServerBody>(&path, status, v)?.server)
    }

    /// `POST /server/{uuid}/start`.
    pub async fn start_server(&self, uuid: &str) -> Result<Server, ApiError> {
        let path = format!("/server/{uuid}/start");
        let (status, v) = self
            .call(reqwest::Method::POST, &path, &[], Some(json!({"server": {}})))
            .await?;
        Ok(Self::decode::<ServerBody>(&path, status, v)?.server)
    }

    /// `DELETE /server/{uuid}/?storages=1`: the (stopped) server and its
    /// storage.
    pub async fn delete_server(&self, uuid: &str) -> Result<(), ApiError> {
        let path = format!("/server/{uuid}/");
        self.call(reqwest::Method::DELETE, &path, &[("storages", "1")], None)
            .await
            .map(|_| ())
    }

    /// `POST /network/`: a private network of `zone` with one IPv4 range
    /// served by DHCP (no default route: the servers' public interface
    /// keeps that).
    pub async fn create_network(&self, zone: &str, name: &str, cidr: &str) -> Result<Network, ApiError> {
        let body = json!({"network": {
            "name": name,
            "zone": zone,
            "ip_networks": {"ip_network": [{
                "address": cidr,
                "dhcp": "yes",
                "dhcp_default_route": "no",
                "family": "IPv4",
            }]},
        }});
        let (status, v) = self.call(reqwest::Method::POST, "/network/", &[], Some(body)).await?;
        Ok(Self::decode::<NetworkBody>("POST /network/", status, v)?.network)
    }

    /// `GET /network/?zone=…`: the networks of `zone` the account sees.
    pub async fn networks(&self, zone: &str) -> Result<Vec<Network>, ApiError> {
        let (status, v) = self
            .call(reqwest::Method::GET, "/network/", &[("zone", zone)], None)
            .await?;
        Ok(Self::decode::<NetworksBody>("GET /network/", status, v)?
            .networks
            .network)
    }

    /// `DELETE /network/{uuid}`; one that is gone already is not an error.
    pub async fn delete_network(&self, uuid: &str) -> Result<(), ApiError> {
        match self
            .call(reqwest::Method::DELETE, &format!("/network/{uuid}"), &[], None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> ApiError {
        ApiError::Refused {
            call: "GET /server/x".into(),
            status,
            code: "CODE".into(),
            message: "message".into(),
        }
    }

    #[test]
    fn rate_limits_and_server_errors_are_transient_other_refusals_permanent() {
        for status in [408, 429, 500, 502, 503] {
            assert_eq!(refused(status).kind(), FailureKind::Transient, "{status}");
        }
        for status in [400, 401, 403, 404, 409, 422] {
            assert_eq!(refused(status).kind(), FailureKind::Permanent, "{status}");
        }
    }

    #[test]
    fn credentials_do_not_show_in_debug() {
        let basic = Credentials::Basic {
            username: "user".into(),
            password: "pw-123".into(),
        };
        let token = Credentials::Token("tok-456".into());
        assert!(!format!("{basic:?}").contains("pw-123"));
        assert!(!format!("{token:?}").contains("tok-456"));
    }
}
