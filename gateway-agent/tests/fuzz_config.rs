//! Bad input, tried and survived: the file source, the store and the model fed arbitrary
//! text, mutations of the reference file and structured random objects.
//!
//! Properties, for every input: nothing panics; every error and finding names the file
//! first; when the file parses, the cluster-wide and the per-node model agree on what every
//! service and pool gets, two services share a VIP only under one sharing key, every VIP
//! lies in the pool it is said to come from, and no VIP port is programmed twice.
//! Case counts are fixed here (not taken from PROPTEST_CASES) so every run tries as much.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use gateway_agent::config::Config;
use gateway_agent::model;
use gateway_agent::source::file;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Value, json};

const SOURCE: &str = "fuzz/objects.yaml";
const REFERENCE: &str = include_str!("../testdata/reference.yaml");

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // A failing case is shrunk, printed and kept in the output; the source tree stays
        // clean.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every finding starts with the file's name.
fn named(findings: impl IntoIterator<Item = String>) -> Result<(), TestCaseError> {
    let prefix = format!("{SOURCE}: ");
    for finding in findings {
        prop_assert!(
            finding.starts_with(&prefix),
            "finding does not name the file: {finding:?}"
        );
    }
    Ok(())
}

/// The whole pipeline on `text`, with the properties above.
fn check(text: &str) -> Result<(), TestCaseError> {
    let config = match file::parse(SOURCE, text) {
        Ok(config) => config,
        Err(errors) => {
            prop_assert!(!errors.0.is_empty(), "an error without findings");
            prop_assert!(errors.0.iter().all(|e| e.file == SOURCE));
            return named(errors.0.iter().map(ToString::to_string));
        }
    };
    prop_assert_eq!(&config.source, SOURCE);
    named(config.findings.iter().map(ToString::to_string))?;
    check_model(&config)
}

fn check_model(config: &Config) -> Result<(), TestCaseError> {
    let cluster = model::cluster_state(config);
    let node = model::desired_state(config, "worker-1", &["ens18".into()]);
    named(
        cluster
            .findings
            .iter()
            .chain(&node.findings)
            .map(ToString::to_string),
    )?;
    prop_assert_eq!(&cluster.services, &node.services);
    prop_assert_eq!(&cluster.pools, &node.pools);
    // VIP -> the services on it.
    let mut vips: BTreeMap<std::net::Ipv4Addr, Vec<&str>> = BTreeMap::new();
    for status in &cluster.services {
        let service = config
            .services
            .iter()
            .find(|s| s.object == status.service)
            .expect("a status per service");
        for vip in &status.vips {
            let key = service.sharing.as_ref().map_or("", |s| s.key.as_str());
            vips.entry(vip.vip).or_default().push(key);
            let pool = config.pools.iter().find(|p| p.name == vip.pool);
            let block = pool.and_then(|p| p.block_of(vip.vip));
            prop_assert!(block.is_some(), "{} is not in pool {}", vip.vip, vip.pool);
        }
    }
    for (vip, keys) in &vips {
        prop_assert!(
            keys.len() == 1 || keys.iter().all(|k| !k.is_empty() && *k == keys[0]),
            "VIP {vip} shared without one sharing key: {keys:?}"
        );
    }
    let mut ports = BTreeSet::new();
    for f in &node.frontends {
        let external = config
            .services
            .iter()
            .any(|s| s.external_ips.iter().any(|ip| ip.addr == f.vip));
        prop_assert!(
            vips.contains_key(&f.vip) || external,
            "frontend on unallocated {}",
            f.vip
        );
        prop_assert!(
            ports.insert((f.vip, f.port, f.protocol)),
            "{}:{}/{} programmed twice",
            f.vip,
            f.port,
            f.protocol
        );
    }
    for a in &node.announcements {
        prop_assert_eq!(&a.interface, "ens18");
        prop_assert!(ports.iter().any(|(vip, _, _)| *vip == a.vip) || vips.contains_key(&a.vip));
    }
    Ok(())
}

