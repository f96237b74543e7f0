//! A connect rejected by ICMP, live, with real gateways: in two network namespaces this
//! test creates, nginx and HAProxy proxy to a backend address that the other namespace, a
//! router, answers with ICMP "communication administratively prohibited" (a `prohibit`
//! route: what a firewall's REJECT rule does). nginx answers 502 and logs `connect() failed
//! (113: No route to host) while connecting to upstream`, HAProxy answers 503 with
//! termination state `SC`; gatescope, capturing live on the proxy's interface with a filter
//! on the backend's port, must report `connect_unreachable` for each, naming the router, the
//! very line nginx logged and HAProxy's state.
//!
//! Needs root (namespaces, live capture), nginx and HAProxy (installed with apt-get when
//! missing, as root). Under `CI=true` it fails when it cannot run; elsewhere it says why and skips.
//! Traffic stays inside the namespaces, which are deleted at the end.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const ROUTER: &str = "10.77.0.2";
const BACKEND: &str = "10.77.9.9";
const NGINX_LINE: &str = "connect() failed (113: No route to host) while connecting to upstream";

#[test]
fn gateways_failing_on_an_icmp_reject_are_connect_unreachable_live() {
    let Some((nginx, haproxy)) = preflight() else {
        return;
    };
    let net = match Namespaces::create() {
        Ok(n) => n,
        Err(e) => return skip(&format!("cannot set up network namespaces: {e}")),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.path().join("tmp").join(t)).expect("temp dirs");
    }
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir.path())).expect("nginx.conf");
    let _nginx = Proc::spawn(
        net.exec(&nginx)
            .args(["-c"])
            .arg(&conf)
            .args(["-p"])
            .arg(dir.path()),
        libc::SIGQUIT,
    );
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, HAPROXY_CFG).expect("haproxy.cfg");
    let mut haproxy = Proc::spawn(
        net.exec(&haproxy)
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdout(Stdio::piped()),
        libc::SIGTERM,
    );
    let haproxy_log = lines_of(haproxy.child.stdout.take().expect("stdout"));
    for (name, port) in [("nginx", NGINX_PORT), ("HAProxy", HAPROXY_PORT)] {
        assert!(
            wait_until(Duration::from_secs(10), || net
                .curl(port, "/healthz")
                .is_some_and(|s| s != "000")),
            "{name} did not start listening in the namespace (see {})",
            dir.path().display()
        );
    }

    let mut live = Proc::spawn(
        net.exec(Path::new(env!("CARGO_BIN_EXE_gatescope")))
            .args(["live", "-i", &net.proxy_if, "-f", "tcp port 8080"])
            .args(["--format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        libc::SIGINT,
    );
    let stdout = live.child.stdout.take().expect("stdout");
    let stdout = thread::spawn(move || read_all(stdout));
    let stderr = lines_of(live.child.stderr.take().expect("stderr"));
    let ready = format!("capturing on {}", net.proxy_if);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut said = Vec::new();
    while !said.iter().any(|l: &String| l.contains(&ready)) && Instant::now() < deadline {
        if let Ok(l) = stderr.recv_timeout(Duration::from_millis(100)) {
            said.push(l);
        }
    }
    assert!(
        said.iter().any(|l| l.contains(&ready)),
        "gatescope live did not start: {said:?}"
    );

    let nginx_status = net.curl(NGINX_PORT, "/api/orders").unwrap_or_default();
    let haproxy_status = net.curl(HAPROXY_PORT, "/api/orders").unwrap_or_default();
    thread::sleep(Duration::from_millis(300));
    live.stop(Duration::from_secs(10));
    let records: Vec<Value> = stdout
        .join()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let findings: Vec<(&str, &str, &str, &str)> = records
        .iter()
        .filter(|r| r["type"] == "finding")
        .map(|f| {
            fn s(v: &Value) -> &str {
                v.as_str().unwrap_or_default()
            }
            (
                s(&f["kind"]),
                s(&f["evidence"]["icmp_from"]),
                s(&f["hint"]["nginx"]),
                s(&f["hint"]["haproxy"]),
            )
        })
        .collect();
    let error_log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    let nginx_logged = error_log.lines().any(|l| l.contains(NGINX_LINE));
    // HAProxy's log line for the request: "<status> <termination state> GET /api/orders".
    let haproxy_line = haproxy_log
        .try_iter()
        .find(|l| l.contains("/api/orders"))
        .unwrap_or_default();
    let haproxy_state: String = haproxy_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .chars()
        .take(2)
        .collect();
    let one = ("connect_unreachable", ROUTER, NGINX_LINE, "SC");
    assert_eq!(
        (
            nginx_status.as_str(),
            nginx_logged,
            haproxy_status.as_str(),
            haproxy_state.as_str(),
            findings.clone(),
        ),
        ("502", true, "503", "SC", vec![one, one]),
        "nginx error log:\n{error_log}\nHAProxy: {haproxy_line}\ngatescope:\n{records:#?}"
    );
}

const NGINX_PORT: u16 = 8081;
const HAPROXY_PORT: u16 = 8082;

const HAPROXY_CFG: &str = r#"# Written by tests/e2e_unreachable.rs.
global
    log stdout format raw local0 info
    nbthread 1

defaults
    mode http
    log global
    option dontlognull
    log-format "%ST %tsc %HM %HU"
    timeout connect 3s
    timeout client 10s
    timeout server 10s
    retries 0

frontend fe
    bind 127.0.0.1:8082
    http-request return status 204 if { path /healthz }
    default_backend be

backend be
    server s1 10.77.9.9:8080
"#;

fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# Rendered by tests/e2e_unreachable.rs.
user root;
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    upstream backend {{ server {BACKEND}:8080; }}
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        proxy_connect_timeout 3s;
        location = /healthz {{ return 204; }}
        location / {{ proxy_pass http://backend; }}
    }}
}}
"#
    )
}

