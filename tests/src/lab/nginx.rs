//! nginx as the lab's servers: envoy-like backends in the pods, which answer with who they
//! are and whom they saw connect, and a server on each node's own address.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::process::Process;

/// nginx takes a few milliseconds to bind; a loaded 2-core CI machine can take far longer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const READY_POLL: Duration = Duration::from_millis(20);

/// What a server listens on and answers.
pub(crate) struct Site<'a> {
    /// Instance name: names its directory and its log.
    pub name: &'a str,
    /// `listen` arguments, e.g. `8080` or `192.168.10.111:80`.
    pub listen: &'a [String],
    /// The body of every answer; may use nginx variables such as `$remote_addr`.
    pub body: &'a str,
    /// A directory served under `/files/`.
    pub files: Option<&'a Path>,
    /// URLs that answer, from inside the namespace, once the server is up.
    pub probes: &'a [String],
}

/// Starts nginx for `site` in `ns` with its config, pid file, logs and temp files under
/// `run_dir/nginx/NAME`, and returns once every probe URL answers.
pub(crate) fn serve(ns: &Netns, run_dir: &Path, site: &Site) -> Result<Process> {
    let dir = run_dir.join("nginx").join(site.name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("nginx.conf");
    fs::write(&conf, config(&dir, site)).with_context(|| format!("writing {}", conf.display()))?;
    let log = run_dir
        .join("logs")
        .join(format!("nginx-{}.log", site.name));
    let mut server = ns.spawn(
        [
            Path::new("nginx").as_os_str(),
            "-p".as_ref(),
            dir.as_os_str(),
            "-c".as_ref(),
            conf.as_os_str(),
            // Startup errors would otherwise go to /var/log/nginx before the config is read.
            "-e".as_ref(),
            dir.join("error.log").as_os_str(),
        ],
        &format!("nginx {}", site.name),
        &log,
    )?;
    for url in site.probes {
        wait_until_answers(ns, &mut server, url)?;
    }
    Ok(server)
}

fn config(dir: &Path, site: &Site) -> String {
    let dir = dir.display();
    let listen: String = site
        .listen
        .iter()
        .map(|l| format!("        listen {l};\n"))
        .collect();
    let body = site.body.replace('\\', "\\\\").replace('"', "\\\"");
    let files = site
        .files
        .map(|d| {
            format!(
                "        location /files/ {{\n            alias {}/;\n        }}\n",
                d.display()
            )
        })
        .unwrap_or_default();
    format!(
        r#"# Written by gateway-tests for the lab server {name}.
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp-client-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    default_type text/plain;
    # Long-lived keepalive connections exercise conntrack and affinity like browsers do.
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    server {{
{listen}        location / {{
            return 200 "{body}\n";
        }}
{files}    }}
}}
"#,
        name = site.name,
    )
}

/// Polls `url` from inside `ns` until it answers, failing early with the server's log if
/// the server died.
fn wait_until_answers(ns: &Netns, server: &mut Process, url: &str) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let probe = ns.exec(["curl", "-sf", "-o", "/dev/null", "--max-time", "1", url])?;
        if probe.status.success() {
            return Ok(());
        }
        server.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "{} in {} did not answer {url} within {READY_TIMEOUT:?}; its log:\n{}",
                server.name(),
                ns.name(),
                server.log()
            );
        }
        thread::sleep(READY_POLL);
    }
}
