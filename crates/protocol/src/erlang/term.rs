//! Erlang's External Term Format: the subset Erlang distribution needs, decoded with the
//! same discipline as our own frames.
//!
//! A hostile BEAM peer controls every byte, so the decoder:
//!
//! - never trusts a claimed length or arity: a container of `n` elements is refused unless
//!   `n` more bytes are left in the input, and all memory a term will take (each
//!   element's slot, binaries, atoms) is charged against a budget ([`Limits::max_memory`],
//!   by default the frame limit) *before* it is allocated;
//! - never recurses: nesting is an explicit stack, at most [`Limits::max_depth`] deep;
//! - never interns atoms: an [`Atom`] is a bounded string (at most 255 characters, as in
//!   Erlang) owned by the term, freed with it.
//!
//! The encoder is iterative too, so echoing a received term (a `gen_call` tag) is as safe
//! as decoding it. Funs, compressed terms and atom-cache references are refused.

use std::fmt;

use crate::limits::MAX_FRAME_LEN;

/// The version byte in front of every encoded term.
pub const VERSION: u8 = 131;

/// Most characters in an atom, as in Erlang.
pub const MAX_ATOM_CHARS: usize = 255;

/// Deepest nesting the decoder accepts by default; real messages nest a handful deep.
pub const MAX_DEPTH: usize = 64;

/// Most 32-bit words in a reference (OTP 24+ uses up to 5).
pub const MAX_REFERENCE_WORDS: usize = 5;

mod tag {
    pub const NEW_FLOAT: u8 = 70;
    pub const BIT_BINARY: u8 = 77;
    pub const COMPRESSED: u8 = 80;
    pub const ATOM_CACHE_REF: u8 = 82;
    pub const NEW_PID: u8 = 88;
    pub const NEW_PORT: u8 = 89;
    pub const NEWER_REFERENCE: u8 = 90;
    pub const SMALL_INTEGER: u8 = 97;
    pub const INTEGER: u8 = 98;
    pub const FLOAT: u8 = 99;
    pub const ATOM: u8 = 100;
    pub const REFERENCE: u8 = 101;
    pub const PORT: u8 = 102;
    pub const PID: u8 = 103;
    pub const SMALL_TUPLE: u8 = 104;
    pub const LARGE_TUPLE: u8 = 105;
    pub const NIL: u8 = 106;
    pub const STRING: u8 = 107;
    pub const LIST: u8 = 108;
    pub const BINARY: u8 = 109;
    pub const SMALL_BIG: u8 = 110;
    pub const LARGE_BIG: u8 = 111;
    pub const NEW_FUN: u8 = 112;
    pub const EXPORT: u8 = 113;
    pub const NEW_REFERENCE: u8 = 114;
    pub const SMALL_ATOM: u8 = 115;
    pub const MAP: u8 = 116;
    pub const FUN: u8 = 117;
    pub const ATOM_UTF8: u8 = 118;
    pub const SMALL_ATOM_UTF8: u8 = 119;
    pub const V4_PORT: u8 = 120;
    pub const LOCAL: u8 = 121;
}

/// Why bytes are not a term we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermError {
    /// The input ends inside a term.
    #[error("the term ends early")]
    Truncated,
    /// The first byte is not the version byte 131.
    #[error("bad term version byte {0} (expected 131)")]
    BadVersion(u8),
    /// A tag this decoder does not know.
    #[error("unknown term tag {0}")]
    UnknownTag(u8),
    /// A known kind of term that we refuse (funs, compressed terms, atom-cache refs).
    #[error("{0} terms are not accepted")]
    Unsupported(&'static str),
    /// Nested deeper than the limit.
    #[error("the term nests deeper than {0} levels")]
    TooDeep(usize),
    /// Decoding would take more memory than the limit.
    #[error("the term needs more than {0} bytes of memory")]
    TooLarge(usize),
    /// An atom of more than 255 characters, or not valid text.
    #[error("invalid atom: {0}")]
    BadAtom(&'static str),
    /// Structurally wrong (a length that cannot be right, bad float text...).
    #[error("malformed term: {0}")]
    Malformed(&'static str),
}

/// An atom: a bounded string, owned by the term that holds it (never interned).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Atom(Box<str>);

impl Atom {
    /// An atom of `text`; at most [`MAX_ATOM_CHARS`] characters.
    pub fn new(text: &str) -> Result<Self, TermError> {
        if text.chars().count() > MAX_ATOM_CHARS {
            return Err(TermError::BadAtom("longer than 255 characters"));
        }
        Ok(Self(text.into()))
    }

    /// An atom of `text`, cut to its first [`MAX_ATOM_CHARS`] characters: for names
    /// known to be short, such as validated node names.
    pub fn lossy(text: &str) -> Self {
        match Self::new(text) {
            Ok(atom) => atom,
            Err(_) => Self(text.chars().take(MAX_ATOM_CHARS).collect::<String>().into()),
        }
    }

    /// The atom's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Escaped: atoms come from the network.
        write!(f, "'{}'", self.0.escape_debug())
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_debug())
    }
}