// ---------------------------------------------------------------------------------------------
// The environment

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn skip(reason: &str) {
    assert!(!ci(), "e2e_unreachable cannot run under CI=true: {reason}");
    eprintln!("e2e_unreachable: skipped: {reason}");
}

/// Root, `ip`, `curl`, nginx and HAProxy (installed when missing): the gateways' paths, or
/// `None` (skipped).
fn preflight() -> Option<(PathBuf, PathBuf)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root for network namespaces and live capture (run the test as root)");
        return None;
    }
    for tool in ["ip", "curl"] {
        if find_tool(tool).is_none() {
            skip(&format!(
                "{tool} missing; run: sudo apt-get install -y iproute2 curl"
            ));
            return None;
        }
    }
    let missing: Vec<&str> = ["nginx", "haproxy"]
        .into_iter()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "e2e_unreachable: {} missing; installing with apt-get",
            missing.join(", ")
        );
        let install = || {
            run(Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))
            .is_some_and(|o| o.status.success())
        };
        let installed =
            install() || (run(Command::new("apt-get").arg("update")).is_some() && install());
        if !installed {
            let line = format!("sudo apt-get install -y {}", missing.join(" "));
            skip(&format!(
                "{} missing and apt-get failed; run: {line}",
                missing.join(", ")
            ));
            return None;
        }
    }
    match (find_tool("nginx"), find_tool("haproxy")) {
        (Some(n), Some(h)) => Some((n, h)),
        _ => {
            skip("nginx or haproxy still missing; run: sudo apt-get install -y nginx haproxy");
            None
        }
    }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Runs a command to completion (bounded: these are `ip`, `curl` and `apt-get`).
