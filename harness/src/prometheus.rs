//! A real Prometheus (Debian's `prometheus` package) scraping real nodes, and the Grafana
//! dashboard's queries evaluated against it: what an operator's monitoring would see.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};

/// Where Debian installs the Prometheus tools.
const TOOL_DIRS: [&str; 3] = ["/usr/bin", "/usr/local/bin", "/bin"];

/// The path of a Prometheus tool (`prometheus`, `promtool`).
pub fn find_tool(name: &str) -> Result<PathBuf> {
    TOOL_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .ok_or_else(|| Error::Tool {
            tool: name.to_string(),
            message: "not found: install Debian's prometheus package (scripts/test.sh does)".into(),
        })
}

/// Where a scrape job finds its targets.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Fixed `host:port` targets, every one with the same extra labels.
    Static {
        targets: Vec<String>,
        labels: BTreeMap<String, String>,
    },
    /// File-based discovery: a JSON file of target groups that the caller rewrites as targets
    /// come and go (read again every second).
    File(PathBuf),
}

/// One `scrape_configs` entry.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    pub name: String,
    pub targets: Targets,
}

/// A Prometheus configuration: jobs scraped (and rules evaluated) every `interval`.
#[derive(Debug, Clone)]
pub struct Config {
    pub interval: Duration,
    pub jobs: Vec<ScrapeJob>,
}

impl Config {
    /// One job over static targets, scraped every second.
    pub fn static_job(job: &str, targets: &[String], labels: &[(&str, &str)]) -> Config {
        Config {
            interval: Duration::from_secs(1),
            jobs: vec![ScrapeJob {
                name: job.to_string(),
                targets: Targets::Static {
                    targets: targets.to_vec(),
                    labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                },
            }],
        }
    }

    /// One job over targets discovered from `file`, scraped every second.
    pub fn file_job(job: &str, file: &Path) -> Config {
        Config {
            interval: Duration::from_secs(1),
            jobs: vec![ScrapeJob {
                name: job.to_string(),
                targets: Targets::File(file.to_path_buf()),
            }],
        }
    }

    /// The YAML file Prometheus reads (every string quoted as JSON, which YAML accepts).
    pub fn render(&self) -> String {
        let q = |s: &str| Value::from(s).to_string();
        let secs = self.interval.as_secs().max(1);
        let mut out = format!("global:\n  scrape_interval: {secs}s\n  evaluation_interval: {secs}s\nscrape_configs:\n");
        for job in &self.jobs {
            let _ = writeln!(out, "  - job_name: {}", q(&job.name));
            match &job.targets {
                Targets::Static { targets, labels } => {
                    let list: Vec<String> = targets.iter().map(|t| q(t)).collect();
                    let _ = writeln!(out, "    static_configs:\n      - targets: [{}]", list.join(", "));
                    if !labels.is_empty() {
                        out.push_str("        labels:\n");
                        for (k, v) in labels {
                            let _ = writeln!(out, "          {k}: {}", q(v));
                        }
                    }
                }
                Targets::File(path) => {
                    let path = path.display().to_string();
                    let _ = writeln!(
                        out,
                        "    file_sd_configs:\n      - files: [{}]\n        refresh_interval: 1s",
                        q(&path)
                    );
                }
            }
        }
        out
    }
}

/// A running Prometheus, killed when dropped. Its configuration, data and log live in the
/// directory it was started in.
pub struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long Prometheus may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Prometheus cannot take a listener from its parent, so its port is chosen free and may be
/// taken by the time it binds: it then exits at once, and starts again on another port.
const PORT_ATTEMPTS: usize = 5;

