//! `flotilla kv txn`: etcdctl's interactive transaction format, read from stdin.
//!
//! ```text
//! value("k") = "v"        <- compares, one per line
//! mod("n") > "3"
//!                         <- blank line
//! put k v2                <- success ops: put/get/del with the kv command's flags
//! get n
//!                         <- blank line
//! put k v                 <- failure ops, up to a blank line or end of input
//! ```
//!
//! Compare targets are etcdctl's: `ver`/`version`, `c`/`create`, `m`/`mod`, `val`/`value`,
//! `lease` (hex id); operators `=`, `!=`, `>`, `<`.

use std::io::{IsTerminal as _, Read as _};

use anyhow::{bail, Context as _};
use clap::Parser as _;
use flotilla_kv::proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    response_op::Response,
    Compare, RequestOp, TxnRequest, TxnResponse,
};
use serde_json::json;

use super::args::parse_lease_id;
use super::client::Client;
use super::kv::{
    delete_json, print_delete, print_put, print_range, put_json, range_json, DelArgs, GetArgs,
    PutArgs,
};
use super::output::{header_json, print_json, OutputFormat};

/// Largest txn text read from stdin.
const TXN_INPUT_BYTES_MAX: u64 = 1 << 20;

/// One operation line of a txn, parsed with the `kv` commands' own arguments.
#[derive(Debug, Clone, clap::Parser)]
#[command(no_binary_name = true, disable_help_flag = true)]
pub enum TxnOp {
    /// `put <key> <value> [--lease ID] [--prev-kv]`
    Put(PutArgs),
    /// `get <key> [flags of kv get]`
    Get(GetArgs),
    /// `del <key> [--prefix] [--from-key] [--prev-kv]`
    Del(DelArgs),
}

impl TxnOp {
    fn request(&self) -> RequestOp {
        let request = match self {
            TxnOp::Put(args) => Request::RequestPut(args.request()),
            TxnOp::Get(args) => Request::RequestRange(args.request()),
            TxnOp::Del(args) => Request::RequestDeleteRange(args.request()),
        };
        RequestOp {
            request: Some(request),
        }
    }
}

/// A parsed transaction, with the ops kept to know how to print their responses.
#[derive(Debug, Clone)]
pub struct Txn {
    /// The compares.
    pub compares: Vec<Compare>,
    /// Ops run when every compare holds.
    pub success: Vec<TxnOp>,
    /// Ops run otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// The wire request.
    pub fn request(&self) -> TxnRequest {
        TxnRequest {
            compare: self.compares.clone(),
            success: self.success.iter().map(TxnOp::request).collect(),
            failure: self.failure.iter().map(TxnOp::request).collect(),
        }
    }
}

