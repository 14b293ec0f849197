//! Frames out of a byte stream that arrives in arbitrary chunks.
//!
//! Whole frames are handed on where they lie, in the chunk (the read buffer); only a frame
//! cut by the chunk's end is copied, into a small buffer of its own that is completed from
//! the next chunk. An idle connection keeps no buffer.

use crate::wire::{self, HEADER_LEN, WireError};

/// A partial-frame buffer larger than this is released once its frame is handled.
const KEEP: usize = 4096;

/// The reassembly state of one stream.
#[derive(Debug, Default)]
pub struct Frames {
    partial: Vec<u8>,
}

impl Frames {
    /// Feeds the next `chunk`; calls `each` with the payload of every frame it completes,
    /// in order. An error from `each` or a bad length prefix stops the feed.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        if !self.partial.is_empty() {
            if self.partial.len() < HEADER_LEN {
                let take = (HEADER_LEN - self.partial.len()).min(chunk.len());
                self.partial.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
            }
            let Some(header) = self.partial.first_chunk::<HEADER_LEN>() else {
                return Ok(());
            };
            let total = wire::frame_len(*header)?;
            let take = (total - self.partial.len()).min(chunk.len());
            self.partial.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.partial.len() < total {
                return Ok(());
            }
            each(&self.partial[HEADER_LEN..])?;
            self.partial.clear();
            if self.partial.capacity() > KEEP {
                self.partial = Vec::new();
            }
        }
        while let Some((payload, used)) = wire::split_frame(chunk)? {
            each(payload)?;
            chunk = &chunk[used..];
        }
        self.partial.extend_from_slice(chunk);
        Ok(())
    }

    /// The bytes of an incomplete frame, taken out.
    pub fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cut_anywhere_come_out_whole_and_in_order() {
        let mut stream = Vec::new();
        let texts: Vec<Vec<u8>> = (0..40)
            .map(|i| vec![b'a' + (i % 26) as u8; i * 7])
            .collect();
        for text in &texts {
            wire::say(&mut stream, wire::Layout::CURRENT, text);
        }
        for cut in [1, 2, 3, 5, 64, 1000, stream.len()] {
            let mut frames = Frames::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(cut) {
                frames
                    .feed(chunk, |payload| {
                        seen.push(payload.to_vec());
                        Ok(())
                    })
                    .unwrap();
            }
            assert_eq!(seen.len(), texts.len(), "cut {cut}");
            for (payload, text) in seen.iter().zip(&texts) {
                assert_eq!(
                    wire::parse_client(payload).unwrap(),
                    wire::ClientFrame::Say(text)
                );
            }
            assert!(frames.take_partial().is_empty());
        }
    }

    #[test]
    fn an_oversized_prefix_is_an_error() {
        let mut frames = Frames::default();
        assert!(frames.feed(&[0xff, 0xff], |_| Ok(())).is_ok());
        assert_eq!(
            frames.feed(&[0xff, 0xff, 0], |_| Ok(())),
            Err(WireError::TooLong(0xffff_ffff))
        );
    }
}
