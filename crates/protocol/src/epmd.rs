//! Erlang's port-mapper (epmd) wire protocol, as pure encode/decode functions.
//!
//! Every host runs one port mapper on TCP 4369. A node that starts listening tells the
//! mapper its name and port (`ALIVE2_REQ`) and keeps that connection open for as long as
//! it lives; anyone who wants to reach `alive@host` asks the mapper on `host` for the
//! port of `alive` (`PORT_PLEASE2_REQ`); `epmd -names` asks for the whole list
//! (`NAMES_REQ`). We speak the same bytes as Erlang's `epmd`, so Erlang's tools and nodes
//! work with our mapper and our nodes work with theirs.
//!
//! Requests travel as a 2-byte big-endian length followed by a body whose first byte is
//! the request code. Responses carry no length: their layout follows from their first
//! byte, and the mapper closes the connection after each one (except after a successful
//! registration, whose connection *is* the registration).
//!
//! This module does no I/O. Encoders return complete byte vectors, ready to write;
//! parsers take byte slices and return typed errors for anything truncated or malformed,
//! never trusting a declared length further than the bytes actually present.

use thiserror::Error;

/// Request code of `ALIVE2_REQ`: a node registers its name and port.
pub const ALIVE2_REQ: u8 = 120;
/// Response code of `ALIVE2_RESP`: registration result with a 16-bit creation.
pub const ALIVE2_RESP: u8 = 121;
/// Response code of `ALIVE2_X_RESP`: registration result with a 32-bit creation, sent
/// to nodes whose highest distribution version is 6 or more.
pub const ALIVE2_X_RESP: u8 = 118;
/// Request code of `PORT_PLEASE2_REQ`: look up the port of a node name.
pub const PORT_PLEASE2_REQ: u8 = 122;
/// Response code of `PORT2_RESP`: the answer to `PORT_PLEASE2_REQ`.
pub const PORT2_RESP: u8 = 119;
/// Request code of `NAMES_REQ`: list every registered name.
pub const NAMES_REQ: u8 = 110;

/// Node type of a normal (visible) Erlang node.
pub const NODE_TYPE_NORMAL: u8 = 77;
/// Node type of a hidden Erlang node.
pub const NODE_TYPE_HIDDEN: u8 = 72;
/// Protocol byte for TCP over IPv4, the only one Erlang defines.
pub const PROTOCOL_TCP: u8 = 0;
/// Lowest distribution version a node announces when it also supports version 6
/// (Erlang/OTP 23 and later send 6 and 5).
pub const LOWEST_VERSION: u16 = 5;
/// Highest distribution version a current Erlang node announces.
pub const HIGHEST_VERSION: u16 = 6;
/// Nodes announcing a highest version at or above this get `ALIVE2_X_RESP`.
pub const X_RESP_MIN_VERSION: u16 = 6;
/// Result byte meaning success in `ALIVE2_RESP`, `ALIVE2_X_RESP` and `PORT2_RESP`.
pub const RESULT_OK: u8 = 0;
/// Result byte epmd uses for failure (name taken, name not found).
pub const RESULT_ERROR: u8 = 1;

/// Largest request body the 2-byte length prefix can describe.
const MAX_BODY: usize = u16::MAX as usize;

/// Why an epmd message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EpmdError {
    /// The message was empty: not even a request or response code.
    #[error("empty epmd message")]
    Empty,
    /// The message ended before a field was complete.
    #[error("truncated epmd message: {field} needs {needed} bytes but only {available} remain")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// Bytes were left over after a complete message.
    #[error("{0} unexpected bytes after the end of the epmd message")]
    TrailingBytes(usize),
    /// A response began with a code other than the one(s) that can answer the request.
    #[error("unexpected epmd response code {found} (expected {expected})")]
    UnexpectedCode {
        /// What was expected, for the message.
        expected: &'static str,
        /// The code that arrived.
        found: u8,
    },
    /// A node name was not UTF-8.
    #[error("node name in epmd message is not valid UTF-8")]
    InvalidName,
    /// A line of a NAMES response did not read `name <alive> at port <port>`.
    #[error("malformed line in epmd NAMES response: {0:?}")]
    MalformedNamesLine(String),
    /// A field is too long for its length prefix (or the message for its 2-byte length).
    #[error("{field} is {len} bytes, more than epmd's limit of {max}")]
    TooLong {
        /// The field that does not fit.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The largest length that fits.
        max: usize,
    },
}