/// Characters YAML gives meaning to, with enough letters and digits to make keys.
fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(vec![
                ":", "-", " ", "  ", "\n", "\n  ", "---\n", "...\n", "{", "}", "[", "]", ",",
                "&a", "*a", "!", "!!str", "|", ">", "'", "\"", "#", "%YAML 1.2\n", "@", "`",
                "?", "\t", "\r", "\\", "~", "null", "<<: *a",
            ])
            .prop_map(str::to_owned),
            3 => "[a-z0-9./]{1,8}".prop_map(|s| s),
            1 => prop::sample::select(vec![
                "apiVersion: v1\n", "kind: Service\n", "kind: Node\n", "metadata:\n",
                "  name: x\n", "spec:\n", "  type: LoadBalancer\n",
            ])
            .prop_map(str::to_owned),
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(cases(10_000))]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn arbitrary_utf8(text in any::<String>()) {
        check(&text)?;
    }
}

proptest! {
    #![proptest_config(cases(5000))]

    #[test]
    fn arbitrary_yaml_punctuation(text in yamlish()) {
        check(&text)?;
    }
}

/// What a value can be replaced with.
fn random_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<i64>().prop_map(|n| n.to_string()),
        (-70_000i64..70_000).prop_map(|n| n.to_string()),
        Just("99999999999999999999999999999999".to_owned()),
        Just("-99999999999999999999999999999999".to_owned()),
        Just("1e400".to_owned()),
        Just("-2147483649".to_owned()),
        Just("4294967296".to_owned()),
        Just(".nan".to_owned()),
        Just("0x1F".to_owned()),
        Just("~".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("\"\"".to_owned()),
        Just("0.0.0.0/0".to_owned()),
        Just("255.255.255.255/32".to_owned()),
        Just("192.168.10.0/33".to_owned()),
        Just("192.168.10.49".to_owned()),
        Just("192.168.10.300".to_owned()),
        Just("::1".to_owned()),
        Just("fd00::/8".to_owned()),
        Just("1970-01-01T00:00:00Z".to_owned()),
        Just("not-a-time".to_owned()),
        "[ -~]{0,20}",
        "\\PC{0,12}",
    ]
}

/// One edit of the file's text.
#[derive(Clone, Debug)]
enum Mutation {
    FlipByte(prop::sample::Index, u8),
    DeleteLine(prop::sample::Index),
    DuplicateLine(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
    Truncate(prop::sample::Index),
    InsertScalar(prop::sample::Index, prop::sample::Index, String),
    ReplaceValue(prop::sample::Index, String),
    DeepNesting(prop::sample::Index, usize, bool),
    Anchor(prop::sample::Index, prop::sample::Index),
    DanglingAlias(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    prop_oneof![
        1 => (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::FlipByte(i, x)),
        1 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>(), random_value())
            .prop_map(|(l, c, v)| Mutation::InsertScalar(l, c, v)),
        3 => (any::<Index>(), random_value()).prop_map(|(l, v)| Mutation::ReplaceValue(l, v)),
        1 => (any::<Index>(), 1..150usize, any::<bool>())
            .prop_map(|(l, d, flow)| Mutation::DeepNesting(l, d, flow)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Anchor(a, b)),
        1 => any::<Index>().prop_map(Mutation::DanglingAlias),
    ]
}

/// The lines of the form `key: value` (or `- key: value`), as (line, where the value starts).
fn valued_lines(lines: &[String]) -> Vec<(usize, usize)> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with('#'))
        .filter_map(|(i, line)| line.find(": ").map(|at| (i, at + 2)))
        .collect()
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match mutation {
        Mutation::FlipByte(at, mask) => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::DeleteLine(at) => {
            lines.remove(at.index(n));
        }
        Mutation::DuplicateLine(at) => {
            let i = at.index(n);
            lines.insert(i, lines[i].clone());
        }
        Mutation::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
        Mutation::Truncate(at) => {
            let cut = at.index(text.len() + 1);
            let cut = (0..=cut)
                .rev()
                .find(|&c| text.is_char_boundary(c))
                .unwrap_or(0);
            return text[..cut].to_owned();
        }
        Mutation::InsertScalar(line, column, value) => {
            let line = &mut lines[line.index(n)];
            let at = column.index(line.len() + 1);
            let at = (0..=at)
                .rev()
                .find(|&c| line.is_char_boundary(c))
                .unwrap_or(0);
            line.insert_str(at, value);
        }
        Mutation::ReplaceValue(at, value) => {
            let valued = valued_lines(&lines);
            if !valued.is_empty() {
                let (i, start) = valued[at.index(valued.len())];
                lines[i].replace_range(start.., value);
            }
        }
        Mutation::DeepNesting(at, depth, flow) => {
            let valued = valued_lines(&lines);
            if !valued.is_empty() {
                let (i, start) = valued[at.index(valued.len())];
                let nested = if *flow {
                    format!("{}x{}", "[".repeat(*depth), "]".repeat(*depth))
                } else {
                    "{a: ".repeat(*depth) + "x" + &"}".repeat(*depth)
                };
                lines[i].replace_range(start.., &nested);
            }
        }
        Mutation::Anchor(from, to) => {
            // An anchor on a scalar or on a mapping (a `key:` line), aliased by a later
            // value of the same document.
            let anchorable: Vec<(usize, usize)> = lines
                .iter()
                .enumerate()
                .filter(|(_, line)| !line.trim_start().starts_with('#'))
                .filter_map(|(i, line)| match line.find(": ") {
                    Some(at) => Some((i, at + 2)),
                    None => line.ends_with(':').then_some((i, line.len())),
                })
                .collect();
            if !anchorable.is_empty() {
                let (i, start) = anchorable[from.index(anchorable.len())];
                let end = (i + 1..n)
                    .find(|&k| lines[k].starts_with("---"))
                    .unwrap_or(n);
                let later: Vec<(usize, usize)> = valued_lines(&lines)
                    .into_iter()
                    .filter(|&(k, _)| k > i && k < end)
                    .collect();
                let anchor = if start == lines[i].len() {
                    " &fuzz"
                } else {
                    "&fuzz "
                };
                lines[i].insert_str(start, anchor);
                if !later.is_empty() {
                    let (j, start) = later[to.index(later.len())];
                    lines[j].replace_range(start.., "*fuzz");
                }
            }
        }
        Mutation::DanglingAlias(at) => {
            let valued = valued_lines(&lines);
            if !valued.is_empty() {
                let (i, start) = valued[at.index(valued.len())];
                lines[i].replace_range(start.., "*nowhere");
            }
        }
    }
    lines.join("\n") + "\n"
}

