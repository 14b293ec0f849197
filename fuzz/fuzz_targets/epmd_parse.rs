//! The port-mapper parsers: `parse_request` and the three response parsers.
//!
//! Invariants: whatever parses re-encodes and parses back to the same value, and a
//! request's body re-encodes to exactly the bytes it came from (except `Other`, which
//! keeps only its code); nothing panics on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::epmd::{
    self, EpmdRequest, Port2Response, encode_alive2_resp, encode_alive2_x_resp, encode_names_resp,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = epmd::parse_request(data) {
        let framed = req.encode().expect("a parsed request re-encodes");
        let len = u16::from_be_bytes([framed[0], framed[1]]) as usize;
        assert_eq!(len, framed.len() - 2);
        let body = &framed[2..];
        match &req {
            EpmdRequest::Other(code) => assert_eq!(body, [*code]),
            EpmdRequest::Names => assert_eq!(body, [epmd::NAMES_REQ]),
            _ => assert_eq!(body, data, "re-encoding changed the request"),
        }
        assert_eq!(epmd::parse_request(body), Ok(req));
    }

    if let Ok(resp) = epmd::parse_alive2_response(data) {
        let bytes = if resp.extended {
            encode_alive2_x_resp(resp.result, resp.creation)
        } else {
            encode_alive2_resp(
                resp.result,
                u16::try_from(resp.creation).expect("16-bit creation"),
            )
        };
        let again = epmd::parse_alive2_response(&bytes).expect("re-encoded response parses");
        assert_eq!(again.result, resp.result);
        assert_eq!(again.extended, resp.extended);
        // A refusal without a creation reads as creation 0, which re-encodes explicitly.
        assert_eq!(again.creation, resp.creation);
        if resp.result == epmd::RESULT_OK {
            assert_eq!(bytes, data);
            assert_eq!(epmd::alive2_response_len(data[0]), Some(data.len()));
        }
    }

    if let Ok(resp) = epmd::parse_port2_response(data) {
        let bytes = resp.encode().expect("a parsed response re-encodes");
        assert_eq!(epmd::parse_port2_response(&bytes), Ok(resp.clone()));
        if let Port2Response::Found(_) = resp {
            assert_eq!(bytes, data);
        }
    }

    if let Ok(resp) = epmd::parse_names_response(data) {
        // Names with newlines or " at port " inside cannot be told apart from the
        // framing, but a parsed name never contains a newline, so this round-trips.
        for (name, _) in &resp.nodes {
            assert!(!name.is_empty() && !name.contains('\n'));
        }
        let bytes = encode_names_resp(
            resp.epmd_port,
            resp.nodes.iter().map(|(n, p)| (n.as_str(), *p)),
        );
        assert_eq!(epmd::parse_names_response(&bytes), Ok(resp));
    }
});
