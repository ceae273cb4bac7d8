//! Printing results: text close to etcdctl's simple format, or one JSON object per result.
//!
//! In JSON, keys and values are strings when they are valid UTF-8; otherwise the field gets a
//! `_base64` suffix (`"value_base64": "..."`) so a script can always tell which it got.

use std::io::Write;

use base64::Engine as _;
use flotilla_kv::proto::etcdserverpb::ResponseHeader;
use flotilla_kv::proto::mvccpb::KeyValue;
use serde_json::{json, Map, Value};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable, close to etcdctl's default output.
    Text,
    /// One JSON object per line and result, for scripts.
    Json,
}

/// Writes raw bytes and a newline to stdout (keys and values need not be UTF-8).
pub fn print_bytes_line(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Prints one JSON object on its own line.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Inserts `name: bytes` as a string, or `name_base64: …` when `bytes` is not UTF-8.
pub fn insert_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.to_string(), Value::String(text.to_string())),
        Err(_) => object.insert(
            format!("{name}_base64"),
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

/// A key-value as JSON. `keys_only` leaves the value out.
pub fn kv_json(kv: &KeyValue) -> Value {
    let mut object = Map::new();
    insert_bytes(&mut object, "key", &kv.key);
    insert_bytes(&mut object, "value", &kv.value);
    object.insert("create_revision".into(), json!(kv.create_revision));
    object.insert("mod_revision".into(), json!(kv.mod_revision));
    object.insert("version".into(), json!(kv.version));
    object.insert("lease".into(), json!(kv.lease));
    Value::Object(object)
}

/// A response header as JSON (absent header → zeros).
pub fn header_json(header: Option<&ResponseHeader>) -> Value {
    let header = header.copied().unwrap_or_default();
    json!({
        "cluster_id": header.cluster_id,
        "member_id": header.member_id,
        "revision": header.revision,
        "raft_term": header.raft_term,
    })
}

/// The header's revision, or 0 when the server sent none.
pub fn header_revision(header: Option<&ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

/// Prints a key-value in text: key line, then value line unless `keys_only`.
pub fn print_kv_text(kv: &KeyValue, keys_only: bool) -> anyhow::Result<()> {
    print_bytes_line(&kv.key)?;
    if !keys_only {
        print_bytes_line(&kv.value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_bytes_are_strings_and_others_are_base64() {
        let mut object = Map::new();
        insert_bytes(&mut object, "key", b"hello");
        insert_bytes(&mut object, "value", &[0xff, 0x00]);
        assert_eq!(object["key"], json!("hello"));
        assert_eq!(object["value_base64"], json!("/wA="));
        assert!(!object.contains_key("value"));
    }
}
