//! Where this client stands in the room's history: the session to resume and the last
//! event it printed, and what each arriving event is.
//!
//! Every room event carries the room's sequence number, and every room has an epoch (it
//! changes when the server restarts). A join answers with the session's ticket, the epoch
//! and the number at the join; events numbered up to it that follow are the *backlog*
//! (earlier than the join), later ones are live. A resume answers with the number at the
//! resume; events after the last one printed and up to it are *missed*, later ones live.
//! Whatever was printed already is a *repeat* and is not printed again, so nothing shows
//! twice however many times the connection is resumed.

use protocol::{ClientMessage, SessionTicket};

/// What an arriving event is to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Happening now.
    Live,
    /// From before the join (the backlog).
    Earlier,
    /// Happened while the connection was down, replayed after a resume.
    Missed,
    /// Already printed: show nothing.
    Repeat,
}

/// The session's place in the room's history.
#[derive(Debug, Default)]
pub(crate) struct Position {
    /// The session a reconnect resumes, and the epoch it belongs to.
    session: Option<(SessionTicket, u64)>,
    /// The epoch `last_seq` counts in.
    epoch: Option<u64>,
    /// The newest event printed (or the number at the join).
    last_seq: u64,
    /// The room's number at the last join: events up to it are the backlog.
    joined_at: u64,
    /// Backlog events up to this number are printed already.
    earlier_printed: u64,
    /// The room's number at the last resume: events up to it were missed.
    missed_until: u64,
}

impl Position {
    /// A join answered with `ticket`, in `epoch`, at room number `seq`.
    pub(crate) fn joined(&mut self, ticket: SessionTicket, epoch: u64, seq: u64) {
        // Within the same epoch, backlog events printed before (say, before a /leave)
        // are not printed again.
        self.earlier_printed = if self.epoch == Some(epoch) {
            self.last_seq.min(seq)
        } else {
            0
        };
        self.session = Some((ticket, epoch));
        self.epoch = Some(epoch);
        self.joined_at = seq;
        self.last_seq = seq;
        self.missed_until = 0;
    }

    /// A resume answered at room number `seq`.
    pub(crate) fn resumed(&mut self, seq: u64) {
        self.missed_until = seq;
    }

    /// The server no longer knows the session (or restarted): the next connection joins
    /// afresh.
    pub(crate) fn forget_session(&mut self) {
        self.session = None;
    }

    /// The message that resumes the session, if there is one to resume.
    pub(crate) fn resume_message(&self) -> Option<ClientMessage> {
        let (ticket, epoch) = self.session?;
        Some(ClientMessage::Resume {
            ticket,
            epoch,
            last_seq: self.last_seq,
        })
    }

    /// What the event numbered `seq` is; counts it as printed unless a repeat.
    pub(crate) fn arrive(&mut self, seq: u64) -> Arrival {
        if seq > self.last_seq {
            self.last_seq = seq;
            return if seq <= self.missed_until {
                Arrival::Missed
            } else {
                Arrival::Live
            };
        }
        if seq <= self.joined_at && seq > self.earlier_printed {
            self.earlier_printed = seq;
            Arrival::Earlier
        } else {
            Arrival::Repeat
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKET: SessionTicket = SessionTicket {
        id: 4,
        secret: [9; 16],
    };

    fn arrivals(position: &mut Position, seqs: &[u64]) -> Vec<Arrival> {
        seqs.iter().map(|&seq| position.arrive(seq)).collect()
    }

    #[test]
    fn backlog_then_live() {
        use Arrival::*;
        let mut p = Position::default();
        assert_eq!(p.resume_message(), None);
        p.joined(TICKET, 7, 10);
        assert_eq!(
            arrivals(&mut p, &[8, 9, 10, 11, 12, 12, 9]),
            [Earlier, Earlier, Earlier, Live, Live, Repeat, Repeat]
        );
        assert_eq!(
            p.resume_message(),
            Some(ClientMessage::Resume {
                ticket: TICKET,
                epoch: 7,
                last_seq: 12
            })
        );
    }

    #[test]
    fn missed_events_once_across_two_resumes() {
        use Arrival::*;
        let mut p = Position::default();
        p.joined(TICKET, 7, 0);
        assert_eq!(arrivals(&mut p, &[1, 2]), [Live, Live]);
        p.resumed(5);
        assert_eq!(
            arrivals(&mut p, &[3, 4, 5, 6]),
            [Missed, Missed, Missed, Live]
        );
        // Resumed again at once: nothing new was missed, nothing is replayed.
        p.resumed(6);
        assert_eq!(arrivals(&mut p, &[5, 6, 7]), [Repeat, Repeat, Live]);
    }

    #[test]
    fn a_rejoin_in_the_same_epoch_skips_what_was_printed() {
        use Arrival::*;
        let mut p = Position::default();
        p.joined(TICKET, 7, 0);
        assert_eq!(arrivals(&mut p, &[1, 2, 3]), [Live, Live, Live]);
        // Left at 3, joined again at 6 with a backlog of 2..=6.
        p.joined(TICKET, 7, 6);
        assert_eq!(
            arrivals(&mut p, &[2, 3, 4, 6, 7]),
            [Repeat, Repeat, Earlier, Earlier, Live]
        );
    }

    #[test]
    fn a_new_epoch_starts_over() {
        use Arrival::*;
        let mut p = Position::default();
        p.joined(TICKET, 7, 0);
        assert_eq!(arrivals(&mut p, &[1, 2, 3]), [Live, Live, Live]);
        p.forget_session();
        assert_eq!(p.resume_message(), None);
        p.joined(TICKET, 8, 2);
        assert_eq!(arrivals(&mut p, &[1, 2, 3]), [Earlier, Earlier, Live]);
    }
}
