//! A connection's writer task: drains its bounded queue onto the socket.
//!
//! It writes every frame that is ready in one syscall (frames queued while a write was in
//! flight go out together), so a busy connection costs few syscalls and Nagle's algorithm
//! is not needed (`TCP_NODELAY` is set). It stops at once when the connection's stop token
//! fires, even in the middle of a write to a peer that does not read.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::peer::Outgoing;

/// Largest batch gathered before writing, in bytes.
const MAX_BATCH: usize = 256 * 1024;

/// A batch buffer that grew past this is released once written, so idle connections
/// hold little memory.
const KEEP_BUFFER: usize = 16 * 1024;

/// Runs until the queue closes, a `Close` is written, the socket fails, or `stop` fires.
pub async fn run(
    mut socket: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut batch = BytesMut::new();
    loop {
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            item = queue.recv() => item,
        };
        // The queue ended: every sender is gone.
        let Some(first) = first else { break };
        let close = gather(first, &mut queue, &mut batch);
        let written = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            result = socket.write_all(&batch) => result,
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "write failed");
            stop.cancel();
            return;
        }
        batch.clear();
        if batch.capacity() > KEEP_BUFFER {
            batch = BytesMut::new();
        }
        if close {
            break;
        }
    }
    // Orderly end: flush, send FIN, and stop the reader.
    let _ = socket.shutdown().await;
    stop.cancel();
}

/// Appends `first` and every frame already queued (up to [`MAX_BATCH`]) to `batch`.
/// Returns true when a `Close` was reached: the batch is the last one.
fn gather(first: Outgoing, queue: &mut mpsc::Receiver<Outgoing>, batch: &mut BytesMut) -> bool {
    let mut item = first;
    loop {
        match item {
            Outgoing::Frame(frame) => batch.extend_from_slice(&frame),
            Outgoing::Close => return true,
        }
        if batch.len() >= MAX_BATCH {
            return false;
        }
        match queue.try_recv() {
            Ok(next) => item = next,
            Err(_) => return false,
        }
    }
}