/// Parses the whole txn text: compares, blank line, success ops, blank line, failure ops.
pub fn parse_txn(text: &str) -> anyhow::Result<Txn> {
    let mut sections: [Vec<(usize, &str)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut section = 0;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            section += 1;
            if section == sections.len() {
                break;
            }
            continue;
        }
        sections[section].push((number + 1, line));
    }
    let [compares, success, failure] = sections;
    let compares = compares
        .into_iter()
        .map(|(number, line)| parse_compare(line).with_context(|| format!("txn line {number}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ops = |lines: Vec<(usize, &str)>| {
        lines
            .into_iter()
            .map(|(number, line)| parse_op(line).with_context(|| format!("txn line {number}")))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    Ok(Txn {
        compares,
        success: ops(success)?,
        failure: ops(failure)?,
    })
}

/// Parses `target("key") op "value"`.
pub fn parse_compare(line: &str) -> anyhow::Result<Compare> {
    let Some((target, rest)) = line.split_once('(') else {
        bail!("malformed comparison {line:?}: expected target(\"key\") op \"value\"");
    };
    let (key, rest) = parse_quoted(rest.trim_start())
        .with_context(|| format!("malformed comparison {line:?}: key must be quoted"))?;
    let Some(rest) = rest.trim_start().strip_prefix(')') else {
        bail!("malformed comparison {line:?}: expected ')' after the key");
    };
    let rest = rest.trim_start();
    let op_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (op, rest) = rest.split_at(op_len);
    let rest = rest.trim();
    let value = if rest.starts_with('"') || rest.starts_with('`') {
        let (value, tail) = parse_quoted(rest)?;
        if !tail.trim().is_empty() {
            bail!("malformed comparison {line:?}: unexpected {tail:?} after the value");
        }
        value
    } else if rest.is_empty() {
        bail!("malformed comparison {line:?}: missing value");
    } else {
        rest.to_string()
    };
    let result = match op {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        _ => bail!("malformed comparison {line:?}: unknown operator {op:?} (use = != > <)"),
    };
    let number = |what: &str| -> anyhow::Result<i64> {
        value
            .parse::<i64>()
            .with_context(|| format!("{what} compare needs an integer, got {value:?}"))
    };
    let (target, union) = match target.trim() {
        "ver" | "version" => (
            CompareTarget::Version,
            TargetUnion::Version(number("version")?),
        ),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(number("create")?),
        ),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(number("mod")?)),
        "val" | "value" => (
            CompareTarget::Value,
            TargetUnion::Value(value.clone().into_bytes()),
        ),
        "lease" => (
            CompareTarget::Lease,
            TargetUnion::Lease(parse_lease_id(&value).map_err(anyhow::Error::msg)?),
        ),
        other => bail!(
            "malformed comparison {line:?}: unknown target {other:?} \
             (use ver, create, mod, value or lease)"
        ),
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key: key.into_bytes(),
        target_union: Some(union),
        range_end: Vec::new(),
    })
}

/// Parses one op line (`put k v`, `get k --prefix`, `del k`).
pub fn parse_op(line: &str) -> anyhow::Result<TxnOp> {
    let words = split_words(line)?;
    TxnOp::try_parse_from(words).map_err(|e| anyhow::anyhow!("bad txn op {line:?}: {e}"))
}

/// Parses a leading `"…"` (with backslash escapes) or `` `…` `` string; returns it and the rest.
fn parse_quoted(text: &str) -> anyhow::Result<(String, &str)> {
    let mut chars = text.char_indices();
    let Some((_, quote)) = chars.next() else {
        bail!("expected a quoted string, found the end of the line");
    };
    if quote != '"' && quote != '`' {
        bail!("expected a quoted string at {text:?}");
    }
    let mut out = String::new();
    let mut escaped = false;
    for (at, c) in chars {
        if escaped {
            out.push(match c {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '0' => '\0',
                other => other,
            });
            escaped = false;
        } else if c == '\\' && quote == '"' {
            escaped = true;
        } else if c == quote {
            return Ok((out, &text[at + c.len_utf8()..]));
        } else {
            out.push(c);
        }
    }
    bail!("unterminated string in {text:?}")
}

/// Splits an op line into words; `"…"` and `'…'` group (so keys and values may hold spaces).
fn split_words(line: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if rest.starts_with('"') {
            let (word, tail) = parse_quoted(rest)?;
            words.push(word);
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix('\'') {
            let Some(end) = tail.find('\'') else {
                bail!("unterminated string in {line:?}");
            };
            words.push(tail[..end].to_string());
            rest = &tail[end + 1..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            words.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Ok(words)
}

/// Reads a txn from stdin, runs it, prints the outcome.
pub async fn run(client: &Client, output: OutputFormat) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "compares (e.g. value(\"k\") = \"v\"), blank line, success ops, blank line, \
             failure ops, blank line:"
        );
    }
    let text = tokio::task::spawn_blocking(|| -> std::io::Result<String> {
        let mut text = String::new();
        std::io::stdin()
            .take(TXN_INPUT_BYTES_MAX)
            .read_to_string(&mut text)?;
        Ok(text)
    })
    .await
    .context("reading the txn from stdin")??;
    let txn = parse_txn(&text)?;
    let resp = client.txn(txn.request()).await?;
    let ops = if resp.succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    print_txn(output, ops, &resp)
}

