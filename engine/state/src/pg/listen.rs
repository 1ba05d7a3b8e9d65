//! The LISTEN connection: one dedicated connection (not from the pool)
//! listening on the store's channels, its notifications forwarded to the
//! store's broadcast of [`Notice`]s. A lost connection is made again,
//! waiting 250 ms, then twice as long each failure up to 5 s; a
//! connection made again tells `Notice::Runs` (what was told meanwhile is
//! lost: receivers read the store again). Silence is checked: a
//! connection that does not answer a ping is dropped and made again.

use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_postgres::AsyncMessage;

use super::{CHANNEL_JOURNAL, CHANNEL_LOGS, CHANNEL_REQUESTS, CHANNEL_RUNS, CONNECT_TIMEOUT};
use crate::cluster::Notice;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a quiet connection is pinged, and how long its answer may
/// take.
const PING_EVERY: Duration = Duration::from_secs(15);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Listen until `stop` says so (or the store, and its sender, is gone).
pub(super) async fn listen(
    config: tokio_postgres::Config,
    notices: broadcast::Sender<Notice>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut connected_before = false;
    loop {
        let mut listening = false;
        tokio::select! {
            _ = stop.changed() => return,
            _ = session(&config, &notices, &mut listening, connected_before) => {}
        }
        if listening {
            connected_before = true;
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: connect, LISTEN, forward until it ends or fails.
/// `listening` is set once the LISTENs are in place.
async fn session(
    config: &tokio_postgres::Config,
    notices: &broadcast::Sender<Notice>,
    listening: &mut bool,
    reconnected: bool,
) {
    let Ok(Ok((client, mut connection))) =
        tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tokio_postgres::NoTls)).await
    else {
        return;
    };
    // Drives the connection, forwarding notifications; ends with it.
    let driver = async {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let notice = match n.channel() {
                        CHANNEL_JOURNAL => Notice::Journal(n.payload().to_string()),
                        CHANNEL_RUNS => Notice::Runs,
                        CHANNEL_REQUESTS => Notice::Request(n.payload().to_string()),
                        CHANNEL_LOGS => Notice::Logs(n.payload().to_string()),
                        _ => continue,
                    };
                    // No receiver is no error.
                    let _ = notices.send(notice);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    };
    tokio::pin!(driver);
    let sql =
        format!("LISTEN {CHANNEL_JOURNAL}; LISTEN {CHANNEL_RUNS}; LISTEN {CHANNEL_REQUESTS}; LISTEN {CHANNEL_LOGS}");
    let listen = client.batch_execute(&sql);
    tokio::select! {
        _ = &mut driver => return,
        r = tokio::time::timeout(CONNECT_TIMEOUT, listen) => {
            if !matches!(r, Ok(Ok(()))) {
                return;
            }
        }
    }
    *listening = true;
    if reconnected {
        let _ = notices.send(Notice::Runs);
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            _ = &mut driver => return,
            _ = ticker.tick() => {
                let ping = tokio::time::timeout(PING_TIMEOUT, client.simple_query(""));
                tokio::select! {
                    _ = &mut driver => return,
                    r = ping => if !matches!(r, Ok(Ok(_))) { return },
                }
            }
        }
    }
}
