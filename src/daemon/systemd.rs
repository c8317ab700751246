//! Talking to systemd: sd_notify messages (READY, RELOADING, STOPPING,
//! STATUS, WATCHDOG) through one thread. It may not stall the engine:
//! past a short queue, messages are dropped (and said).
use super::*;

/// Tells the service manager `states`, without ever stalling the caller.
///
/// A datagram send blocks while the manager's socket queue is full (10
/// messages by default), and the engine must not wait on that: messages go,
/// in order, through one thread. If the manager stops reading, up to
/// `NOTIFY_QUEUE` messages wait and later ones are dropped (and said); the
/// watchdog pings among them stop, as they should when the manager and
/// ripcord cannot talk. Not under systemd (NOTIFY_SOCKET unset), nothing.
pub(super) fn sd_notify(states: &[sd_notify::NotifyState]) {
    use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
    const NOTIFY_QUEUE: usize = 64;
    static SENDER: std::sync::OnceLock<Option<SyncSender<String>>> = std::sync::OnceLock::new();
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let sender = SENDER.get_or_init(|| {
        let (tx, rx) = sync_channel::<String>(NOTIFY_QUEUE);
        std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for msg in rx {
                    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Custom(&msg)]) {
                        warn!("sd_notify failed: {e}");
                    }
                }
            })
            .map_err(|e| error!("cannot start the sd_notify thread: {e}"))
            .ok()
            .map(|_| tx)
    });
    let msg = states
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    match sender.as_ref().map(|tx| tx.try_send(msg)) {
        Some(Ok(())) => {}
        Some(Err(TrySendError::Full(msg))) => {
            warn!("the service manager is not reading notifications; dropped: {msg}")
        }
        Some(Err(TrySendError::Disconnected(_))) | None => {}
    }
}
