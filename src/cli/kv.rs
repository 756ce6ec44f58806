//! `raftkv kv`: read and write keys through the HTTP API, from a shell.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::{endpoints, table, Output, UsageError};

/// Characters left as they are in a key path: unreserved ones and '/'.
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

#[derive(Debug, Clone, Args)]
pub struct KvArgs {
    /// HTTP endpoints, comma-separated: URL[,URL...] (http://host:port or host:port). The first
    /// that can be reached is used.
    #[arg(long, env = "RAFTKV_ENDPOINT", value_delimiter = ',', required = true)]
    pub endpoint: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Request timeout in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: KvCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConsistencyArg {
    Linearizable,
    Lease,
    Stale,
}

impl ConsistencyArg {
    fn as_str(self) -> &'static str {
        match self {
            ConsistencyArg::Linearizable => "linearizable",
            ConsistencyArg::Lease => "lease",
            ConsistencyArg::Stale => "stale",
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum KvCommand {
    /// Print a key's value (raw bytes to stdout; with -o json, as JSON with its revision).
    Get {
        key: String,
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
    },
    /// Set a key. The value comes from the argument, --file, or standard input.
    Put {
        key: String,
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, short = 'f', conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Only if the key is at this revision ("*": only if it exists).
        #[arg(long)]
        if_match: Option<String>,
        /// Only if the key does not exist yet.
        #[arg(long, conflicts_with = "if_match")]
        if_none_match: bool,
    },
    /// Delete a key.
    Delete {
        key: String,
        /// Only if the key is at this revision ("*": only if it exists).
        #[arg(long)]
        if_match: Option<String>,
    },
    /// List keys (and values) in key order.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        /// Stop after this many keys (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
    },
}

fn base_url(ep: &str) -> String {
    let ep = ep.trim_end_matches('/');
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

/// Sends the request built by `build` to the first endpoint that can be reached.
async fn send(
    client: &reqwest::Client,
    eps: &[String],
    build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> anyhow::Result<(String, reqwest::Response)> {
    let mut failures = Vec::new();
    for ep in eps {
        let base = base_url(ep);
        match build(client, &base).send().await {
            Ok(r) => return Ok((base, r)),
            Err(e) if e.is_connect() => failures.push(format!("{base}: cannot connect")),
            Err(e) => return Err(anyhow!("{base}: {e}")),
        }
    }
    Err(anyhow!("no endpoint answered: {}", failures.join("; ")))
}

/// Turns a non-success answer into an error that names the endpoint and the server's reason.
async fn check(ep: &str, r: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    Err(anyhow!("{ep}: {} {msg}", status.as_u16()))
}

fn etag_arg(v: &str) -> String {
    if v == "*" || v.starts_with('"') {
        v.to_string()
    } else {
        format!("\"{v}\"")
    }
}

pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    let eps = endpoints(&args.endpoint);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout))
        .build()?;
    let out = args.output;
    match args.command {
        KvCommand::Get { key, consistency } => {
            let path = format!(
                "/v1/kv/{}?consistency={}",
                utf8_percent_encode(&key, KEY_SET),
                consistency.as_str()
            );
            let (ep, r) = send(&client, &eps, |c, base| c.get(format!("{base}{path}"))).await?;
            let r = check(&ep, r).await?;
            let revision = r
                .headers()
                .get("x-raftkv-revision")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let value = r.bytes().await?;
            match out {
                Output::Json => {
                    let mut v = json!({"key": key, "revision": revision.parse::<u64>().ok()});
                    match std::str::from_utf8(&value) {
                        Ok(s) => v["value"] = json!(s),
                        Err(_) => {
                            use base64::Engine;
                            v["value_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&value))
                        }
                    }
                    println!("{v}");
                }
                Output::Table => std::io::stdout().write_all(&value)?,
            }
        }
        KvCommand::Put {
            key,
            value,
            file,
            if_match,
            if_none_match,
        } => {
            let body: Vec<u8> = match (value, file) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(f)) => std::fs::read(&f).map_err(|e| anyhow!("reading {}: {e}", f.display()))?,
                (None, None) => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf
                }
                (Some(_), Some(_)) => return Err(UsageError("give the value or --file, not both".into()).into()),
            };
            let path = format!("/v1/kv/{}", utf8_percent_encode(&key, KEY_SET));
            let (ep, r) = send(&client, &eps, |c, base| {
                let mut req = c.put(format!("{base}{path}")).body(body.clone());
                if let Some(m) = &if_match {
                    req = req.header("if-match", etag_arg(m));
                }
                if if_none_match {
                    req = req.header("if-none-match", "*");
                }
                req
            })
            .await?;
            let v: Value = check(&ep, r).await?.json().await?;
            match out {
                Output::Json => println!("{v}"),
                Output::Table => println!("OK revision {}", v["revision"]),
            }
        }
        KvCommand::Delete { key, if_match } => {
            let path = format!("/v1/kv/{}", utf8_percent_encode(&key, KEY_SET));
            let (ep, r) = send(&client, &eps, |c, base| {
                let mut req = c.delete(format!("{base}{path}"));
                if let Some(m) = &if_match {
                    req = req.header("if-match", etag_arg(m));
                }
                req
            })
            .await?;
            let v: Value = check(&ep, r).await?.json().await?;
            match out {
                Output::Json => println!("{v}"),
                Output::Table => println!("{}", if v["deleted"] == true { "deleted" } else { "not found" }),
            }
        }
        KvCommand::List {
            prefix,
            limit,
            consistency,
        } => {
            let mut items: Vec<Value> = Vec::new();
            let mut start: Option<String> = None;
            loop {
                let page = if limit == 0 {
                    1000
                } else {
                    (limit - items.len()).min(1000)
                };
                let mut path = format!(
                    "/v1/kv?prefix={}&limit={page}&consistency={}",
                    utf8_percent_encode(&prefix, NON_ALPHANUMERIC),
                    consistency.as_str()
                );
                if let Some(s) = &start {
                    path.push_str(&format!("&start={s}"));
                }
                let (ep, r) = send(&client, &eps, |c, base| c.get(format!("{base}{path}"))).await?;
                let v: Value = check(&ep, r).await?.json().await?;
                items.extend(v["items"].as_array().cloned().unwrap_or_default());
                match v["next_start"].as_str() {
                    Some(next) if limit == 0 || items.len() < limit => start = Some(next.to_string()),
                    _ => break,
                }
            }
            match out {
                Output::Json => println!("{}", json!({ "items": items })),
                Output::Table => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|i| {
                            let show = |name: &str| {
                                i[name]
                                    .as_str()
                                    .map(str::to_string)
                                    .or_else(|| i[format!("{name}_base64")].as_str().map(|b| format!("base64:{b}")))
                                    .unwrap_or_default()
                            };
                            vec![show("key"), i["revision"].to_string(), show("value")]
                        })
                        .collect();
                    println!("{}", table::render(&["KEY", "REVISION", "VALUE"], &rows));
                }
            }
        }
    }
    Ok(())
}