impl Prometheus {
    /// Writes `config` to `dir/prometheus.yml` and starts Prometheus on a loopback port; returns
    /// once it is ready.
    pub async fn start(dir: &Path, config: &Config) -> Result<Prometheus> {
        let bin = find_tool("prometheus")?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config.render()).map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match Prometheus::start_once(&bin, dir, &file).await {
                Ok(p) => return Ok(p),
                Err(e @ Error::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Usage("prometheus: no attempt made".into())))
    }

    async fn start_once(bin: &Path, dir: &Path, config: &Path) -> Result<Prometheus> {
        let port = free_loopback_port()?;
        let log_path = dir.join("prometheus.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let err_log = log.try_clone().map_err(|e| Error::io("prometheus log", e))?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", bin.display()), e))?;
        let mut p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| Error::Tool {
                    tool: "prometheus".into(),
                    message: format!("HTTP client: {e}"),
                })?,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(Error::Exited {
                    node: "prometheus".into(),
                    status,
                    log: log_path,
                });
            }
            let ready = p.http.get(format!("{}/-/ready", p.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "prometheus was not ready".into(),
                    timeout: READY_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An instant query; the API's whole answer (`status`, `data`, any `error`).
    pub async fn query(&self, q: &str) -> Result<Value> {
        let fail = |message: String| Error::Tool {
            tool: "prometheus".into(),
            message: format!("query {q}: {message}"),
        };
        let resp = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        resp.json().await.map_err(|e| fail(format!("answer is not JSON: {e}")))
    }

    /// The sample values of an instant-vector query; an error unless the query succeeded.
    pub async fn values(&self, q: &str) -> Result<Vec<f64>> {
        let v = self.query(q).await?;
        sample_values(&v).ok_or_else(|| Error::Tool {
            tool: "prometheus".into(),
            message: format!("{q}: {v}"),
        })
    }

    /// Polls `q` until its values satisfy `ok`; returns them.
    pub async fn wait_for(&self, q: &str, timeout: Duration, ok: impl Fn(&[f64]) -> bool) -> Result<Vec<f64>> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.values(q).await?;
            if ok(&v) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{q} never satisfied the condition; last {v:?}"),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Evaluates every query; for each panel title, whether any of its queries returned data.
    /// An error names the first query that Prometheus refused.
    pub async fn panels_with_data(&self, queries: &[PanelQuery]) -> Result<BTreeMap<String, bool>> {
        let mut with_data: BTreeMap<String, bool> = BTreeMap::new();
        for pq in queries {
            let v = self.query(&pq.expr).await?;
            if v["status"] != "success" {
                return Err(Error::Tool {
                    tool: "prometheus".into(),
                    message: format!("panel {:?}: {}: {v}", pq.title, pq.expr),
                });
            }
            let has = v["data"]["result"].as_array().is_some_and(|r| !r.is_empty());
            *with_data.entry(pq.title.clone()).or_default() |= has;
        }
        Ok(with_data)
    }
}

/// The values of a successful instant-vector answer; `None` for a failed query.
fn sample_values(answer: &Value) -> Option<Vec<f64>> {
    if answer["status"] != "success" {
        return None;
    }
    Some(
        answer["data"]["result"]
            .as_array()
            .map(|r| r.iter().filter_map(|s| s["value"][1].as_str()?.parse().ok()).collect())
            .unwrap_or_default(),
    )
}

/// A port that was free a moment ago, for a program that binds its own.
fn free_loopback_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free loopback port", e))
}

/// One query of a dashboard panel, with the dashboard's variables filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelQuery {
    pub title: String,
    pub expr: String,
}

/// Every `expr` of every panel of the Grafana dashboard at `path`, with each `(variable,
/// value)` of `vars` substituted (`("$cluster", "test")`).
pub fn dashboard_queries(path: &Path, vars: &[(&str, &str)]) -> Result<Vec<PanelQuery>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let dash: Value = serde_json::from_str(&text).map_err(|e| Error::Tool {
        tool: "dashboard".into(),
        message: format!("{} is not JSON: {e}", path.display()),
    })?;
    panel_queries(&dash, vars).ok_or_else(|| Error::Tool {
        tool: "dashboard".into(),
        message: format!("{}: no panels, or a target without an expr", path.display()),
    })
}

fn panel_queries(dash: &Value, vars: &[(&str, &str)]) -> Option<Vec<PanelQuery>> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array()? {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = t["expr"].as_str()?.to_string();
            for (var, value) in vars {
                expr = expr.replace(var, value);
            }
            out.push(PanelQuery {
                title: panel["title"].as_str().unwrap_or("").to_string(),
                expr,
            });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_static_job_renders_targets_and_labels() {
        let c = Config::static_job(
            "raftkv",
            &["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            &[("namespace", "local"), ("cluster", "test")],
        );
        assert_eq!(
            c.render(),
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: \"raftkv\"\n    \
             static_configs:\n      - targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n        labels:\n          \
             cluster: \"test\"\n          namespace: \"local\"\n"
        );
    }

    #[test]
    fn a_file_job_renders_file_discovery() {
        let c = Config::file_job("kubernetes-pods", Path::new("/tmp/t.json"));
        assert!(
            c.render().ends_with(
                "  - job_name: \"kubernetes-pods\"\n    file_sd_configs:\n      - files: [\"/tmp/t.json\"]\n        \
                 refresh_interval: 1s\n"
            ),
            "{}",
            c.render()
        );
    }

    #[test]
    fn sample_values_reads_an_instant_vector_and_refuses_errors() {
        let ok = json!({"status": "success", "data": {"result": [
            {"metric": {}, "value": [1.0, "3"]}, {"metric": {}, "value": [1.0, "0.5"]}]}});
        assert_eq!(sample_values(&ok), Some(vec![3.0, 0.5]));
        assert_eq!(
            sample_values(&json!({"status": "success", "data": {"result": []}})),
            Some(vec![])
        );
        assert_eq!(sample_values(&json!({"status": "error", "error": "parse"})), None);
    }

    #[test]
    fn panel_queries_substitute_the_variables() {
        let dash = json!({"panels": [
            {"title": "Leader", "targets": [{"expr": "max(x{cluster=\"$cluster\"}[$__rate_interval])"}]},
            {"title": "Row"},
        ]});
        assert_eq!(
            panel_queries(&dash, &[("$cluster", "test"), ("$__rate_interval", "15s")]),
            Some(vec![PanelQuery {
                title: "Leader".into(),
                expr: "max(x{cluster=\"test\"}[15s])".into()
            }])
        );
        assert_eq!(panel_queries(&json!({}), &[]), None);
    }
}
