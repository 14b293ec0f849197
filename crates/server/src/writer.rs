//! A connection's writer task: drains its [`Outbox`] onto the socket.
//!
//! It takes every frame queued since its last write and writes them with vectored
//! writes, so a busy connection costs few syscalls, no frame is copied, and Nagle's
//! algorithm is not needed (`TCP_NODELAY` is set). It keeps no buffer between writes.
//! It stops at once when the connection's stop token fires, even in the middle of a
//! write to a peer that does not read.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;

/// Most frames handed to one `writev` (well under every system's `IOV_MAX`).
const MAX_SLICES: usize = 64;

/// Runs until the outbox finishes, the socket fails, or `stop` fires.
pub async fn run(mut socket: OwnedWriteHalf, outbox: Arc<Outbox>, stop: CancellationToken) {
    loop {
        let batch = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            batch = outbox.next_batch() => batch,
        };
        if !batch.frames.is_empty() {
            let written = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                result = write_frames(&mut socket, &batch.frames) => result,
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

/// Writes every frame, in order, with as few syscalls as the socket allows.
async fn write_frames(socket: &mut OwnedWriteHalf, frames: &VecDeque<Bytes>) -> io::Result<()> {
    // Position of the first unwritten byte: frame index and offset into it.
    let (mut index, mut offset) = (0, 0);
    while index < frames.len() {
        let written = {
            let slices: Vec<IoSlice<'_>> = frames
                .iter()
                .skip(index)
                .take(MAX_SLICES)
                .enumerate()
                .map(|(i, frame)| IoSlice::new(if i == 0 { &frame[offset..] } else { frame }))
                .collect();
            socket.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 {
            let remaining = frames[index].len() - offset;
            if left >= remaining {
                left -= remaining;
                index += 1;
                offset = 0;
            } else {
                offset += left;
                left = 0;
            }
        }
    }
    Ok(())
}