fn run(cmd: &mut Command) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let out = thread::spawn(move || out.map(read_all).unwrap_or_default());
    let err = thread::spawn(move || err.map(read_all).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Some(Output {
        status,
        stdout: out.join().unwrap_or_default().into_bytes(),
        stderr: err.join().unwrap_or_default().into_bytes(),
    })
}

fn read_all<R: Read>(mut r: R) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

fn lines_of<R: Read + Send + 'static>(r: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The proxy's namespace (nginx, gatescope) and the router's, joined by a veth pair; the
/// router rejects the backend's address. Deleted (with the veth pair) on drop.
struct Namespaces {
    proxy: String,
    router: String,
    proxy_if: String,
}

impl Namespaces {
    fn create() -> Result<Namespaces, String> {
        let id = std::process::id();
        let n = Namespaces {
            proxy: format!("gs-proxy-{id}"),
            router: format!("gs-router-{id}"),
            proxy_if: format!("gsp{}", id % 100_000),
        };
        let router_if = format!("gsr{}", id % 100_000);
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), n.proxy.clone()],
            vec!["netns".into(), "add".into(), n.router.clone()],
            vec![
                "link".into(),
                "add".into(),
                n.proxy_if.clone(),
                "netns".into(),
                n.proxy.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                router_if.clone(),
                "netns".into(),
                n.router.clone(),
            ],
        ];
        let in_ns = |ns: &str, args: &[&str]| -> Vec<String> {
            ["-n", ns]
                .iter()
                .chain(args)
                .map(|s| s.to_string())
                .collect()
        };
        let more = vec![
            in_ns(
                &n.proxy,
                &["addr", "add", "10.77.0.1/24", "dev", &n.proxy_if],
            ),
            in_ns(
                &n.router,
                &["addr", "add", "10.77.0.2/24", "dev", &router_if],
            ),
            in_ns(&n.proxy, &["link", "set", &n.proxy_if, "up"]),
            in_ns(&n.router, &["link", "set", &router_if, "up"]),
            in_ns(&n.proxy, &["link", "set", "lo", "up"]),
            in_ns(&n.router, &["link", "set", "lo", "up"]),
            in_ns(&n.proxy, &["route", "add", "10.77.9.0/24", "via", ROUTER]),
            // The reject: a forwarded packet to this address gets ICMP "communication
            // administratively prohibited" back, as from a firewall's REJECT rule.
            in_ns(
                &n.router,
                &["route", "add", "prohibit", &format!("{BACKEND}/32")],
            ),
        ];
        for args in steps.into_iter().chain(more) {
            let out = run(Command::new("ip").args(&args))
                .ok_or_else(|| format!("ip {} did not finish", args.join(" ")))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        let fwd = run(n
            .exec_in(&n.router, Path::new("sysctl"))
            .args(["-qw", "net.ipv4.ip_forward=1"]))
        .is_some_and(|o| o.status.success());
        if !fwd {
            return Err("cannot enable forwarding in the router namespace".into());
        }
        Ok(n)
    }

    fn exec_in(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// `program` in the proxy's namespace.
    fn exec(&self, program: &Path) -> Command {
        self.exec_in(&self.proxy, program)
    }

    /// GET `path` from the gateway on `port`, in the proxy's namespace: the status code
    /// ("000": none).
    fn curl(&self, port: u16, path: &str) -> Option<String> {
        let out = run(self
            .exec(Path::new("curl"))
            .args(["-s", "-o", "/dev/null", "-m", "8", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}{path}")))?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.proxy, &self.router] {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}

/// A process started for the test, stopped (by its PID) when dropped.
struct Proc {
    child: Child,
    signal: i32,
}

impl Proc {
    fn spawn(cmd: &mut Command, signal: i32) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc { child, signal }
    }

    /// Sends the stop signal, waits up to `grace`, then kills.
    fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by PID (`ip netns exec` execs the program, so the
        // PID is the program's).
        unsafe { libc::kill(self.child.id() as i32, self.signal) };
        if !wait_until(grace, || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