/// Everything a node tells the mapper when it registers, and everything the mapper tells
/// whoever asks for that node's port.
///
/// The same fields appear in `ALIVE2_REQ` and in a successful `PORT2_RESP`, so one struct
/// serves both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistration {
    /// The TCP port the node accepts distribution connections on.
    pub port: u16,
    /// [`NODE_TYPE_NORMAL`] (77) or [`NODE_TYPE_HIDDEN`] (72).
    pub node_type: u8,
    /// [`PROTOCOL_TCP`] (0).
    pub protocol: u8,
    /// Highest distribution protocol version the node speaks.
    pub highest_version: u16,
    /// Lowest distribution protocol version the node speaks.
    pub lowest_version: u16,
    /// The `alive` part of the node name (before the `@`).
    pub name: String,
    /// Opaque extra bytes, stored and handed back unchanged.
    pub extra: Vec<u8>,
}

impl NodeRegistration {
    /// A registration as a normal Erlang node makes it: type 77, protocol 0, versions
    /// 6 down to 5, no extra bytes.
    pub fn normal(name: impl Into<String>, port: u16) -> Self {
        NodeRegistration {
            port,
            node_type: NODE_TYPE_NORMAL,
            protocol: PROTOCOL_TCP,
            highest_version: HIGHEST_VERSION,
            lowest_version: LOWEST_VERSION,
            name: name.into(),
            extra: Vec::new(),
        }
    }

    /// Whether the mapper should answer this node's registration with `ALIVE2_X_RESP`
    /// (32-bit creation) rather than `ALIVE2_RESP`.
    pub fn wants_x_resp(&self) -> bool {
        self.highest_version >= X_RESP_MIN_VERSION
    }

    /// Appends the shared field layout (PortNo .. Extra) to `out`.
    fn encode_fields(&self, out: &mut Vec<u8>) -> Result<(), EpmdError> {
        let nlen = len_u16("node name", self.name.len())?;
        let elen = len_u16("extra", self.extra.len())?;
        out.extend_from_slice(&self.port.to_be_bytes());
        out.push(self.node_type);
        out.push(self.protocol);
        out.extend_from_slice(&self.highest_version.to_be_bytes());
        out.extend_from_slice(&self.lowest_version.to_be_bytes());
        out.extend_from_slice(&nlen.to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&elen.to_be_bytes());
        out.extend_from_slice(&self.extra);
        Ok(())
    }

    /// Reads the shared field layout (PortNo .. Extra) from `r`.
    fn decode_fields(r: &mut Reader<'_>) -> Result<Self, EpmdError> {
        let port = r.u16("PortNo")?;
        let node_type = r.u8("NodeType")?;
        let protocol = r.u8("Protocol")?;
        let highest_version = r.u16("HighestVersion")?;
        let lowest_version = r.u16("LowestVersion")?;
        let nlen = r.u16("Nlen")?;
        let name = utf8(r.bytes("NodeName", usize::from(nlen))?)?;
        let elen = r.u16("Elen")?;
        let extra = r.bytes("Extra", usize::from(elen))?.to_vec();
        Ok(NodeRegistration {
            port,
            node_type,
            protocol,
            highest_version,
            lowest_version,
            name,
            extra,
        })
    }
}

/// A request to the port mapper, as parsed from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpmdRequest {
    /// `ALIVE2_REQ`: register a node.
    Alive2(NodeRegistration),
    /// `PORT_PLEASE2_REQ`: what port does the node `name` listen on?
    PortPlease2 {
        /// The `alive` part of the node name.
        name: String,
    },
    /// `NAMES_REQ`: list all registered nodes.
    Names,
    /// Any other request code (`DUMP_REQ`, `KILL_REQ`, ...); we do not serve them.
    Other(u8),
}

impl EpmdRequest {
    /// Encodes the request with its 2-byte length prefix, ready to write.
    ///
    /// `Other(code)` encodes as a body holding only the code.
    pub fn encode(&self) -> Result<Vec<u8>, EpmdError> {
        match self {
            EpmdRequest::Alive2(reg) => encode_alive2_req(reg),
            EpmdRequest::PortPlease2 { name } => encode_port_please2_req(name),
            EpmdRequest::Names => Ok(encode_names_req()),
            EpmdRequest::Other(code) => Ok(vec![0, 1, *code]),
        }
    }
}

