//! Feeds arbitrary bytes to the WAL's decoders: they must never panic, and whatever they
//! accept must survive an encode/decode round trip unchanged.
//!
//! Two entry points: the whole frame (as recovery sees it: checksum first) and the payload
//! alone (random bytes almost never pass a CRC, so this is where field decoding is explored).
#![no_main]

use bytes::Bytes;
use flotilla_wal::record::{decode_payload, decode_record, decode_segment_header, encode_record};
use libfuzzer_sys::fuzz_target;

fn round_trips(rec: &flotilla_wal::record::Record) {
    let mut buf = Vec::new();
    encode_record(rec, &mut buf);
    let (again, len) = decode_record(&Bytes::from(buf.clone())).expect("own encoding decodes");
    assert_eq!((&again, len), (rec, buf.len()), "record changed in a round trip");
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_segment_header(data);
    let buf = Bytes::copy_from_slice(data);
    if let Ok((rec, _)) = decode_record(&buf) {
        round_trips(&rec);
    }
    if let Ok(rec) = decode_payload(buf) {
        round_trips(&rec);
    }
});
