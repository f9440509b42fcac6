//! A real Prometheus server (Debian's `prometheus`) inside a lab namespace, scraping
//! targets there, and queried through its HTTP API. Its configuration and storage live in a
//! directory of their own; the guard stops the server and removes that directory when it
//! drops, also when a test fails.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::netns::Netns;
use crate::process::{self, Process};

/// Loading the TSDB and starting the web server takes about a second here.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often it scrapes: short, so a test waits little for the next scrape.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// A Prometheus server, stopped (and its directory removed) on drop.
pub struct Prometheus {
    ns: String,
    listen: SocketAddr,
    /// `None` once stopped.
    process: Option<Process>,
    dir: PathBuf,
}

/// The scrape configuration: one job, `job`, with static `targets`.
fn config(job: &str, targets: &[SocketAddr]) -> String {
    let secs = SCRAPE_INTERVAL.as_secs();
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n  evaluation_interval: {secs}s\n\
         scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

impl Prometheus {
    /// Starts `prometheus` in `ns`, listening on `listen` there, scraping `targets` as job
    /// `job`, with its files in `dir` (created; removed again on drop); returns once it is
    /// ready to answer queries.
    pub fn start(
        ns: &Netns,
        listen: SocketAddr,
        job: &str,
        targets: &[SocketAddr],
        dir: &Path,
    ) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // The guard exists before anything that can fail: the directory goes in any case.
        let mut server = Self {
            ns: ns.name().to_owned(),
            listen,
            process: None,
            dir: dir.to_owned(),
        };
        let config_file = dir.join("prometheus.yml");
        fs::write(&config_file, config(job, targets))
            .with_context(|| format!("writing {}", config_file.display()))?;
        let args = [
            "prometheus".to_owned(),
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={listen}"),
            "--log.level=warn".into(),
        ];
        server.process = Some(ns.spawn(args, "prometheus", &dir.join("prometheus.log"))?);
        server.wait_ready()?;
        Ok(server)
    }

    /// Polls `/-/ready` until it answers 200 (the TSDB is loaded and queries work).
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.get("/-/ready").is_ok() {
                return Ok(());
            }
            if let Some(p) = self.process.as_mut() {
                p.ensure_running()?;
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET `path` on the server from inside its namespace; the body, or an error for any
    /// status but 2xx.
    fn get(&self, path: &str) -> Result<String> {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .args(["curl", "-sS", "--fail", "--max-time", "5", "-g"])
            .arg(format!("http://{}{path}", self.listen));
        process::checked(&mut cmd)
    }

    /// What the server has logged (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/...` with `query` as URL-encoded form parameters; the `data` of a
    /// successful answer.
    pub fn api(&self, endpoint: &str, params: &[(&str, &str)]) -> Result<Value> {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).args([
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "-G",
        ]);
        for (key, value) in params {
            cmd.arg("--data-urlencode").arg(format!("{key}={value}"));
        }
        cmd.arg(format!("http://{}/api/v1/{endpoint}", self.listen));
        let body = process::checked(&mut cmd)?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("prometheus answered {endpoint} with {body}"))?;
        if answer["status"] != "success" {
            bail!("prometheus: {endpoint} {params:?}: {answer}");
        }
        Ok(answer["data"].clone())
    }

    /// An instant query: every series it returns, as its labels and value.
    pub fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>> {
        let data = self.api("query", &[("query", promql)])?;
        data["result"]
            .as_array()
            .with_context(|| format!("{promql}: not a vector: {data}"))?
            .iter()
            .map(|series| {
                let value = series["value"][1]
                    .as_str()
                    .with_context(|| format!("{promql}: no value in {series}"))?;
                Ok((series["metric"].clone(), value.parse()?))
            })
            .collect()
    }

    /// The value of a query that must return exactly one series; `None` while it returns
    /// none (not scraped yet).
    pub fn value(&self, promql: &str) -> Result<Option<f64>> {
        let series = self.query(promql)?;
        match series.as_slice() {
            [] => Ok(None),
            [(_, v)] => Ok(Some(*v)),
            more => bail!("{promql} returned {} series: {more:?}", more.len()),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}