/// A process identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pid {
    /// The node the process lives on.
    pub node: Atom,
    /// Process number.
    pub id: u32,
    /// Serial number.
    pub serial: u32,
    /// The node's incarnation.
    pub creation: u32,
}

/// A port identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Port {
    /// The node the port lives on.
    pub node: Atom,
    /// Port number.
    pub id: u64,
    /// The node's incarnation.
    pub creation: u32,
}

/// A reference (also a process alias).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The node that made it.
    pub node: Atom,
    /// The node's incarnation.
    pub creation: u32,
    /// 1 to [`MAX_REFERENCE_WORDS`] words.
    pub ids: Vec<u32>,
}

/// An integer too big for `i64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BigInt {
    /// Below zero.
    pub negative: bool,
    /// Magnitude, least significant byte first.
    pub magnitude: Vec<u8>,
}

/// A list: its elements and its tail ([`Term::Nil`] for a proper list).
#[derive(Debug, Clone, PartialEq)]
pub struct List {
    /// The elements.
    pub items: Vec<Term>,
    /// What the last cons cell points at.
    pub tail: Term,
}

/// A bitstring whose last byte is partly used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitBinary {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Bits used in the last byte (1..=8).
    pub last_bits: u8,
}

/// An external function `fun Module:Function/Arity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The module.
    pub module: Atom,
    /// The function.
    pub function: Atom,
    /// The arity.
    pub arity: u8,
}

/// An Erlang term.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A bigger integer.
    BigInt(Box<BigInt>),
    /// A float.
    Float(f64),
    /// An atom.
    Atom(Atom),
    /// A binary (Elixir's strings are binaries).
    Binary(Vec<u8>),
    /// A bitstring that is not a whole number of bytes.
    BitBinary(Box<BitBinary>),
    /// A list of small integers as `STRING_EXT` carries it (an Erlang charlist).
    Charlist(Vec<u8>),
    /// The empty list.
    Nil,
    /// A non-empty list, proper or not.
    List(Box<List>),
    /// A tuple.
    Tuple(Vec<Term>),
    /// A map, as its key/value pairs in wire order.
    Map(Vec<(Term, Term)>),
    /// A process identifier.
    Pid(Box<Pid>),
    /// A port identifier.
    Port(Box<Port>),
    /// A reference.
    Ref(Box<Reference>),
    /// An external fun.
    Export(Box<Export>),
}

impl Term {
    /// The atom `text`. For names known to be short (our own constants and validated
    /// names); a longer text gives an atom of its first 255 characters.
    pub fn atom(text: &str) -> Self {
        Self::Atom(Atom::lossy(text))
    }

    /// A binary holding `text` (how Elixir represents strings).
    pub fn binary(text: impl AsRef<[u8]>) -> Self {
        Self::Binary(text.as_ref().to_vec())
    }

    /// A tuple of `items`.
    pub fn tuple(items: impl Into<Vec<Term>>) -> Self {
        Self::Tuple(items.into())
    }

    /// A proper list of `items` ([`Term::Nil`] when empty).
    pub fn list(items: Vec<Term>) -> Self {
        if items.is_empty() {
            Self::Nil
        } else {
            Self::List(Box::new(List {
                items,
                tail: Self::Nil,
            }))
        }
    }

    /// The atom's text, if this is an atom.
    pub fn as_atom(&self) -> Option<&str> {
        match self {
            Self::Atom(atom) => Some(atom.as_str()),
            _ => None,
        }
    }

    /// Whether this is the atom `name`.
    pub fn is_atom(&self, name: &str) -> bool {
        self.as_atom() == Some(name)
    }

