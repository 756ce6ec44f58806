//! `raftkv kv`: read and write keys through the HTTP API, from a shell.

use std::future::Future;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use base64::Engine;
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use raftkv_client::model::ListItem;
use raftkv_client::{Client, Condition, Consistency, Error, ListOptions};
use serde_json::json;

use super::connect::ConnectArgs;
use super::{endpoints, table, Output, UsageError};

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
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: KvCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConsistencyArg {
    Linearizable,
    Lease,
    Stale,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Consistency {
        match c {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Lease => Consistency::Lease,
            ConsistencyArg::Stale => Consistency::Stale,
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
        /// Keys and revisions only, without values (as `etcdctl get --keys-only`).
        #[arg(long)]
        keys_only: bool,
    },
}

/// The largest page the API serves.
const PAGE: usize = 1000;

/// One client per endpoint; a request goes to the first that can be reached. An endpoint
/// that answers ends the search, whatever it answers.
struct Endpoints(Vec<Client>);

impl Endpoints {
    fn new(list: &[String], timeout: Duration, connect: &ConnectArgs) -> anyhow::Result<Endpoints> {
        let tls = connect.tls()?;
        let credentials = connect.credentials()?;
        let clients = endpoints(list)
            .iter()
            .map(|ep| {
                let mut builder = Client::builder(ep).timeout(timeout);
                if let Some(tls) = &tls {
                    builder = builder.tls(tls.clone());
                }
                if let Some(credentials) = &credentials {
                    builder = builder.credentials(credentials.clone());
                }
                builder.build()
            })
            .collect::<Result<_, _>>()?;
        Ok(Endpoints(clients))
    }

    /// Runs `call` on the first endpoint that can be reached; returns that endpoint too.
    async fn first<T, F, Fut>(&self, call: F) -> Result<(String, T), Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut failures = Vec::new();
        for c in &self.0 {
            match call(c.clone()).await {
                Ok(v) => return Ok((c.endpoint().to_string(), v)),
                Err(e) if e.not_sent() => failures.push(e),
                Err(e) => return Err(e),
            }
        }
        Err(Error::NoEndpoint { failures })
    }
}

/// `--if-match`: a revision (`7` or `"7"`), or `*` for "only if it exists".
fn if_match(v: &str) -> Result<Condition, UsageError> {
    if v.trim() == "*" {
        return Ok(Condition::IfExists);
    }
    let digits = v.trim().trim_matches('"');
    digits
        .parse()
        .map(Condition::IfMatch)
        .map_err(|_| UsageError(format!("--if-match takes a revision number or \"*\", not {v:?}")))
}

/// A key or value for a person: itself when it is UTF-8, else `base64:...`.
fn shown(b: &Bytes) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    let eps = Endpoints::new(&args.endpoint, Duration::from_secs(args.timeout), &args.connect)?;
    let out = args.output;
    match args.command {
        KvCommand::Get { key, consistency } => {
            let consistency = Consistency::from(consistency);
            let (ep, value) = eps
                .first(|c| {
                    let key = key.clone();
                    async move { c.get(key.as_bytes(), consistency).await }
                })
                .await?;
            let value = value.ok_or_else(|| anyhow!("{ep}: 404 key not found"))?;
            match out {
                Output::Json => {
                    let mut v = json!({"key": key, "revision": value.revision});
                    match std::str::from_utf8(&value.value) {
                        Ok(s) => v["value"] = json!(s),
                        Err(_) => {
                            v["value_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&value.value))
                        }
                    }
                    println!("{v}");
                }
                Output::Table => std::io::stdout().write_all(&value.value)?,
            }
        }
        KvCommand::Put {
            key,
            value,
            file,
            if_match: revision,
            if_none_match,
        } => {
            let body: Bytes = match (value, file) {
                (Some(v), None) => v.into(),
                (None, Some(f)) => std::fs::read(&f)
                    .map_err(|e| anyhow!("reading {}: {e}", f.display()))?
                    .into(),
                (None, None) => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf.into()
                }
                (Some(_), Some(_)) => return Err(UsageError("give the value or --file, not both".into()).into()),
            };
            let condition = match (revision, if_none_match) {
                (Some(r), _) => if_match(&r)?,
                (None, true) => Condition::IfAbsent,
                (None, false) => Condition::None,
            };
            let (_, w) = eps
                .first(|c| {
                    let (key, body) = (key.clone(), body.clone());
                    async move { c.put(key.as_bytes(), body, condition).await }
                })
                .await?;
            match out {
                Output::Json => println!("{}", serde_json::to_value(w)?),
                Output::Table => println!("OK revision {}", w.revision),
            }
        }
        KvCommand::Delete {
            key,
            if_match: revision,
        } => {
            let condition = revision.as_deref().map(if_match).transpose()?.unwrap_or_default();
            let (_, d) = eps
                .first(|c| {
                    let key = key.clone();
                    async move { c.delete(key.as_bytes(), condition).await }
                })
                .await?;
            match out {
                Output::Json => println!("{}", serde_json::to_value(d)?),
                Output::Table => println!("{}", if d.deleted { "deleted" } else { "not found" }),
            }
        }
        KvCommand::List {
            prefix,
            limit,
            consistency,
            keys_only,
        } => {
            let mut items: Vec<ListItem> = Vec::new();
            let mut options = ListOptions {
                prefix: Bytes::from(prefix),
                start: None,
                limit: None,
                consistency: consistency.into(),
                keys_only,
            };
            loop {
                options.limit = Some(if limit == 0 {
                    PAGE
                } else {
                    (limit - items.len()).min(PAGE)
                });
                let (_, page) = eps
                    .first(|c| {
                        let options = options.clone();
                        async move { c.list(&options).await }
                    })
                    .await?;
                items.extend(page.items);
                match page.next_start {
                    Some(next) if limit == 0 || items.len() < limit => options.start = Some(next),
                    _ => break,
                }
            }
            match out {
                Output::Json if keys_only => {
                    let mut listed = Vec::with_capacity(items.len());
                    for item in &items {
                        let mut item = serde_json::to_value(item)?;
                        if let Some(fields) = item.as_object_mut() {
                            fields.remove("value");
                            fields.remove("value_base64");
                        }
                        listed.push(item);
                    }
                    println!("{}", json!({ "items": listed }));
                }
                Output::Json => println!("{}", json!({ "items": items })),
                Output::Table if keys_only => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|i| vec![shown(&i.key), i.revision.to_string()])
                        .collect();
                    println!("{}", table::render(&["KEY", "REVISION"], &rows));
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|i| vec![shown(&i.key), i.revision.to_string(), shown(&i.value)])
                        .collect();
                    println!("{}", table::render(&["KEY", "REVISION", "VALUE"], &rows));
                }
            }
        }
    }
    Ok(())
}