/// Encodes `ALIVE2_REQ` (with its length prefix) registering `reg`.
pub fn encode_alive2_req(reg: &NodeRegistration) -> Result<Vec<u8>, EpmdError> {
    let mut body = vec![ALIVE2_REQ];
    reg.encode_fields(&mut body)?;
    with_length_prefix(body)
}

/// Encodes `PORT_PLEASE2_REQ` (with its length prefix) asking for the port of `name`.
pub fn encode_port_please2_req(name: &str) -> Result<Vec<u8>, EpmdError> {
    let mut body = Vec::with_capacity(1 + name.len());
    body.push(PORT_PLEASE2_REQ);
    body.extend_from_slice(name.as_bytes());
    with_length_prefix(body)
}

/// Encodes `NAMES_REQ` (with its length prefix).
pub fn encode_names_req() -> Vec<u8> {
    vec![0, 1, NAMES_REQ]
}

/// Parses a request body: the bytes after the 2-byte length prefix.
///
/// Unknown codes become [`EpmdRequest::Other`] so the caller decides what to do with
/// them; known codes with a malformed body are errors.
pub fn parse_request(body: &[u8]) -> Result<EpmdRequest, EpmdError> {
    let (&code, rest) = body.split_first().ok_or(EpmdError::Empty)?;
    match code {
        ALIVE2_REQ => {
            let mut r = Reader::new(rest);
            let reg = NodeRegistration::decode_fields(&mut r)?;
            r.finish()?;
            Ok(EpmdRequest::Alive2(reg))
        }
        PORT_PLEASE2_REQ => Ok(EpmdRequest::PortPlease2 { name: utf8(rest)? }),
        NAMES_REQ => Ok(EpmdRequest::Names),
        other => Ok(EpmdRequest::Other(other)),
    }
}

/// The mapper's answer to `ALIVE2_REQ`, from either `ALIVE2_RESP` or `ALIVE2_X_RESP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alive2Response {
    /// [`RESULT_OK`] on success; anything else means the registration was refused.
    pub result: u8,
    /// The creation number, distinguishing incarnations of a node with the same name.
    /// Zero when a refusal carried none.
    pub creation: u32,
    /// Whether this came as `ALIVE2_X_RESP` (32-bit creation).
    pub extended: bool,
}

/// Encodes `ALIVE2_RESP`: result and 16-bit creation.
pub fn encode_alive2_resp(result: u8, creation: u16) -> Vec<u8> {
    let c = creation.to_be_bytes();
    vec![ALIVE2_RESP, result, c[0], c[1]]
}

/// Encodes `ALIVE2_X_RESP`: result and 32-bit creation.
pub fn encode_alive2_x_resp(result: u8, creation: u32) -> Vec<u8> {
    let mut out = vec![ALIVE2_X_RESP, result];
    out.extend_from_slice(&creation.to_be_bytes());
    out
}

/// Total length of a successful registration response starting with `code`: 4 for
/// `ALIVE2_RESP`, 6 for `ALIVE2_X_RESP`, `None` for any other code.
///
/// Responses carry no length prefix, so a reader uses this to know how much to read.
pub fn alive2_response_len(code: u8) -> Option<usize> {
    match code {
        ALIVE2_RESP => Some(4),
        ALIVE2_X_RESP => Some(6),
        _ => None,
    }
}

/// Parses `ALIVE2_RESP` or `ALIVE2_X_RESP`.
///
/// A refusal (non-zero result) may stop after the result byte; a success must carry its
/// creation.
pub fn parse_alive2_response(bytes: &[u8]) -> Result<Alive2Response, EpmdError> {
    let mut r = Reader::new(bytes);
    let code = r.u8("response code").map_err(|_| EpmdError::Empty)?;
    let extended = match code {
        ALIVE2_RESP => false,
        ALIVE2_X_RESP => true,
        found => {
            return Err(EpmdError::UnexpectedCode {
                expected: "ALIVE2_RESP (121) or ALIVE2_X_RESP (118)",
                found,
            });
        }
    };
    let result = r.u8("Result")?;
    if result != RESULT_OK && r.is_empty() {
        return Ok(Alive2Response {
            result,
            creation: 0,
            extended,
        });
    }
    let creation = if extended {
        r.u32("Creation")?
    } else {
        u32::from(r.u16("Creation")?)
    };
    r.finish()?;
    Ok(Alive2Response {
        result,
        creation,
        extended,
    })
}