proptest! {
    #![proptest_config(cases(4000))]

    #[test]
    fn mutations_of_the_reference(mutations in prop::collection::vec(mutation(), 1..6)) {
        let text = mutations.iter().fold(REFERENCE.to_owned(), |text, m| apply(&text, m));
        check(&text)?;
    }
}

// Structured random objects: well-formed YAML of the right kinds whose contents are mostly
// valid and now and then not (each field rarely, so that about half the files get past
// the parser to the model), with overlapping and reversed ranges, conflicting requests and
// competing policies coming from the random choices themselves.

/// Mostly one of `good`, now and then one of `bad`.
fn mostly(good: &[&'static str], bad: &[&'static str]) -> BoxedStrategy<String> {
    if bad.is_empty() {
        return prop::sample::select(good.to_vec())
            .prop_map(str::to_owned)
            .boxed();
    }
    prop_oneof![
        150 => prop::sample::select(good.to_vec()),
        1 => prop::sample::select(bad.to_vec()),
    ]
    .prop_map(str::to_owned)
    .boxed()
}

/// Like [`mostly`], or absent.
fn maybe(good: &[&'static str], bad: &[&'static str]) -> BoxedStrategy<Option<String>> {
    prop::option::of(mostly(good, bad)).boxed()
}

/// An address of the pools' neighbourhood (so requests and pools meet), now and then any.
fn address() -> BoxedStrategy<String> {
    prop_oneof![
        30 => (10..14u8, 0..=255u8).prop_map(|(c, d)| format!("192.168.{c}.{d}")),
        3 => any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
        1 => prop::sample::select(vec![
            "0.0.0.0", "255.255.255.255", "fd00::1", "::", "192.168.10", "", " 192.168.10.49 ",
            "192.168.10.49,192.168.10.50", "192.168.10.49, fd00::1", "x", "192.168.10.256",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

fn cidr() -> BoxedStrategy<String> {
    prop_oneof![
        80 => (
            10..14u8,
            0..=255u8,
            prop::sample::select(vec![24u8, 25, 26, 27, 28, 28, 29, 30, 31, 32]),
        )
            .prop_map(|(c, d, len)| format!("192.168.{c}.{d}/{len}")),
        3 => (any::<[u8; 4]>(), 0..=32u8)
            .prop_map(|(a, len)| format!("{}/{len}", std::net::Ipv4Addr::from(a))),
        2 => prop::sample::select(vec!["0.0.0.0/0", "255.255.255.255/32", "fd00::/120"])
            .prop_map(str::to_owned),
        // Far less often: not a CIDR at all.
        1 => prop::sample::select(vec![
            "10.0.0.0/33", "::/0", "10.0.0.0", "10.0.0.0/-1", "/24", "", "10.0.0.0/ 8",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

const LABEL_KEYS: &[&str] = &[
    "app",
    "tier",
    "node-role.kubernetes.io/control-plane",
    "io.kubernetes.service.name",
    "io.kubernetes.service.namespace",
];
const LABEL_VALUES: &[&str] = &["web", "edge", "", "gateway", "a", "b"];

fn labels() -> BoxedStrategy<BTreeMap<String, String>> {
    prop::collection::btree_map(mostly(LABEL_KEYS, &[""]), mostly(LABEL_VALUES, &[]), 0..3).boxed()
}

fn selector() -> BoxedStrategy<Option<Value>> {
    let expression = (
        mostly(LABEL_KEYS, &[""]),
        mostly(
            &["In", "NotIn", "Exists", "DoesNotExist"],
            &["in", "Equals", ""],
        ),
        prop::collection::vec(mostly(LABEL_VALUES, &[]), 0..3),
        prop::bool::weighted(0.02),
    )
        .prop_map(|(key, operator, values, wrong_values)| {
            // Values as the operator wants them, unless this one is to be wrong.
            let takes_values = matches!(operator.as_str(), "In" | "NotIn");
            let values = match (takes_values, values.is_empty(), wrong_values) {
                (true, true, false) => vec!["web".to_owned()],
                (false, false, false) => Vec::new(),
                _ => values,
            };
            let mut e = json!({"key": key, "operator": operator});
            if !values.is_empty() {
                e["values"] = json!(values);
            }
            e
        });
    prop::option::of(
        (
            prop::option::of(labels()),
            prop::option::of(prop::collection::vec(expression, 0..3)),
        )
            .prop_map(|(labels, expressions)| {
                let mut s = json!({});
                set(&mut s, "matchLabels", labels.map(|l| json!(l)));
                set(&mut s, "matchExpressions", expressions.map(|e| json!(e)));
                s
            }),
    )
    .boxed()
}

/// A port number, now and then out of range or not a number at all.
fn port() -> BoxedStrategy<Value> {
    prop_oneof![
        100 => prop::sample::select(vec![53i64, 80, 443, 8080]).prop_map(|p| json!(p)),
        100 => (1i64..=65535).prop_map(|p| json!(p)),
        1 => prop::sample::select(vec![0i64, -1, 65536, i64::from(i32::MAX) + 1, i64::MIN])
            .prop_map(|p| json!(p)),
        1 => prop::sample::select(vec!["http", "", "80"]).prop_map(|p| json!(p)),
    ]
    .boxed()
}

fn protocol() -> BoxedStrategy<Option<String>> {
    maybe(&["TCP", "UDP"], &["SCTP", "tcp", ""])
}

/// Inserts `value` at `key` unless it is `None`.
fn set(object: &mut Value, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        object[key] = value;
    }
}

fn service(namespace: &'static str, name: &'static str) -> BoxedStrategy<Value> {
    let port = (
        maybe(&["http", "dns"], &[""]),
        port(),
        protocol(),
        prop::option::of(port()),
    )
        .prop_map(|(name, port, protocol, target)| {
            let mut p = json!({"port": port});
            set(&mut p, "name", name.map(|n| json!(n)));
            set(&mut p, "protocol", protocol.map(|p| json!(p)));
            set(&mut p, "targetPort", target);
            p
        });
    let affinity = prop::option::of((
        mostly(&["ClientIP", "None"], &["Sticky"]),
        prop::option::of(prop_oneof![
            100 => (1i64..=86_400).prop_map(|t| json!(t)),
            1 => prop::sample::select(vec![0i64, -1, 86_401, 1 << 40]).prop_map(|t| json!(t)),
        ]),
    ));
    (
        (
            labels(),
            prop::bool::weighted(0.995),
            maybe(
                &["2025-01-01T00:00:00Z", "2024-06-30T12:00:00Z"],
                &["yesterday"],
            ),
        ),
        (
            mostly(&["LoadBalancer"], &["ClusterIP"]),
            prop::option::weighted(
                0.95,
                mostly(&["Local", "Local", "Local", "Cluster"], &["Nowhere"]),
            ),
            affinity,
        ),
        (
            prop::option::weighted(0.08, address()),
            prop::option::weighted(0.05, address()),
            prop::collection::vec(port, 0..4),
            prop::collection::vec(address(), 0..3),
        ),
    )
        .prop_map(
            move |(
                (labels, named, created),
                (type_, policy, affinity),
                (annotation, lb_ip, ports, status),
            )| {
                let mut metadata = json!({"labels": labels});
                set(&mut metadata, "name", named.then(|| json!(name)));
                set(&mut metadata, "namespace", Some(json!(namespace)));
                set(
                    &mut metadata,
                    "creationTimestamp",
                    created.map(|c| json!(c)),
                );
                set(
                    &mut metadata,
                    "annotations",
                    annotation.map(|ip| json!({"lbipam.cilium.io/ips": ip})),
                );
                let mut spec = json!({"ports": ports, "type": type_});
                set(&mut spec, "externalTrafficPolicy", policy.map(|p| json!(p)));
                if let Some((affinity, timeout)) = affinity {
                    spec["sessionAffinity"] = json!(affinity);
                    set(
                        &mut spec,
                        "sessionAffinityConfig",
                        timeout.map(|t| json!({"clientIP": {"timeoutSeconds": t}})),
                    );
                }
                set(&mut spec, "loadBalancerIP", lb_ip.map(|ip| json!(ip)));
                let ingress: Vec<Value> = status.iter().map(|ip| json!({"ip": ip})).collect();
                json!({
                    "apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec,
                    "status": {"loadBalancer": {"ingress": ingress}},
                })
            },
        )
        .boxed()
}

fn endpoint_slice(namespace: &'static str, name: &'static str) -> BoxedStrategy<Value> {
    let backend = prop_oneof![
        200 => (1..3u8, 1..20u8).prop_map(|(c, d)| format!("10.0.{c}.{d}")),
        1 => prop::sample::select(vec!["fd00::1", "10.0.1", "", "x"]).prop_map(str::to_owned),
    ];
    let endpoint = (
        prop::collection::vec(backend, 0..3),
        maybe(&["worker-1", "worker-1", "worker-2", "cp-1"], &[""]),
        prop::option::of(prop::bool::weighted(0.8)),
    )
        .prop_map(|(addresses, node, ready)| {
            let mut e = json!({"addresses": addresses});
            set(&mut e, "nodeName", node.map(|n| json!(n)));
            set(&mut e, "conditions", ready.map(|r| json!({"ready": r})));
            e
        });
    let slice_port = (
        maybe(&["http", "dns"], &[""]),
        prop::option::of(port()),
        protocol(),
    )
        .prop_map(|(name, port, protocol)| {
            let mut p = json!({});
            set(&mut p, "name", name.map(|n| json!(n)));
            set(&mut p, "port", port);
            set(&mut p, "protocol", protocol.map(|p| json!(p)));
            p
        });
    (
        mostly(&["a", "b", "c"], &["x"]),
        prop::bool::weighted(0.95),
        mostly(&["IPv4"], &["IPv6", "FQDN", ""]),
        prop::collection::vec(endpoint, 1..4),
        prop::option::of(prop::collection::vec(slice_port, 0..3)),
    )
        .prop_map(move |(suffix, labelled, kind, endpoints, ports)| {
            let mut metadata = json!({"name": format!("{name}-{suffix}"), "namespace": namespace});
            set(
                &mut metadata,
                "labels",
                labelled.then(|| json!({"kubernetes.io/service-name": name})),
            );
            let mut s = json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": metadata, "addressType": kind, "endpoints": endpoints,
            });
            set(&mut s, "ports", ports.map(|p| json!(p)));
            s
        })
        .boxed()
}

fn node(name: &'static str) -> BoxedStrategy<Value> {
    (labels(), maybe(&["True", "True", "False"], &["Unknown"]))
        .prop_map(move |(labels, ready)| {
            let conditions: Vec<Value> = ready
                .into_iter()
                .map(|r| json!({"type": "Ready", "status": r}))
                .collect();
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "status": {"conditions": conditions},
            })
        })
        .boxed()
}

fn pool(name: &'static str) -> BoxedStrategy<Value> {
    let block = prop_oneof![
        150 => cidr().prop_map(|c| json!({"cidr": c})),
        // Start and stop drawn independently: reversed about half of the time.
        50 => (address(), prop::option::of(address())).prop_map(|(start, stop)| match stop {
            Some(stop) => json!({"start": start, "stop": stop}),
            None => json!({"start": start}),
        }),
        1 => prop_oneof![
            (cidr(), address()).prop_map(|(c, s)| json!({"cidr": c, "start": s})),
            address().prop_map(|s| json!({"stop": s})),
            Just(json!({})),
        ],
    ];
    (
        mostly(&["cilium.io/v2alpha1", "cilium.io/v2"], &["cilium.io/v1"]),
        prop::collection::vec(block, 1..3),
        maybe(&["Yes", "No"], &["Maybe"]),
        prop::option::weighted(0.2, selector()).prop_map(Option::flatten),
        prop::option::of(prop::bool::weighted(0.2)),
    )
        .prop_map(move |(version, blocks, first_last, selector, disabled)| {
            let mut spec = json!({"blocks": blocks});
            set(&mut spec, "allowFirstLastIPs", first_last.map(|f| json!(f)));
            set(&mut spec, "serviceSelector", selector);
            set(&mut spec, "disabled", disabled.map(|d| json!(d)));
            json!({
                "apiVersion": version, "kind": "CiliumLoadBalancerIPPool",
                "metadata": {"name": name}, "spec": spec,
            })
        })
        .boxed()
}

fn regex() -> BoxedStrategy<String> {
    prop_oneof![
        20 => prop::sample::select(vec![
            "^e.*", "ens[0-9]+", "^ens18$", "eth", "", ".*", "(?i)ENS", "^(e|l)[a-z]+[0-9]*$",
        ])
        .prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "(", "[a-", "*", "a{2,1}", "\\", "(?P<x>", "x{99999}{99999}", "\\p{Nope}", "(?<=a)b",
        ])
        .prop_map(str::to_owned),
        1 => "[ -~]{0,12}",
    ]
    .boxed()
}

fn l2_policy(name: &'static str) -> BoxedStrategy<Value> {
    (
        prop::option::of(prop::collection::vec(regex(), 0..3)),
        prop::option::of(prop::bool::weighted(0.9)),
        prop::option::weighted(0.3, selector()).prop_map(Option::flatten),
        prop::option::weighted(0.3, selector()).prop_map(Option::flatten),
    )
        .prop_map(move |(interfaces, lb_ips, nodes, services)| {
            let mut spec = json!({});
            set(&mut spec, "interfaces", interfaces.map(|i| json!(i)));
            set(&mut spec, "loadBalancerIPs", lb_ips.map(|b| json!(b)));
            set(&mut spec, "nodeSelector", nodes);
            set(&mut spec, "serviceSelector", services);
            json!({
                "apiVersion": "cilium.io/v2alpha1", "kind": "CiliumL2AnnouncementPolicy",
                "metadata": {"name": name}, "spec": spec,
            })
        })
        .boxed()
}

/// Picks some of `names` (each at most once) and makes an object of each.
fn some<N: Clone + std::fmt::Debug + 'static>(
    names: &[N],
    how_many: std::ops::RangeInclusive<usize>,
    object: fn(N) -> BoxedStrategy<Value>,
) -> BoxedStrategy<Vec<Value>> {
    prop::sample::subsequence(names.to_vec(), how_many)
        .prop_flat_map(move |names| names.into_iter().map(object).collect::<Vec<_>>())
        .boxed()
}

