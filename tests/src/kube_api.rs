//! A real Kubernetes API server for tests, the bench and the demo: `etcd` and
//! `kube-apiserver` from the directory `$KUBEBUILDER_ASSETS` names (the envtest convention;
//! `etcd` may also be Debian's `etcd-server`), started inside a network namespace, stopped
//! and removed with everything they wrote when the guard drops, also on failure.
//!
//! Where the variable is unset, [`assets`] says so and the callers skip what needs a server,
//! saying why ([`skip`]). The server has no controller-manager: nothing creates service
//! accounts' tokens, EndpointSlices or garbage-collects; the tests create what they need.
//!
//! The server keeps an audit log of who asked what ([`KubeApi::audited`]): every request but
//! the administrator's writes (the bench's 20,000 objects), at the `Metadata` level. The
//! bench counts the agent's own requests there; the API server's request metrics count
//! every client's, the server's own included.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{self, BRIDGE, KUBE_API_ADDR, Lab, LabSpec, SEGMENT_PREFIX_LEN};
use crate::netns::Netns;
use crate::process::{self, Process};

/// The two Cilium kinds' definitions, as an operator applies them.
pub const CRDS: &str = include_str!("../../deploy/crds.yaml");
/// The DaemonSet with its namespace, ServiceAccount and RBAC, as an operator applies it.
pub const DEPLOYMENT: &str = include_str!("../../deploy/daemonset.yaml");
/// The agent's namespace and ServiceAccount in [`DEPLOYMENT`].
pub const AGENT_NAMESPACE: &str = "gateway-system";
pub const AGENT_ACCOUNT: &str = "gateway-agent";

/// The variable naming the directory with `kube-apiserver` and `etcd`.
pub const ASSETS_VAR: &str = "KUBEBUILDER_ASSETS";
/// Where Debian's `etcd-server` installs etcd, used when the assets have none.
const DEBIAN_ETCD: &str = "/usr/bin/etcd";
/// The API server's port, on the address it binds in its namespace.
pub const PORT: u16 = 6443;
/// The token of the administrator (group `system:masters`), and its user name.
const ADMIN_TOKEN: &str = "gateway-test-admin-token";
const ADMIN_USER: &str = "gateway-test-admin";
/// What the audit log keeps: see the module's documentation.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n\
rules:\n- level: None\n  users: [gateway-test-admin]\n  verbs: [create, update, patch, delete, deletecollection]\n\
- level: Metadata\n";
/// The range Services' cluster IPs come from.
const SERVICE_RANGE: &str = "10.96.0.0/16";
/// The range node ports come from.
const NODE_PORTS: &str = "30000-60000";
/// Startup stretches with the machine's load: 3-6 s here, much more under a parallel build.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// `$KUBEBUILDER_ASSETS`, when it is set and holds a `kube-apiserver`.
pub fn assets() -> Result<PathBuf, String> {
    let Some(dir) = std::env::var_os(ASSETS_VAR) else {
        return Err(format!(
            "{ASSETS_VAR} is not set (it names a directory with kube-apiserver and etcd, as \
             controller-runtime's envtest uses)"
        ));
    };
    let dir = PathBuf::from(dir);
    if !dir.join("kube-apiserver").is_file() {
        return Err(format!(
            "{ASSETS_VAR}={} has no kube-apiserver",
            dir.display()
        ));
    }
    Ok(dir)
}

/// Says on the terminal that `what` was skipped and why. Written to stderr directly: the
/// test harness captures `eprintln!` of a passing test, and a skip must be seen.
pub fn skip(what: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped {what}: {why}");
}

/// The assets, or `None` after saying that `what` was skipped.
pub fn assets_or_skip(what: &str) -> Option<PathBuf> {
    match assets() {
        Ok(dir) => Some(dir),
        Err(why) => {
            skip(what, &why);
            None
        }
    }
}

/// Where a [`KubeApi`] runs: a namespace of its own, or one a lab owns.
pub enum Place<'a> {
    /// A fresh namespace, bound to 127.0.0.1 there; deleted with the server.
    Own,
    /// `ns` (e.g. a lab's segment), bound to `addr`, which must already be on one of its
    /// interfaces; etcd listens on the namespace's loopback.
    In(&'a Netns, Ipv4Addr),
}