    /// The elements, if this is a tuple.
    pub fn as_tuple(&self) -> Option<&[Term]> {
        match self {
            Self::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// The integer, if this is one that fits in 64 bits.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The pid, if this is one.
    pub fn as_pid(&self) -> Option<&Pid> {
        match self {
            Self::Pid(pid) => Some(pid),
            _ => None,
        }
    }

    /// This term as text, if it is a string in one of the shapes Erlang and Elixir
    /// use: a UTF-8 binary (Elixir), a charlist (Erlang's `"text"`: a `STRING_EXT` or a
    /// proper list of code points), or an atom. `None` for anything else.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Self::Binary(bytes) => String::from_utf8(bytes.clone()).ok(),
            Self::Charlist(bytes) => Some(bytes.iter().map(|&b| char::from(b)).collect()),
            Self::Nil => Some(String::new()),
            Self::List(list) if list.tail == Term::Nil => list
                .items
                .iter()
                .map(|item| {
                    item.as_int()
                        .and_then(|n| u32::try_from(n).ok())
                        .and_then(char::from_u32)
                })
                .collect(),
            Self::Atom(atom) => Some(atom.as_str().to_string()),
            _ => None,
        }
    }
}

/// Decoding limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of memory the decoded term may take (element slots, binaries, atoms).
    pub max_memory: usize,
    /// Deepest nesting of containers.
    pub max_depth: usize,
}

impl Default for Limits {
    /// The frame limit for memory, [`MAX_DEPTH`] for nesting.
    fn default() -> Self {
        Self {
            max_memory: MAX_FRAME_LEN,
            max_depth: MAX_DEPTH,
        }
    }
}

/// Decodes one term that starts with the version byte; returns it and the bytes used.
pub fn decode_versioned(input: &[u8]) -> Result<(Term, usize), TermError> {
    decode_versioned_with(input, Limits::default())
}

/// [`decode_versioned`] under `limits`.
pub fn decode_versioned_with(input: &[u8], limits: Limits) -> Result<(Term, usize), TermError> {
    match input.first() {
        None => Err(TermError::Truncated),
        Some(&VERSION) => {
            let (term, used) = decode_with(&input[1..], limits)?;
            Ok((term, used + 1))
        }
        Some(&other) => Err(TermError::BadVersion(other)),
    }
}

/// Decodes one term (no version byte) under the default [`Limits`]; returns it and the
/// bytes used.
pub fn decode(input: &[u8]) -> Result<(Term, usize), TermError> {
    decode_with(input, Limits::default())
}

/// A container being filled while its elements are decoded.
enum Open {
    Tuple {
        items: Vec<Term>,
        left: usize,
    },
    /// Elements first; once `left` is zero the next term is the tail.
    List {
        items: Vec<Term>,
        left: usize,
        tail: Option<Term>,
    },
    Map {
        pairs: Vec<(Term, Term)>,
        key: Option<Term>,
        left: usize,
    },
}

/// Decodes one term (no version byte) under `limits`; returns it and the bytes used.
pub fn decode_with(input: &[u8], limits: Limits) -> Result<(Term, usize), TermError> {
    let mut reader = Reader {
        input,
        pos: 0,
        budget: limits.max_memory,
        limit: limits.max_memory,
    };
    reader.charge(std::mem::size_of::<Term>())?;
    let mut stack: Vec<Open> = Vec::new();
    loop {
        let mut value = match reader.next_term_start(&mut stack, limits.max_depth)? {
            Some(value) => value,
            None => continue,
        };
        // Hand the value to the innermost open container, closing those it completes.
        loop {
            let complete = match stack.last_mut() {
                None => return Ok((value, reader.pos)),
                Some(Open::Tuple { items, left }) => {
                    items.push(value);
                    *left -= 1;
                    *left == 0
                }
                Some(Open::List { items, left, tail }) => {
                    if *left > 0 {
                        items.push(value);
                        *left -= 1;
                        false
                    } else {
                        *tail = Some(value);
                        true
                    }
                }
                Some(Open::Map { pairs, key, left }) => match key.take() {
                    None => {
                        *key = Some(value);
                        false
                    }
                    Some(k) => {
                        pairs.push((k, value));
                        *left -= 1;
                        *left == 0
                    }
                },
            };
            if !complete {
                break;
            }
            match stack.pop() {
                Some(open) => value = open.into_term(),
                None => return Err(TermError::Malformed("container stack")),
            }
        }
    }
}