const SERVICES: &[(&str, &str)] = &[
    ("gateway", "a"),
    ("gateway", "b"),
    ("web", "c"),
    ("web", "a"),
];

fn objects() -> impl Strategy<Value = String> {
    (
        some(&["pool-a", "pool-b", "pool-c"], 1..=3, pool),
        some(&["l2-a", "l2-b"], 1..=2, l2_policy),
        some(SERVICES, 0..=4, |(ns, name)| service(ns, name)),
        some(SERVICES, 0..=4, |(ns, name)| endpoint_slice(ns, name)),
        some(&["worker-1", "worker-2", "cp-1"], 1..=3, node),
        any::<bool>(),
    )
        .prop_map(|(pools, policies, services, slices, nodes, as_list)| {
            let all: Vec<Value> = pools
                .into_iter()
                .chain(policies)
                .chain(services)
                .chain(slices)
                .chain(nodes)
                .collect();
            if as_list {
                let list = json!({"apiVersion": "v1", "kind": "List", "items": all});
                serde_yaml_ng::to_string(&list).unwrap()
            } else {
                all.iter()
                    .map(|o| serde_yaml_ng::to_string(o).unwrap())
                    .collect::<Vec<_>>()
                    .join("---\n")
            }
        })
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn structured_random_objects(text in objects()) {
        check(&text)?;
    }
}

