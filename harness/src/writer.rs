//! Background write load for tests that change a cluster under writes: unique keys, spread
//! over the nodes, and a record of which writes were acknowledged (those must survive).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftkv_client::{Client, Condition};

/// The pause between two writes: steady load that leaves the machine to the nodes.
const PAUSE: Duration = Duration::from_millis(5);

/// What a [`Writer`] did: the acknowledged `(key, value)` pairs in order, and how many writes
/// failed.
pub type Written = (Vec<(String, String)>, usize);

/// Puts `<prefix><n:06>` = `value-<n>` through the given nodes in turn until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Written>,
}

impl Writer {
    /// Starts writing through `clients` in turn (at least one).
    pub fn start(clients: Vec<Client>, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let prefix = prefix.to_string();
        let handle = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0;
            let mut n = 0usize;
            while !clients.is_empty() && !flag.load(Ordering::Relaxed) {
                let key = format!("{prefix}{n:06}");
                let value = format!("value-{n}");
                let client = &clients[n % clients.len()];
                match client.put(key.as_bytes(), value.clone(), Condition::None).await {
                    Ok(_) => acked.push((key, value)),
                    Err(_) => failed += 1,
                }
                n += 1;
                tokio::time::sleep(PAUSE).await;
            }
            (acked, failed)
        });
        Writer { stop, handle }
    }

    /// Stops the writer; returns the acknowledged writes and the number of failed ones.
    pub async fn stop(self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.await {
            Ok(written) => written,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => (Vec::new(), 0),
        }
    }
}