impl Open {
    /// The finished container as a term.
    fn into_term(self) -> Term {
        match self {
            Open::Tuple { items, .. } => Term::Tuple(items),
            Open::List { items, tail, .. } => Term::List(Box::new(List {
                items,
                tail: tail.unwrap_or(Term::Nil),
            })),
            Open::Map { pairs, .. } => Term::Map(pairs),
        }
    }
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    budget: usize,
    limit: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    fn charge(&mut self, bytes: usize) -> Result<(), TermError> {
        self.budget = self
            .budget
            .checked_sub(bytes)
            .ok_or(TermError::TooLarge(self.limit))?;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TermError> {
        if n > self.remaining() {
            return Err(TermError::Truncated);
        }
        let bytes = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, TermError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, TermError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, TermError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, TermError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A length of `n` elements each at least `min_bytes` long: refused unless the input
    /// can hold them, then `n * slot` bytes are charged.
    fn count(&mut self, n: usize, min_bytes: usize, slot: usize) -> Result<usize, TermError> {
        if n.saturating_mul(min_bytes) > self.remaining() {
            return Err(TermError::Truncated);
        }
        self.charge(n.saturating_mul(slot))?;
        Ok(n)
    }

    /// `n` bytes copied out, after charging them.
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, TermError> {
        if n > self.remaining() {
            return Err(TermError::Truncated);
        }
        self.charge(n)?;
        Ok(self.take(n)?.to_vec())
    }

    /// Reads one tag. A scalar (or an empty container) is returned whole; a container
    /// with elements is pushed on `stack` and `None` returned.
    fn next_term_start(
        &mut self,
        stack: &mut Vec<Open>,
        max_depth: usize,
    ) -> Result<Option<Term>, TermError> {
        const SLOT: usize = std::mem::size_of::<Term>();
        let open = |stack: &mut Vec<Open>, container: Open| {
            if stack.len() >= max_depth {
                return Err(TermError::TooDeep(max_depth));
            }
            stack.push(container);
            Ok(None)
        };
        let term = match self.u8()? {
            tag::SMALL_INTEGER => Term::Int(i64::from(self.u8()?)),
            tag::INTEGER => Term::Int(i64::from(self.u32()? as i32)),
            tag::SMALL_BIG => {
                let n = usize::from(self.u8()?);
                self.big(n)?
            }
            tag::LARGE_BIG => {
                let n = self.u32()? as usize;
                self.big(n)?
            }
            tag::NEW_FLOAT => Term::Float(f64::from_bits(self.u64()?)),
            tag::FLOAT => {
                let text = self.take(31)?;
                let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                let value = std::str::from_utf8(&text[..end])
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .ok_or(TermError::Malformed("float text"))?;
                Term::Float(value)
            }
            tag @ (tag::ATOM | tag::SMALL_ATOM | tag::ATOM_UTF8 | tag::SMALL_ATOM_UTF8) => {
                Term::Atom(self.atom_body(tag)?)
            }
            tag::SMALL_TUPLE => {
                let n = usize::from(self.u8()?);
                return self.tuple(n, SLOT, stack, open);
            }
            tag::LARGE_TUPLE => {
                let n = self.u32()? as usize;
                return self.tuple(n, SLOT, stack, open);
            }
            tag::NIL => Term::Nil,
            tag::STRING => {
                let n = usize::from(self.u16()?);
                Term::Charlist(self.bytes(n)?)
            }
            tag::LIST => {
                let n = self.u32()? as usize;
                // n elements and a tail.
                let n = self.count(n, 1, SLOT)?;
                if n == 0 {
                    // Just the tail; decoded as the value itself.
                    return Ok(None);
                }
                self.charge(std::mem::size_of::<List>())?;
                return open(
                    stack,
                    Open::List {
                        items: Vec::with_capacity(n),
                        left: n,
                        tail: None,
                    },
                );
            }
            tag::BINARY => {
                let n = self.u32()? as usize;
                Term::Binary(self.bytes(n)?)
            }
            tag::BIT_BINARY => {
                let n = self.u32()? as usize;
                let last_bits = self.u8()?;
                if !(1..=8).contains(&last_bits) || n == 0 {
                    return Err(TermError::Malformed("bit binary"));
                }
                self.charge(std::mem::size_of::<BitBinary>())?;
                let bytes = self.bytes(n)?;
                Term::BitBinary(Box::new(BitBinary { bytes, last_bits }))
            }
            tag::MAP => {
                let n = self.u32()? as usize;
                let n = self.count(n, 2, 2 * SLOT)?;
                if n == 0 {
                    return Ok(Some(Term::Map(Vec::new())));
                }
                return open(
                    stack,
                    Open::Map {
                        pairs: Vec::with_capacity(n),
                        key: None,
                        left: n,
                    },
                );
            }
            tag @ (tag::PID | tag::NEW_PID) => {
                self.charge(std::mem::size_of::<Pid>())?;
                Term::Pid(Box::new(self.pid_body(tag)?))
            }
            tag @ (tag::PORT | tag::NEW_PORT | tag::V4_PORT) => {
                self.charge(std::mem::size_of::<Port>())?;
                let node = self.atom()?;
                let (id, creation) = match tag {
                    tag::PORT => (u64::from(self.u32()?), u32::from(self.u8()?)),
                    tag::NEW_PORT => (u64::from(self.u32()?), self.u32()?),
                    _ => (self.u64()?, self.u32()?),
                };
                Term::Port(Box::new(Port { node, id, creation }))
            }
            tag::REFERENCE => {
                self.charge(std::mem::size_of::<Reference>() + 4)?;
                let node = self.atom()?;
                let id = self.u32()?;
                let creation = u32::from(self.u8()?);
                Term::Ref(Box::new(Reference {
                    node,
                    creation,
                    ids: vec![id],
                }))
            }
            tag @ (tag::NEW_REFERENCE | tag::NEWER_REFERENCE) => {
                let n = usize::from(self.u16()?);
                if n == 0 || n > MAX_REFERENCE_WORDS {
                    return Err(TermError::Malformed("reference length"));
                }
                self.charge(std::mem::size_of::<Reference>() + 4 * n)?;
                let node = self.atom()?;
                let creation = if tag == tag::NEW_REFERENCE {
                    u32::from(self.u8()?)
                } else {
                    self.u32()?
                };
                let ids = (0..n).map(|_| self.u32()).collect::<Result<_, _>>()?;
                Term::Ref(Box::new(Reference {
                    node,
                    creation,
                    ids,
                }))
            }
            tag::EXPORT => {
                self.charge(std::mem::size_of::<Export>())?;
                let module = self.atom()?;
                let function = self.atom()?;
                if self.u8()? != tag::SMALL_INTEGER {
                    return Err(TermError::Malformed("export arity"));
                }
                let arity = self.u8()?;
                Term::Export(Box::new(Export {
                    module,
                    function,
                    arity,
                }))
            }
            tag::NEW_FUN | tag::FUN => return Err(TermError::Unsupported("fun")),
            tag::COMPRESSED => return Err(TermError::Unsupported("compressed")),
            tag::ATOM_CACHE_REF => return Err(TermError::Unsupported("atom cache reference")),
            tag::LOCAL => return Err(TermError::Unsupported("local")),
            other => return Err(TermError::UnknownTag(other)),
        };
        Ok(Some(term))
    }

    fn tuple(
        &mut self,
        n: usize,
        slot: usize,
        stack: &mut Vec<Open>,
        open: impl Fn(&mut Vec<Open>, Open) -> Result<Option<Term>, TermError>,
    ) -> Result<Option<Term>, TermError> {
        let n = self.count(n, 1, slot)?;
        if n == 0 {
            return Ok(Some(Term::Tuple(Vec::new())));
        }
        open(
            stack,
            Open::Tuple {
                items: Vec::with_capacity(n),
                left: n,
            },
        )
    }

    fn big(&mut self, n: usize) -> Result<Term, TermError> {
        let negative = match self.u8()? {
            0 => false,
            1 => true,
            _ => return Err(TermError::Malformed("integer sign")),
        };
        let digits = self.take(n)?;
        if n <= 8 {
            let mut value: u64 = 0;
            for &d in digits.iter().rev() {
                value = (value << 8) | u64::from(d);
            }
            let fits = if negative {
                value <= i64::MAX as u64 + 1
            } else {
                value <= i64::MAX as u64
            };
            if fits {
                let value = if negative {
                    (value as i64).wrapping_neg()
                } else {
                    value as i64
                };
                return Ok(Term::Int(value));
            }
        }
        self.charge(std::mem::size_of::<BigInt>() + n)?;
        Ok(Term::BigInt(Box::new(BigInt {
            negative,
            magnitude: digits.to_vec(),
        })))
    }

    /// An atom, tag included (as pids, ports and references carry their node).
    fn atom(&mut self) -> Result<Atom, TermError> {
        match self.u8()? {
            tag @ (tag::ATOM | tag::SMALL_ATOM | tag::ATOM_UTF8 | tag::SMALL_ATOM_UTF8) => {
                self.atom_body(tag)
            }
            tag::ATOM_CACHE_REF => Err(TermError::Unsupported("atom cache reference")),
            _ => Err(TermError::Malformed("expected an atom")),
        }
    }

    fn atom_body(&mut self, tag: u8) -> Result<Atom, TermError> {
        let n = match tag {
            tag::SMALL_ATOM | tag::SMALL_ATOM_UTF8 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        // At most 255 characters of at most 4 bytes (1 in Latin-1): refuse longer ones
        // before copying anything.
        let max_bytes = match tag {
            tag::ATOM | tag::SMALL_ATOM => MAX_ATOM_CHARS,
            _ => 4 * MAX_ATOM_CHARS,
        };
        if n > max_bytes {
            return Err(TermError::BadAtom("longer than 255 characters"));
        }
        let bytes = self.take(n)?;
        self.charge(2 * n)?;
        let text: String = match tag {
            // Latin-1: every byte is the code point of the same value.
            tag::ATOM | tag::SMALL_ATOM => bytes.iter().map(|&b| char::from(b)).collect(),
            _ => std::str::from_utf8(bytes)
                .map_err(|_| TermError::BadAtom("not valid UTF-8"))?
                .to_string(),
        };
        Atom::new(&text)
    }

    fn pid_body(&mut self, tag: u8) -> Result<Pid, TermError> {
        let node = self.atom()?;
        let id = self.u32()?;
        let serial = self.u32()?;
        let creation = if tag == tag::PID {
            u32::from(self.u8()?)
        } else {
            self.u32()?
        };
        Ok(Pid {
            node,
            id,
            serial,
            creation,
        })
    }
}

/// Appends the version byte and `term`.
pub fn encode_versioned(term: &Term, out: &mut Vec<u8>) {
    out.push(VERSION);
    encode(term, out);
}

/// Appends `term` (no version byte). Iterative, like the decoder.
pub fn encode(term: &Term, out: &mut Vec<u8>) {
    let mut stack: Vec<&Term> = vec![term];
    while let Some(term) = stack.pop() {
        match term {
            Term::Int(n) => encode_int(*n, out),
            Term::BigInt(big) => encode_big(big.negative, &big.magnitude, out),
            Term::Float(x) => {
                out.push(tag::NEW_FLOAT);
                out.extend_from_slice(&x.to_bits().to_be_bytes());
            }
            Term::Atom(atom) => encode_atom(atom, out),
            Term::Binary(bytes) => {
                out.push(tag::BINARY);
                out.extend_from_slice(&len_u32(bytes.len()).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            Term::BitBinary(bits) => {
                out.push(tag::BIT_BINARY);
                out.extend_from_slice(&len_u32(bits.bytes.len()).to_be_bytes());
                out.push(bits.last_bits);
                out.extend_from_slice(&bits.bytes);
            }
            Term::Charlist(bytes) => match u16::try_from(bytes.len()) {
                Ok(n) => {
                    out.push(tag::STRING);
                    out.extend_from_slice(&n.to_be_bytes());
                    out.extend_from_slice(bytes);
                }
                Err(_) => {
                    out.push(tag::LIST);
                    out.extend_from_slice(&len_u32(bytes.len()).to_be_bytes());
                    for &b in bytes.iter() {
                        out.extend_from_slice(&[tag::SMALL_INTEGER, b]);
                    }
                    out.push(tag::NIL);
                }
            },
            Term::Nil => out.push(tag::NIL),
            Term::List(list) => {
                out.push(tag::LIST);
                out.extend_from_slice(&len_u32(list.items.len()).to_be_bytes());
                stack.push(&list.tail);
                stack.extend(list.items.iter().rev());
            }
            Term::Tuple(items) => {
                match u8::try_from(items.len()) {
                    Ok(n) => out.extend_from_slice(&[tag::SMALL_TUPLE, n]),
                    Err(_) => {
                        out.push(tag::LARGE_TUPLE);
                        out.extend_from_slice(&len_u32(items.len()).to_be_bytes());
                    }
                }
                stack.extend(items.iter().rev());
            }
            Term::Map(pairs) => {
                out.push(tag::MAP);
                out.extend_from_slice(&len_u32(pairs.len()).to_be_bytes());
                for (key, value) in pairs.iter().rev() {
                    stack.push(value);
                    stack.push(key);
                }
            }
            Term::Pid(pid) => {
                out.push(tag::NEW_PID);
                encode_atom(&pid.node, out);
                out.extend_from_slice(&pid.id.to_be_bytes());
                out.extend_from_slice(&pid.serial.to_be_bytes());
                out.extend_from_slice(&pid.creation.to_be_bytes());
            }
            Term::Port(port) => match u32::try_from(port.id) {
                Ok(id) => {
                    out.push(tag::NEW_PORT);
                    encode_atom(&port.node, out);
                    out.extend_from_slice(&id.to_be_bytes());
                    out.extend_from_slice(&port.creation.to_be_bytes());
                }
                Err(_) => {
                    out.push(tag::V4_PORT);
                    encode_atom(&port.node, out);
                    out.extend_from_slice(&port.id.to_be_bytes());
                    out.extend_from_slice(&port.creation.to_be_bytes());
                }
            },
            Term::Ref(reference) => {
                out.push(tag::NEWER_REFERENCE);
                let n = reference.ids.len().min(MAX_REFERENCE_WORDS);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                encode_atom(&reference.node, out);
                out.extend_from_slice(&reference.creation.to_be_bytes());
                for id in &reference.ids[..n] {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
            Term::Export(export) => {
                out.push(tag::EXPORT);
                encode_atom(&export.module, out);
                encode_atom(&export.function, out);
                out.extend_from_slice(&[tag::SMALL_INTEGER, export.arity]);
            }
        }
    }
}

/// Lengths we encode come from our own terms, which are far below 4 GiB.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn encode_int(n: i64, out: &mut Vec<u8>) {
    if let Ok(small) = u8::try_from(n) {
        out.extend_from_slice(&[tag::SMALL_INTEGER, small]);
    } else if let Ok(int) = i32::try_from(n) {
        out.push(tag::INTEGER);
        out.extend_from_slice(&int.to_be_bytes());
    } else {
        let magnitude = n.unsigned_abs().to_le_bytes();
        let used = 8 - magnitude.iter().rev().take_while(|&&b| b == 0).count();
        encode_big(n < 0, &magnitude[..used], out);
    }
}

fn encode_big(negative: bool, magnitude: &[u8], out: &mut Vec<u8>) {
    match u8::try_from(magnitude.len()) {
        Ok(n) => out.extend_from_slice(&[tag::SMALL_BIG, n]),
        Err(_) => {
            out.push(tag::LARGE_BIG);
            out.extend_from_slice(&len_u32(magnitude.len()).to_be_bytes());
        }
    }
    out.push(u8::from(negative));
    out.extend_from_slice(magnitude);
}

fn encode_atom(atom: &Atom, out: &mut Vec<u8>) {
    let bytes = atom.as_str().as_bytes();
    match u8::try_from(bytes.len()) {
        Ok(n) => out.extend_from_slice(&[tag::SMALL_ATOM_UTF8, n]),
        Err(_) => {
            // At most 255 characters of at most 4 bytes: fits in u16.
            out.push(tag::ATOM_UTF8);
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(bytes);
}

/// Encodes `term` with its version byte into a fresh buffer.
pub fn to_vec(term: &Term) -> Vec<u8> {
    let mut out = Vec::new();
    encode_versioned(term, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(term: &Term) {
        let bytes = to_vec(term);
        let (back, used) = decode_versioned(&bytes).expect("decodes");
        assert_eq!(used, bytes.len());
        assert_eq!(&back, term);
    }

    fn pid() -> Term {
        Term::Pid(Box::new(Pid {
            node: Atom::new("client@localhost").unwrap(),
            id: 93,
            serial: 0,
            creation: 1_700_000_000,
        }))
    }

    #[test]
    fn terms_round_trip() {
        let reference = Term::Ref(Box::new(Reference {
            node: Atom::new("client@localhost").unwrap(),
            creation: 7,
            ids: vec![1, 2, 3],
        }));
        for term in [
            Term::Int(0),
            Term::Int(255),
            Term::Int(256),
            Term::Int(-1),
            Term::Int(i64::MAX),
            Term::Int(i64::MIN),
            Term::Float(1.5),
            Term::atom("ok"),
            Term::atom("héllo"),
            Term::binary("Zoë says hi"),
            Term::Nil,
            Term::Tuple(Vec::new()),
            Term::Map(Vec::new()),
            Term::list(vec![Term::Int(1), Term::atom("a")]),
            // OTP 24+'s gen_call tag: an improper list [alias | Ref].
            Term::List(Box::new(List {
                items: vec![Term::atom("alias")],
                tail: reference.clone(),
            })),
            Term::tuple(vec![
                Term::atom("$gen_call"),
                Term::tuple(vec![pid(), reference]),
                Term::tuple(vec![Term::atom("connect"), Term::binary("john")]),
            ]),
            Term::Map(vec![(Term::atom("k"), Term::Int(1))]),
            Term::Charlist(b"abc".to_vec()),
            Term::Tuple((0..300).map(Term::Int).collect()),
        ] {
            round_trip(&term);
        }
    }

    #[test]
    fn what_erlang_encodes_decodes() {
        // term_to_binary({connect, <<"john">>}) in OTP 25.
        let bytes = [
            131, 104, 2, 119, 7, b'c', b'o', b'n', b'n', b'e', b'c', b't', 109, 0, 0, 0, 4, b'j',
            b'o', b'h', b'n',
        ];
        let (term, _) = decode_versioned(&bytes).unwrap();
        assert_eq!(
            term,
            Term::tuple(vec![Term::atom("connect"), Term::binary("john")])
        );
        // term_to_binary("hi") and a latin-1 atom.
        assert_eq!(
            decode_versioned(&[131, 107, 0, 2, b'h', b'i']).unwrap().0,
            Term::Charlist(b"hi".to_vec())
        );
        assert_eq!(
            decode_versioned(&[131, 100, 0, 1, 0xe9]).unwrap().0,
            Term::atom("é")
        );
        // A bignum that fits and one that does not.
        assert_eq!(
            decode(&[110, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]).unwrap().0,
            Term::BigInt(Box::new(BigInt {
                negative: false,
                magnitude: vec![0, 0, 0, 0, 0, 0, 0, 0x80]
            }))
        );
        assert_eq!(
            decode(&[110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0x80]).unwrap().0,
            Term::Int(i64::MIN)
        );
    }

    #[test]
    fn text_comes_from_binaries_charlists_and_atoms() {
        assert_eq!(Term::binary("hé").as_text().as_deref(), Some("hé"));
        assert_eq!(
            Term::Charlist(b"hi".to_vec()).as_text().as_deref(),
            Some("hi")
        );
        assert_eq!(
            Term::list(vec![Term::Int(0x263a)]).as_text().as_deref(),
            Some("☺")
        );
        assert_eq!(Term::atom("x").as_text().as_deref(), Some("x"));
        assert_eq!(Term::Binary(vec![0xff]).as_text(), None);
        assert_eq!(Term::Int(1).as_text(), None);
    }

    #[test]
    fn claimed_lengths_are_not_trusted() {
        // A tuple, a list, a map and a binary claiming 4 G elements in a few bytes.
        for bytes in [
            &[105, 255, 255, 255, 255, 97, 1][..],
            &[108, 255, 255, 255, 255, 97, 1],
            &[116, 255, 255, 255, 255, 97, 1],
            &[109, 255, 255, 255, 255, 1],
            &[107, 255, 255, 1],
        ] {
            assert_eq!(decode(bytes), Err(TermError::Truncated), "{bytes:?}");
        }
    }

    #[test]
    fn memory_is_bounded() {
        // 60,000 one-byte-each small integers in a list would take ~2 MB as terms.
        let n = 30_000u32;
        let mut bytes = vec![108];
        bytes.extend_from_slice(&n.to_be_bytes());
        for _ in 0..n {
            bytes.extend_from_slice(&[97, 1]);
        }
        bytes.push(106);
        assert!(matches!(decode(&bytes), Err(TermError::TooLarge(_))));
        // A smaller budget applies too.
        let limits = Limits {
            max_memory: 100,
            max_depth: MAX_DEPTH,
        };
        assert!(matches!(
            decode_with(&[109, 0, 0, 0, 200], limits),
            Err(TermError::Truncated)
        ));
        let mut big_binary = vec![109, 0, 0, 0, 200];
        big_binary.extend_from_slice(&[0; 200]);
        assert!(matches!(
            decode_with(&big_binary, limits),
            Err(TermError::TooLarge(100))
        ));
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        // 100,000 nested one-element tuples: refused at the depth limit, no stack growth.
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[104, 1]);
        }
        bytes.push(106);
        assert_eq!(decode(&bytes), Err(TermError::TooDeep(MAX_DEPTH)));
        // Just under the limit is fine.
        let mut ok = Vec::new();
        for _ in 0..MAX_DEPTH {
            ok.extend_from_slice(&[104, 1]);
        }
        ok.push(106);
        let (term, _) = decode(&ok).unwrap();
        let mut again = Vec::new();
        encode(&term, &mut again);
        assert_eq!(again, ok);
    }

    #[test]
    fn atoms_are_bounded() {
        let mut bytes = vec![118, 1, 0];
        bytes.extend(std::iter::repeat_n(b'a', 256));
        assert!(matches!(decode(&bytes), Err(TermError::BadAtom(_))));
        assert!(matches!(
            decode(&[119, 2, 0xff, 0xfe]),
            Err(TermError::BadAtom(_))
        ));
        assert!(Atom::new(&"é".repeat(255)).is_ok());
        assert_eq!(Term::atom(&"a".repeat(300)).as_atom().unwrap().len(), 255);
    }

    #[test]
    fn refused_kinds_say_so() {
        assert_eq!(decode(&[112]), Err(TermError::Unsupported("fun")));
        assert_eq!(decode(&[80]), Err(TermError::Unsupported("compressed")));
        assert_eq!(decode(&[200]), Err(TermError::UnknownTag(200)));
        assert_eq!(
            decode_versioned(&[130, 106]),
            Err(TermError::BadVersion(130))
        );
        assert_eq!(decode(&[]), Err(TermError::Truncated));
        assert!(matches!(
            decode(&[90, 0, 9, 119, 1, b'a', 0, 0, 0, 0]),
            Err(TermError::Malformed(_))
        ));
    }
}