/// One request as the audit log has it.
#[derive(Clone, Debug)]
pub struct Audited {
    /// When the server received it, in seconds since the epoch.
    pub received_unix: f64,
    /// `system:serviceaccount:NAMESPACE:NAME` for a ServiceAccount's token, `system:apiserver`
    /// for the server's own loopback client.
    pub user: String,
    /// The API's verb: `list`, `watch`, `get`, `update`, `patch`, `create`...
    pub verb: String,
    /// Empty for a non-resource URL.
    pub resource: String,
    pub subresource: String,
    pub uri: String,
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (how the audit log writes times, in UTC) in seconds since
/// the epoch.
fn unix_seconds(time: &str) -> Option<f64> {
    let (date, clock) = time.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let mut hms = clock.splitn(3, ':');
    let (h, min) = (
        hms.next()?.parse::<f64>().ok()?,
        hms.next()?.parse::<f64>().ok()?,
    );
    let sec = hms.next()?.parse::<f64>().ok()?;
    // Days since 1970-01-01 of a date of the proleptic Gregorian calendar (H. Hinnant's
    // days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3_600.0 + min * 60.0 + sec)
}

/// etcd and kube-apiserver running in one namespace.
pub struct KubeApi {
    ns: String,
    addr: Ipv4Addr,
    dir: PathBuf,
    assets: PathBuf,
    apiserver: Option<Process>,
    etcd: Option<Process>,
    kubeconfig: PathBuf,
    /// Last: deleted after the servers stopped.
    _own_ns: Option<Netns>,
}

impl KubeApi {
    /// Starts etcd and the API server from `assets` at `place`, keeping their files below
    /// `dir` (created; removed on drop), and waits until the API server is ready.
    pub fn start(assets: &Path, place: Place<'_>, dir: &Path) -> Result<Self> {
        let (own_ns, ns, addr) = match place {
            Place::Own => {
                let ns = Netns::new("kapi")?;
                let name = ns.name().to_owned();
                (Some(ns), name, Ipv4Addr::LOCALHOST)
            }
            Place::In(ns, addr) => (None, ns.name().to_owned(), addr),
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dir = dir.join(format!("kube-api-{}-{id}", std::process::id()));
        let mut api = Self {
            ns,
            addr,
            kubeconfig: dir.join("kubeconfig"),
            dir,
            assets: assets.to_owned(),
            apiserver: None,
            etcd: None,
            _own_ns: own_ns,
        };
        api.prepare()?;
        api.start_etcd()?;
        api.start_apiserver()?;
        Ok(api)
    }

    /// A server on the lab's segment at [`KUBE_API_ADDR`], reachable from every node; its
    /// files in the lab's run directory.
    pub fn in_lab(assets: &Path, lab: &Lab) -> Result<Self> {
        let segment = lab.segment();
        segment.ip(&[
            "addr",
            "add",
            &format!("{KUBE_API_ADDR}/{SEGMENT_PREFIX_LEN}"),
            "dev",
            BRIDGE,
        ])?;
        Self::start(assets, Place::In(segment, KUBE_API_ADDR), &lab.run_dir())
    }

    /// A server in a namespace of its own, its files under the system's temporary directory.
    pub fn own(assets: &Path) -> Result<Self> {
        Self::start(assets, Place::Own, &std::env::temp_dir())
    }

    /// The namespace the server runs in; clients run there too, or reach [`Self::addr`].
    pub fn ns(&self) -> &str {
        &self.ns
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `https://ADDR:6443`.
    pub fn url(&self) -> String {
        format!("https://{}:{PORT}", self.addr)
    }

    /// A kubeconfig with the administrator's token.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where the server keeps its files (and test helpers may put theirs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Every request the audit log holds so far, once each, in the order logged.
    pub fn audited(&self) -> Result<Vec<Audited>> {
        let path = self.audit_log();
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut seen = std::collections::BTreeSet::new();
        let mut requests = Vec::new();
        // The last line may be half written.
        for line in text.lines().filter(|l| l.ends_with('}')) {
            let entry: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: {line}", path.display()))?;
            let text = |pointer: &str| {
                entry
                    .pointer(pointer)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            // A watch is logged when it starts and when it ends.
            if !seen.insert(text("/auditID")) {
                continue;
            }
            let received = text("/requestReceivedTimestamp");
            requests.push(Audited {
                received_unix: unix_seconds(&received)
                    .with_context(|| format!("{}: a timestamp {received:?}", path.display()))?,
                user: text("/user/username"),
                verb: text("/verb"),
                resource: text("/objectRef/resource"),
                subresource: text("/objectRef/subresource"),
                uri: text("/requestURI"),
            });
        }
        Ok(requests)
    }

    /// The key pair for service accounts, a token file and the etcd data directory.
    fn prepare(&self) -> Result<()> {
        let pki = self.dir.join("pki");
        fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
        let key = pki.join("sa.key");
        process::checked(
            std::process::Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(&key)
                .arg("2048"),
        )?;
        process::checked(
            std::process::Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(pki.join("sa.pub")),
        )?;
        let tokens = pki.join("tokens.csv");
        fs::write(
            &tokens,
            format!("{ADMIN_TOKEN},{ADMIN_USER},{ADMIN_USER}-uid,\"system:masters\"\n"),
        )
        .with_context(|| format!("writing {}", tokens.display()))?;
        let policy = pki.join("audit-policy.yaml");
        fs::write(&policy, AUDIT_POLICY)
            .with_context(|| format!("writing {}", policy.display()))?;
        self.write_kubeconfig(&self.kubeconfig, ADMIN_TOKEN)
    }

    /// Writes a kubeconfig for this server with `token` to `path`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\nusers:\n- name: user\n  user:\n    token: {token}\n\
             contexts:\n- name: test\n  context: {{cluster: test, user: user}}\ncurrent-context: test\n",
            self.url(),
            self.dir.join("pki").join("apiserver.crt").display(),
        );
        fs::write(path, kubeconfig).with_context(|| format!("writing {}", path.display()))
    }

    fn etcd_binary(&self) -> PathBuf {
        let bundled = self.assets.join("etcd");
        if bundled.is_file() {
            bundled
        } else {
            PathBuf::from(DEBIAN_ETCD)
        }
    }

    fn start_etcd(&mut self) -> Result<()> {
        let data = self.dir.join("etcd");
        let etcd = self.etcd_binary();
        let args: Vec<String> = vec![
            etcd.display().to_string(),
            "--name".into(),
            "kapi".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            "http://127.0.0.1:2379".into(),
            "--advertise-client-urls".into(),
            "http://127.0.0.1:2379".into(),
            "--listen-peer-urls".into(),
            "http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls".into(),
            "http://127.0.0.1:2380".into(),
            "--initial-cluster".into(),
            "kapi=http://127.0.0.1:2380".into(),
        ];
        let process = self.spawn(&args, "etcd")?;
        self.etcd = Some(process);
        self.wait_until("etcd", |api| {
            let out = api.in_ns(&[
                "curl",
                "-s",
                "--max-time",
                "1",
                "http://127.0.0.1:2379/health",
            ])?;
            Ok(out.contains("\"health\":\"true\""))
        })
    }

    /// Starts the API server (again, after [`Self::stop_apiserver`]) and waits until ready.
    pub fn start_apiserver(&mut self) -> Result<()> {
        let pki = self.dir.join("pki");
        let p = |name: &str| pki.join(name).display().to_string();
        let args: Vec<String> = vec![
            self.assets.join("kube-apiserver").display().to_string(),
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--bind-address={}", self.addr),
            format!("--advertise-address={}", self.addr),
            format!("--secure-port={PORT}"),
            // The `kubernetes` Service cannot have a loopback endpoint.
            "--endpoint-reconciler-type=none".into(),
            format!("--service-cluster-ip-range={SERVICE_RANGE}"),
            // Room for the bench's 10,000 Local LoadBalancer Services: each holds a health
            // check node port (2,768 in the default range).
            format!("--service-node-port-range={NODE_PORTS}"),
            format!("--cert-dir={}", pki.display()),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            // As kubeadm's clusters: the DaemonSet's init container is privileged.
            "--allow-privileged=true".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--audit-policy-file={}", p("audit-policy.yaml")),
            format!("--audit-log-path={}", self.audit_log().display()),
        ];
        let process = self.spawn(&args, "kube-apiserver")?;
        self.apiserver = Some(process);
        self.wait_until("kube-apiserver", |api| {
            let out = api.in_ns(&[
                "curl",
                "-sk",
                "--max-time",
                "2",
                "-H",
                &format!("Authorization: Bearer {ADMIN_TOKEN}"),
                &format!("{}/readyz", api.url()),
            ])?;
            Ok(out.trim() == "ok")
        })
    }

    /// Stops the API server (etcd keeps the objects): clients lose their connections.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.stop();
        }
    }