/// Runs the pipeline on `text` on another thread and fails if it takes longer than `limit`
/// (a hang is reported rather than waited out).
fn within(limit: Duration, text: String) -> Result<(), TestCaseError> {
    let (done, finished) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(check(&text));
    });
    match finished.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => Err(TestCaseError::fail(format!(
            "still running after {:?}",
            start.elapsed()
        ))),
    }
}

fn parse_errors(text: &str) -> Vec<String> {
    match file::parse(SOURCE, text) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_billion_laughs_is_refused_quickly() {
    // Ten levels of ten aliases each: 10^9 strings if expanded.
    let mut text = String::from("apiVersion: v1\nkind: Node\nmetadata:\n  name: lol\n");
    text += "lol0: &l0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n";
    for level in 1..10 {
        let prev = level - 1;
        let aliases = vec![format!("*l{prev}"); 10].join(", ");
        text += &format!("lol{level}: &l{level} [{aliases}]\n");
    }
    within(Duration::from_secs(1), text.clone()).unwrap();
    let errors = parse_errors(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with(SOURCE), "{errors:?}");

    // The same bomb inside an object field the parser reads.
    let labels = text.replace("lol9: &l9", "  labels: &l9");
    within(Duration::from_secs(1), labels).unwrap();
}

#[test]
fn two_hundred_levels_of_nesting_are_refused_quickly() {
    let depth = 200;
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: deep\n";
    let flow_seq = format!(
        "{node}  labels: {}x{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let flow_map = format!(
        "{node}  labels: {}x{}\n",
        "{a: ".repeat(depth),
        "}".repeat(depth)
    );
    let mut block = node.to_owned();
    for level in 0..depth {
        block += &format!("{}k{level}:\n", "  ".repeat(level));
    }
    let mut items = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for level in 0..depth {
        items += &format!("{}- \n", "  ".repeat(level + 1));
    }
    for text in [flow_seq, flow_map, block, items] {
        within(Duration::from_secs(1), text.clone()).unwrap();
        let errors = parse_errors(&text);
        assert!(!errors.is_empty(), "{text}");
        assert!(errors.iter().all(|e| e.starts_with(SOURCE)), "{errors:?}");
    }
}

#[test]
fn nesting_just_under_the_parsers_limit_is_read_without_running_out_of_stack() {
    // Deep values where they are ignored (an unknown field), where they are a type error
    // (labels), and Lists inside Lists, which the reader walks itself.
    let depth = 120;
    let deep = format!("{}x{}", "[".repeat(depth), "]".repeat(depth));
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: deep\n";
    let mut list = String::new();
    for _ in 0..depth / 2 {
        list += "{apiVersion: v1, kind: List, items: [";
    }
    list += "{apiVersion: v1, kind: Node, metadata: {name: n}}";
    list += &"]}".repeat(depth / 2);
    for text in [
        format!("{node}spec:\n  unknown: {deep}\n"),
        format!("{node}  labels: {deep}\n"),
        format!("{node}  annotations:\n    a: {deep}\n"),
        format!("{list}\n"),
    ] {
        within(Duration::from_secs(1), text).unwrap();
    }
}