fn print_txn(output: OutputFormat, ops: &[TxnOp], resp: &TxnResponse) -> anyhow::Result<()> {
    match output {
        OutputFormat::Text => {
            println!("{}", if resp.succeeded { "SUCCESS" } else { "FAILURE" });
            for (index, op_resp) in resp.responses.iter().enumerate() {
                println!();
                let (keys_only, count_only) = match ops.get(index) {
                    Some(TxnOp::Get(args)) => (args.keys_only, args.count_only),
                    _ => (false, false),
                };
                match &op_resp.response {
                    Some(Response::ResponsePut(r)) => print_put(output, r)?,
                    Some(Response::ResponseRange(r)) => {
                        print_range(output, r, keys_only, count_only)?
                    }
                    Some(Response::ResponseDeleteRange(r)) => print_delete(output, r)?,
                    Some(Response::ResponseTxn(_)) | None => {}
                }
            }
            Ok(())
        }
        OutputFormat::Json => {
            let responses: Vec<_> = resp
                .responses
                .iter()
                .map(|op_resp| match &op_resp.response {
                    Some(Response::ResponsePut(r)) => json!({ "put": put_json(r) }),
                    Some(Response::ResponseRange(r)) => json!({ "range": range_json(r) }),
                    Some(Response::ResponseDeleteRange(r)) => json!({ "delete": delete_json(r) }),
                    Some(Response::ResponseTxn(_)) | None => json!({}),
                })
                .collect();
            print_json(&json!({
                "header": header_json(resp.header.as_ref()),
                "succeeded": resp.succeeded,
                "responses": responses,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_parse_in_etcdctl_syntax() {
        let c = parse_compare(r#"value("k") = "v""#).unwrap();
        assert_eq!(c.key, b"k");
        assert_eq!(c.target, CompareTarget::Value as i32);
        assert_eq!(c.result, CompareResult::Equal as i32);
        assert_eq!(c.target_union, Some(TargetUnion::Value(b"v".to_vec())));

        let c = parse_compare(r#"mod("k") > "3""#).unwrap();
        assert_eq!(c.target, CompareTarget::Mod as i32);
        assert_eq!(c.result, CompareResult::Greater as i32);
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(3)));

        let c = parse_compare(r#"c("a b") != 0"#).unwrap();
        assert_eq!(c.key, b"a b");
        assert_eq!(c.result, CompareResult::NotEqual as i32);
        assert_eq!(c.target_union, Some(TargetUnion::CreateRevision(0)));
    }

    #[test]
    fn malformed_compares_say_what_is_wrong() {
        let err = parse_compare(r#"size("k") = "1""#).unwrap_err();
        assert!(err.to_string().contains("unknown target"), "{err}");
        let err = parse_compare(r#"value("k") ~ "1""#).unwrap_err();
        assert!(err.to_string().contains("unknown operator"), "{err}");
        let err = parse_compare(r#"mod("k") > "x""#).unwrap_err();
        assert!(err.to_string().contains("integer"), "{err}");
        assert!(parse_compare("value k = v").is_err());
    }

    #[test]
    fn sections_are_split_by_blank_lines() {
        let txn = parse_txn("value(\"k\") = \"v\"\n\nput k v2\nget k --prefix\n\ndel k\n").unwrap();
        assert_eq!(txn.compares.len(), 1);
        assert_eq!(txn.success.len(), 2);
        assert!(matches!(&txn.success[1], TxnOp::Get(g) if g.prefix));
        assert_eq!(txn.failure.len(), 1);
        assert!(matches!(&txn.failure[0], TxnOp::Del(d) if d.key == "k"));
    }

    #[test]
    fn op_words_may_be_quoted() {
        let op = parse_op(r#"put "a key" 'a value'"#).unwrap();
        assert!(matches!(op, TxnOp::Put(p) if p.key == "a key" && p.value == "a value"));
        assert!(parse_op("frobnicate k").is_err());
    }
}
