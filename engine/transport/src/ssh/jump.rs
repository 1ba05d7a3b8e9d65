//! Bastions (`ssh.jump`, `ProxyJump`): one SSH connection per bastion,
//! shared by every server behind it.
//!
//! The first bastion is reached over TCP, every next hop (bastion or the
//! server) through a `direct-tcpip` channel of the connection before it.
//! Connections to bastions live in a process-wide pool keyed by the chain
//! of hops that leads to them; the pool holds them weakly: a bastion's
//! connection lives as long as a connection behind it does (each holds an
//! `Arc` of its last bastion, each bastion one of the bastion before it).
//! A bastion found closed is connected anew on the next use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, Weak};

use russh::client::{self, Msg};
use russh::{ChannelOpenFailure, ChannelStream};
use tokio::time::Instant;

use super::connection::OpenGuard;
use super::handshake::{self, Client, Endpoint};
use super::{Bastion, SshError, SshTarget};

/// An authenticated connection to one bastion.
pub(super) struct Hop {
    handle: client::Handle<Client>,
    /// `user@address:port`.
    bastion: String,
    /// The bastion this one is reached through, kept open while this is.
    _upstream: Option<Arc<Hop>>,
    /// A channel request failed other than by the bastion's refusal: the
    /// connection is taken for broken, even if russh has not noticed yet.
    broken: AtomicBool,
    /// Counts the connection in `open_connections`.
    _open: OpenGuard,
}

impl std::fmt::Debug for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hop")
            .field("bastion", &self.bastion)
            .finish_non_exhaustive()
    }
}

/// One slot per chain of hops; its lock is held while the bastion is
/// connected, so that servers behind it wait for one connection rather
/// than each opening its own.
type Slot = Arc<tokio::sync::Mutex<Weak<Hop>>>;

static POOL: LazyLock<std::sync::Mutex<HashMap<Vec<Bastion>, Slot>>> =
    LazyLock::new(|| std::sync::Mutex::new(HashMap::new()));

impl Hop {
    /// A stream to `address:port` through this bastion, for the server
    /// `host`.
    pub(super) async fn forward(&self, host: &str, address: &str, port: u16) -> Result<ChannelStream<Msg>, SshError> {
        match self
            .handle
            .channel_open_direct_tcpip(address, u32::from(port), "127.0.0.1", 0)
            .await
        {
            Ok(channel) => Ok(channel.into_stream()),
            Err(russh::Error::ChannelOpenFailure(reason)) => Err(SshError::Forward {
                host: host.to_string(),
                bastion: self.bastion.clone(),
                address: if address.contains(':') {
                    format!("[{address}]:{port}")
                } else {
                    format!("{address}:{port}")
                },
                reason: match reason {
                    ChannelOpenFailure::AdministrativelyProhibited => "forwarding refused by its administrator",
                    ChannelOpenFailure::ConnectFailed => "the connection failed (refused, or no route from there)",
                    ChannelOpenFailure::UnknownChannelType => "it does not know direct-tcpip channels",
                    ChannelOpenFailure::ResourceShortage => "it is short of resources",
                    ChannelOpenFailure::Unknown => "it refused for an unknown reason",
                }
                .to_string(),
                prohibited: matches!(
                    reason,
                    ChannelOpenFailure::AdministrativelyProhibited | ChannelOpenFailure::UnknownChannelType
                ),
            }),
            Err(e) => {
                self.broken.store(true, Ordering::Relaxed);
                Err(SshError::Bastion {
                    host: host.to_string(),
                    bastion: self.bastion.clone(),
                    source: Box::new(handshake::session_error(&format!("bastion {}", self.bastion), e)),
                })
            }
        }
    }

    /// Whether the connection is gone (or taken for broken).
    fn is_closed(&self) -> bool {
        self.handle.is_closed() || self.broken.load(Ordering::Relaxed)
    }
}

/// The connection to the last bastion of `target.jump`, every bastion on
/// the way taken from the pool or connected (before `deadline`).
pub(super) async fn chain(target: &SshTarget, deadline: Instant) -> Result<Arc<Hop>, SshError> {
    let mut upstream: Option<Arc<Hop>> = None;
    for (index, bastion) in target.jump.iter().enumerate() {
        let wrap = |e: SshError| match e {
            // Already names the bastion that failed to forward.
            SshError::Forward { .. } | SshError::Bastion { .. } => e,
            other => SshError::Bastion {
                host: target.host.clone(),
                bastion: bastion.to_string(),
                source: Box::new(other),
            },
        };
        let timed_out = |during| {
            wrap(SshError::TimedOut {
                host: format!("bastion {bastion}"),
                address: bastion.address_port(),
                after: target.connect_timeout,
                during,
            })
        };
        let key = target.jump.get(..=index).unwrap_or_default().to_vec();
        let slot = POOL
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        let mut pooled = tokio::time::timeout_at(deadline, slot.lock())
            .await
            .map_err(|_| timed_out("waiting for another connection to it"))?;
        if let Some(hop) = pooled.upgrade().filter(|hop| !hop.is_closed()) {
            upstream = Some(hop);
            continue;
        }
        let hop = tokio::time::timeout_at(deadline, connect(target, bastion, upstream.as_deref()))
            .await
            .map_err(|_| timed_out("connecting"))?
            .map_err(wrap)?;
        let hop = Arc::new(Hop {
            handle: hop,
            bastion: bastion.to_string(),
            _upstream: upstream.take(),
            broken: AtomicBool::new(false),
            _open: OpenGuard::new(),
        });
        *pooled = Arc::downgrade(&hop);
        upstream = Some(hop);
    }
    upstream.ok_or_else(|| SshError::InvalidInput {
        host: target.host.clone(),
        message: "no bastion to go through".into(),
    })
}

/// Connects to `bastion`, directly or through `upstream`.
async fn connect(
    target: &SshTarget,
    bastion: &Bastion,
    upstream: Option<&Hop>,
) -> Result<client::Handle<Client>, SshError> {
    let endpoint = Endpoint {
        label: format!("bastion {bastion}"),
        address: &bastion.address,
        port: bastion.port,
        user: &bastion.user,
        target,
    };
    match upstream {
        None => {
            let socket = handshake::tcp(&endpoint).await?;
            handshake::establish(&endpoint, socket).await
        }
        Some(upstream) => {
            let stream = upstream.forward(&target.host, &bastion.address, bastion.port).await?;
            handshake::establish(&endpoint, stream).await
        }
    }
}