    fn spawn(&self, args: &[String], name: &str) -> Result<Process> {
        let log = self.dir.join(format!("{name}.log"));
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).args(args);
        Process::spawn(cmd, name, &log)
    }

    /// The tail of a server's log, for failure messages.
    fn log_tail(&self, name: &str) -> String {
        let text = fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn wait_until(&mut self, name: &str, ready: impl Fn(&Self) -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready(self).unwrap_or(false) {
                return Ok(());
            }
            for process in [&mut self.etcd, &mut self.apiserver].into_iter().flatten() {
                if let Err(e) = process.ensure_running() {
                    bail!("{e:#}");
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} in {} was not ready within {READY_TIMEOUT:?}; its log ends:\n{}",
                    self.ns,
                    self.log_tail(name)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `args` in the server's namespace; stdout, or an error quoting stderr.
    pub fn in_ns(&self, args: &[&str]) -> Result<String> {
        process::checked(
            std::process::Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .args(args),
        )
    }

    /// `GET PATH` as the administrator, straight from the API server (cheaper than kubectl,
    /// for polling).
    pub fn get_raw(&self, path: &str) -> Result<String> {
        self.in_ns(&[
            "curl",
            "-sk",
            "--fail",
            "--max-time",
            "5",
            "-H",
            &format!("Authorization: Bearer {ADMIN_TOKEN}"),
            &format!("{}{path}", self.url()),
        ])
    }

    /// `kubectl ARGS` as the administrator, in the server's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let kubeconfig = self.kubeconfig.display().to_string();
        let mut full = vec!["kubectl", "--kubeconfig", &kubeconfig];
        full.extend_from_slice(args);
        self.in_ns(&full)
    }

    /// The Cilium CRDs, established.
    pub fn install_crds(&self) -> Result<()> {
        self.apply(CRDS, &[])?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/ciliumloadbalancerippools.cilium.io",
            "crd/ciliuml2announcementpolicies.cilium.io",
            "--timeout=60s",
        ])?;
        Ok(())
    }

    /// The CRDs, the services' namespaces and every object of `spec`.
    pub fn apply_lab(&self, spec: &LabSpec) -> Result<()> {
        self.install_crds()?;
        let namespaces: std::collections::BTreeSet<&str> =
            spec.services.iter().map(|s| s.namespace.as_str()).collect();
        for namespace in namespaces {
            self.ensure_namespace(namespace)?;
        }
        self.apply(&lab::config_json(spec)?, &[])?;
        Ok(())
    }

    /// Applies [`DEPLOYMENT`] (nothing runs its DaemonSet: there is no controller-manager)
    /// and writes a kubeconfig with a token of the agent's ServiceAccount, as the kubelet
    /// would mount it; returns its path.
    pub fn agent_kubeconfig(&self) -> Result<PathBuf> {
        self.apply(DEPLOYMENT, &[])?;
        let token = self.kubectl(&["create", "token", AGENT_ACCOUNT, "-n", AGENT_NAMESPACE])?;
        let path = self.dir.join("agent.kubeconfig");
        self.write_kubeconfig(&path, token.trim())?;
        Ok(path)
    }

    /// Creates `namespace` unless it exists.
    pub fn ensure_namespace(&self, namespace: &str) -> Result<()> {
        let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n");
        self.apply(&yaml, &[])?;
        Ok(())
    }

    /// `kubectl apply` of `yaml` (written to a file beside the server's); with `extra`
    /// flags such as `--server-side` or `--dry-run=server`.
    pub fn apply(&self, yaml: &str, extra: &[&str]) -> Result<String> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("apply-{id}.yaml"));
        fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        let file = path.display().to_string();
        let mut args = vec!["apply", "-f", &file];
        args.extend_from_slice(extra);
        let out = self.kubectl(&args);
        let _ = fs::remove_file(&path);
        out
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        // The API server first: it would log etcd's absence for its whole shutdown.
        self.stop_apiserver();
        if let Some(mut etcd) = self.etcd.take() {
            etcd.stop();
        }
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_times_are_read_as_seconds_since_the_epoch() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(unix_seconds("2000-03-01T00:00:01Z"), Some(951_868_801.0));
        let t = unix_seconds("2026-11-30T16:12:47.386674Z").unwrap();
        assert!((t - 1_796_055_167.386_674).abs() < 1e-5, "{t}");
        assert_eq!(unix_seconds("2026-11-30 16:12:47Z"), None);
    }
}
