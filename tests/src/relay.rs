//! [`TamperingRelay`]: a TCP relay that passes the handshake through untouched and then
//! tampers with one record of the session, as an attacker on the path would.
//!
//! It parses each direction as the protocol lays it out: upstream, the 4-byte preamble,
//! then length-prefixed units (the hello, the confirmation, then records); downstream,
//! length-prefixed units (the challenge, then records, the acceptance first). Record
//! numbers count from 0 in each direction.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

/// What to do to the session.
#[derive(Debug, Clone)]
pub enum Tamper {
    /// Flip one bit of this upstream record.
    FlipUp(usize),
    /// Leave out this upstream record.
    DropUp(usize),
    /// Send upstream record `.0` again just before record `.1`.
    ReplayUp(usize, usize),
    /// Insert these bytes (a made-up record) just before this upstream record.
    InjectUp(usize, Vec<u8>),
    /// Flip one bit of this downstream record.
    FlipDown(usize),
}

/// A relay on an ephemeral port of 127.0.0.1 to 127.0.0.1:`target`, tampering with the
/// first connection only.
pub struct TamperingRelay {
    port: u16,
}

impl TamperingRelay {
    /// Starts relaying to `target`.
    pub fn start(target: u16, tamper: Tamper) -> TamperingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let up = tamper.clone();
            thread::spawn(move || pump(client, server, true, up));
            pump(s2, c2, false, tamper);
        });
        TamperingRelay { port }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Reads exactly `n` bytes; `None` at end of stream.
fn read_n(from: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    from.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// One length-prefixed unit, prefix included.
fn read_unit(from: &mut TcpStream) -> Option<Vec<u8>> {
    let head = read_n(from, 4)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    // Bounded: records and handshake frames are far smaller.
    if len > 1 << 20 {
        return None;
    }
    let mut unit = head;
    unit.extend(read_n(from, len)?);
    Some(unit)
}

fn pump(mut from: TcpStream, mut to: TcpStream, upstream: bool, tamper: Tamper) {
    if upstream {
        let Some(preamble) = read_n(&mut from, 4) else {
            return;
        };
        if to.write_all(&preamble).is_err() {
            return;
        }
    }
    // Handshake units before the first record: hello and confirmation upstream, the
    // challenge downstream.
    let handshake_units = if upstream { 2 } else { 1 };
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut index = 0usize;
    while let Some(mut unit) = read_unit(&mut from) {
        let record = index.checked_sub(handshake_units);
        index += 1;
        let mut out = Vec::new();
        match (&tamper, record) {
            (Tamper::FlipUp(n), Some(r)) if upstream && r == *n => flip(&mut unit),
            (Tamper::FlipDown(n), Some(r)) if !upstream && r == *n => flip(&mut unit),
            (Tamper::DropUp(n), Some(r)) if upstream && r == *n => {
                sent.push(unit);
                continue;
            }
            (Tamper::ReplayUp(again, before), Some(r)) if upstream && r == *before => {
                if let Some(old) = sent.get(handshake_units + again) {
                    out.extend_from_slice(old);
                }
            }
            (Tamper::InjectUp(before, bytes), Some(r)) if upstream && r == *before => {
                out.extend_from_slice(bytes);
            }
            _ => {}
        }
        out.extend_from_slice(&unit);
        sent.push(unit);
        if to.write_all(&out).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Flips the lowest bit of the last byte of a unit (in a record, the tag; in a clear
/// frame, the end of the text: the kind of change a forger would make).
fn flip(unit: &mut [u8]) {
    if let Some(last) = unit.last_mut() {
        *last ^= 1;
    }
}
