//! A connection's writer task: drains its [`Outbox`] onto the socket, sealed.
//!
//! It takes every frame queued since its last write, copies them once into one buffer,
//! seals that buffer in place into as few records as the record limit allows (many
//! frames per record; a frame may span two), and writes it, so a busy connection costs
//! few syscalls and few cipher calls, and Nagle's algorithm is not needed (`TCP_NODELAY`
//! is set). The buffer lives only for one batch: an idle connection holds none. It stops
//! at once when the connection's stop token fires, even in the middle of a write to a
//! peer that does not read.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use protocol::secure::record::sealed_len;
use protocol::secure::{RecordError, Sealer};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;

/// Runs until the outbox finishes, the socket fails, or `stop` fires. `sealer` continues
/// the stream the handshake started.
pub async fn run(
    mut socket: OwnedWriteHalf,
    outbox: Arc<Outbox>,
    stop: CancellationToken,
    mut sealer: Sealer,
) {
    loop {
        let batch = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            batch = outbox.next_batch() => batch,
        };
        if !batch.frames.is_empty() {
            let sealed = match seal(&mut sealer, &batch.frames) {
                Ok(sealed) => sealed,
                Err(e) => {
                    tracing::error!(error = %e, "cannot seal a batch");
                    break;
                }
            };
            drop(batch.frames);
            let written = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                result = socket.write_all(&sealed) => result,
            };
            if let Err(e) = written {
                tracing::debug!(error = %e, "write failed");
                break;
            }
        }
        if batch.last {
            // Orderly end: everything is written; send FIN.
            let _ = socket.shutdown().await;
            break;
        }
    }
    outbox.close();
    stop.cancel();
}

/// Copies `frames` into one buffer of sealed records.
fn seal(sealer: &mut Sealer, frames: &VecDeque<Bytes>) -> Result<BytesMut, RecordError> {
    let total = frames.iter().map(Bytes::len).sum();
    let mut sealed = BytesMut::with_capacity(sealed_len(total));
    sealer.seal_stream(frames.iter().map(|frame| &frame[..]), &mut sealed)?;
    Ok(sealed)
}
