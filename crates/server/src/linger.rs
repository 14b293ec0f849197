//! The last step of every connection the server ends itself: linger until the peer hangs
//! up too.
//!
//! A socket closed while the peer's bytes sit unread in it makes the kernel send a reset,
//! and a reset can destroy what the server wrote last (the "slow down" line, the reason
//! for the disconnect) before the peer reads it. So once a reader stops, it keeps reading
//! and throwing away what arrives, until the peer closes (it does once the writer's FIN
//! reaches it) or a little has been read, and the writer is done; or until the linger
//! time runs out. Then it stops the writer, so a peer that never reads cannot hold a
//! connection open after it was ended.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::sync::CancellationToken;

/// Most bytes read and thrown away while lingering; a peer sending more is cut off.
const LINGER_DRAIN: usize = 256 * 1024;

/// Reads and discards from `socket` until the peer closes or [`LINGER_DRAIN`] bytes have
/// been read, and waits for the writer to end (it cancels `stop` when done); at most
/// `limit` in all. Then cancels `stop`, ending the writer if it is still there.
pub async fn drain_then_stop(mut socket: OwnedReadHalf, limit: Duration, stop: &CancellationToken) {
    let drain = async {
        let mut scratch = [0u8; 4096];
        let mut left = LINGER_DRAIN;
        while left > 0 {
            match socket.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let drained_and_written = async {
        drain.await;
        stop.cancelled().await;
    };
    let _ = tokio::time::timeout(limit, drained_and_written).await;
    stop.cancel();
}