/// The mapper's answer to `PORT_PLEASE2_REQ`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port2Response {
    /// The node is registered; here is everything it registered with.
    Found(NodeRegistration),
    /// No such node (epmd sends result 1); the byte is the result code.
    NotFound(u8),
}

/// Encodes a successful `PORT2_RESP` carrying `reg`.
pub fn encode_port2_resp_found(reg: &NodeRegistration) -> Result<Vec<u8>, EpmdError> {
    let mut out = vec![PORT2_RESP, RESULT_OK];
    reg.encode_fields(&mut out)?;
    Ok(out)
}

/// Encodes a failed `PORT2_RESP`: the code and the (non-zero) result byte only.
pub fn encode_port2_resp_not_found(result: u8) -> Vec<u8> {
    vec![PORT2_RESP, result]
}

impl Port2Response {
    /// Encodes the response, ready to write.
    pub fn encode(&self) -> Result<Vec<u8>, EpmdError> {
        match self {
            Port2Response::Found(reg) => encode_port2_resp_found(reg),
            Port2Response::NotFound(result) => Ok(encode_port2_resp_not_found(*result)),
        }
    }
}

/// Parses a complete `PORT2_RESP` (the mapper closes the connection after it, so the
/// response is everything read until end of stream).
pub fn parse_port2_response(bytes: &[u8]) -> Result<Port2Response, EpmdError> {
    let mut r = Reader::new(bytes);
    let code = r.u8("response code").map_err(|_| EpmdError::Empty)?;
    if code != PORT2_RESP {
        return Err(EpmdError::UnexpectedCode {
            expected: "PORT2_RESP (119)",
            found: code,
        });
    }
    let result = r.u8("Result")?;
    if result != RESULT_OK {
        // epmd sends only the result byte on failure; ignore anything after it.
        return Ok(Port2Response::NotFound(result));
    }
    let reg = NodeRegistration::decode_fields(&mut r)?;
    r.finish()?;
    Ok(Port2Response::Found(reg))
}

/// The mapper's answer to `NAMES_REQ`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamesResponse {
    /// The port the mapper itself listens on.
    pub epmd_port: u32,
    /// Every registered node as (`alive` name, port), in the order the mapper sent them.
    pub nodes: Vec<(String, u16)>,
}

/// Encodes a `NAMES_REQ` answer: the mapper's port as a 32-bit big-endian number, then
/// one `name <alive> at port <port>\n` line per node, as `epmd` sends it.
pub fn encode_names_resp<'a>(
    epmd_port: u32,
    nodes: impl IntoIterator<Item = (&'a str, u16)>,
) -> Vec<u8> {
    let mut out = epmd_port.to_be_bytes().to_vec();
    for (name, port) in nodes {
        out.extend_from_slice(format!("name {name} at port {port}\n").as_bytes());
    }
    out
}

/// Parses a complete `NAMES_REQ` answer (read until the mapper closes the connection).
pub fn parse_names_response(bytes: &[u8]) -> Result<NamesResponse, EpmdError> {
    let mut r = Reader::new(bytes);
    let epmd_port = r.u32("EPMDPortNo")?;
    let text = std::str::from_utf8(r.rest()).map_err(|_| EpmdError::InvalidName)?;
    let mut nodes = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let malformed = || EpmdError::MalformedNamesLine(line.to_owned());
        let rest = line.strip_prefix("name ").ok_or_else(malformed)?;
        let (name, port) = rest.rsplit_once(" at port ").ok_or_else(malformed)?;
        let port: u16 = port.trim().parse().map_err(|_| malformed())?;
        if name.is_empty() {
            return Err(malformed());
        }
        nodes.push((name.to_owned(), port));
    }
    Ok(NamesResponse { epmd_port, nodes })
}

/// Prepends the 2-byte big-endian length to a request body.
fn with_length_prefix(body: Vec<u8>) -> Result<Vec<u8>, EpmdError> {
    let len = len_u16("request", body.len())?;
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Converts a length to the u16 that prefixes it on the wire.
fn len_u16(field: &'static str, len: usize) -> Result<u16, EpmdError> {
    u16::try_from(len).map_err(|_| EpmdError::TooLong {
        field,
        len,
        max: MAX_BODY,
    })
}

/// Decodes a node name.
fn utf8(bytes: &[u8]) -> Result<String, EpmdError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| EpmdError::InvalidName)
}

/// A bounds-checked cursor over a byte slice: every read either succeeds or says which
/// field was cut short. Reads borrow from the input, so nothing is allocated on the
/// strength of a declared length alone.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn bytes(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], EpmdError> {
        if self.buf.len() < n {
            return Err(EpmdError::Truncated {
                field,
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], EpmdError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(field, N)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, EpmdError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, EpmdError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, EpmdError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn finish(self) -> Result<(), EpmdError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(EpmdError::TrailingBytes(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeRegistration {
        NodeRegistration {
            port: 54321,
            node_type: NODE_TYPE_HIDDEN,
            protocol: PROTOCOL_TCP,
            highest_version: 6,
            lowest_version: 5,
            name: "server".to_owned(),
            extra: vec![1, 2, 3],
        }
    }

    /// Splits an encoded request into its declared length and body.
    fn body(frame: &[u8]) -> &[u8] {
        let len = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
        assert_eq!(len, frame.len() - 2, "length prefix matches body");
        &frame[2..]
    }

    #[test]
    fn alive2_req_matches_the_documented_layout() {
        let frame = encode_alive2_req(&NodeRegistration::normal("ab", 0x1234)).unwrap();
        assert_eq!(
            frame,
            [
                0, 15, 120, 0x12, 0x34, 77, 0, 0, 6, 0, 5, 0, 2, b'a', b'b', 0, 0
            ]
        );
    }

    #[test]
    fn requests_round_trip() {
        for req in [
            EpmdRequest::Alive2(sample()),
            EpmdRequest::Alive2(NodeRegistration::normal("x", 1)),
            EpmdRequest::PortPlease2 {
                name: "server".to_owned(),
            },
            EpmdRequest::PortPlease2 {
                name: String::new(),
            },
            EpmdRequest::Names,
            EpmdRequest::Other(100),
        ] {
            let frame = req.encode().unwrap();
            assert_eq!(parse_request(body(&frame)).unwrap(), req);
        }
    }

    #[test]
    fn truncated_alive2_req_is_an_error_at_every_length() {
        let frame = encode_alive2_req(&sample()).unwrap();
        let full = body(&frame);
        for cut in 1..full.len() {
            let err = parse_request(&full[..cut]).unwrap_err();
            assert!(
                matches!(err, EpmdError::Truncated { .. }),
                "cut at {cut}: {err:?}"
            );
        }
        assert_eq!(parse_request(&[]), Err(EpmdError::Empty));
    }

    #[test]
    fn declared_lengths_beyond_the_input_are_rejected() {
        // Nlen says 65535, but only 2 bytes follow.
        let body = [120, 0, 1, 77, 0, 0, 6, 0, 5, 0xff, 0xff, b'a', b'b'];
        assert_eq!(
            parse_request(&body),
            Err(EpmdError::Truncated {
                field: "NodeName",
                needed: 65535,
                available: 2
            })
        );
    }

    #[test]
    fn trailing_bytes_after_alive2_req_are_rejected() {
        let frame = encode_alive2_req(&sample()).unwrap();
        let mut full = body(&frame).to_vec();
        full.push(0);
        assert_eq!(parse_request(&full), Err(EpmdError::TrailingBytes(1)));
    }

    #[test]
    fn non_utf8_names_are_rejected() {
        assert_eq!(
            parse_request(&[PORT_PLEASE2_REQ, 0xff]),
            Err(EpmdError::InvalidName)
        );
    }

    #[test]
    fn alive2_responses_round_trip() {
        let r = parse_alive2_response(&encode_alive2_resp(0, 0xbeef)).unwrap();
        assert_eq!(
            r,
            Alive2Response {
                result: 0,
                creation: 0xbeef,
                extended: false
            }
        );
        let r = parse_alive2_response(&encode_alive2_x_resp(0, 0xdead_beef)).unwrap();
        assert_eq!(
            r,
            Alive2Response {
                result: 0,
                creation: 0xdead_beef,
                extended: true
            }
        );
        assert_eq!(alive2_response_len(ALIVE2_RESP), Some(4));
        assert_eq!(alive2_response_len(ALIVE2_X_RESP), Some(6));
        assert_eq!(alive2_response_len(PORT2_RESP), None);
    }

    #[test]
    fn alive2_refusal_may_omit_the_creation() {
        let r = parse_alive2_response(&[ALIVE2_X_RESP, 1]).unwrap();
        assert_eq!(r.result, 1);
        assert_eq!(r.creation, 0);
    }

    #[test]
    fn truncated_alive2_responses_are_errors() {
        let full = encode_alive2_x_resp(0, 7);
        assert_eq!(parse_alive2_response(&[]), Err(EpmdError::Empty));
        for cut in 1..full.len() {
            assert!(matches!(
                parse_alive2_response(&full[..cut]),
                Err(EpmdError::Truncated { .. })
            ));
        }
        assert!(matches!(
            parse_alive2_response(&[PORT2_RESP, 0]),
            Err(EpmdError::UnexpectedCode { found: 119, .. })
        ));
    }

    #[test]
    fn port2_responses_round_trip() {
        let found = Port2Response::Found(sample());
        assert_eq!(
            parse_port2_response(&found.encode().unwrap()).unwrap(),
            found
        );
        let missing = Port2Response::NotFound(1);
        let bytes = missing.encode().unwrap();
        assert_eq!(bytes, [119, 1]);
        assert_eq!(parse_port2_response(&bytes).unwrap(), missing);
    }

    #[test]
    fn truncated_port2_responses_are_errors() {
        let full = encode_port2_resp_found(&sample()).unwrap();
        assert_eq!(parse_port2_response(&[]), Err(EpmdError::Empty));
        for cut in 1..full.len() {
            assert!(
                matches!(
                    parse_port2_response(&full[..cut]),
                    Err(EpmdError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            parse_port2_response(&[ALIVE2_RESP, 0, 0, 1]),
            Err(EpmdError::UnexpectedCode { found: 121, .. })
        ));
    }

    #[test]
    fn names_response_parses_epmd_output() {
        let mut bytes = 4369u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"name server at port 40123\nname rabbit at port 25672\n");
        let parsed = parse_names_response(&bytes).unwrap();
        assert_eq!(parsed.epmd_port, 4369);
        assert_eq!(
            parsed.nodes,
            vec![("server".to_owned(), 40123), ("rabbit".to_owned(), 25672)]
        );
    }

    #[test]
    fn names_response_round_trips_and_handles_empty_lists() {
        let bytes = encode_names_resp(4369, [("a", 1), ("b-2", 65535)]);
        let parsed = parse_names_response(&bytes).unwrap();
        assert_eq!(
            parsed.nodes,
            vec![("a".to_owned(), 1), ("b-2".to_owned(), 65535)]
        );
        let empty = parse_names_response(&encode_names_resp(7, [])).unwrap();
        assert_eq!(empty.epmd_port, 7);
        assert!(empty.nodes.is_empty());
    }

    #[test]
    fn malformed_names_responses_are_errors() {
        assert!(matches!(
            parse_names_response(&[0, 0, 17]),
            Err(EpmdError::Truncated { .. })
        ));
        let mut bytes = 4369u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"name x at port lots\n");
        assert!(matches!(
            parse_names_response(&bytes),
            Err(EpmdError::MalformedNamesLine(_))
        ));
        let mut bytes = 4369u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"hello\n");
        assert!(matches!(
            parse_names_response(&bytes),
            Err(EpmdError::MalformedNamesLine(_))
        ));
    }

    #[test]
    fn oversized_fields_cannot_be_encoded() {
        let long = "x".repeat(70_000);
        assert!(matches!(
            encode_port_please2_req(&long),
            Err(EpmdError::TooLong { .. })
        ));
        assert!(matches!(
            encode_alive2_req(&NodeRegistration::normal(long, 1)),
            Err(EpmdError::TooLong { .. })
        ));
    }
}
