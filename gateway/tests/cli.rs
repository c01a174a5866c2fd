//! Black-box tests of the `lattice` binary: configuration errors before anything listens,
//! `${VAR}` interpolation from the real environment, development certificates and mTLS end to
//! end with `curl`, no credential in logs or responses, and a graceful stop on SIGTERM.
//!
//! Every child process is owned by a [`Guard`] that kills and reaps it on drop, so a failing
//! assertion never leaves a server behind. Waits are bounded polls with deadlines.
// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a server may take to print its listening line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit (a rejected config, or a server after SIGTERM).
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
const CURL: &str = "/usr/bin/curl";
const GREETING: &str = "Hello from the Lattice mock provider";
const UNSET_VAR: &str = "LATTICE_TEST_SURELY_UNSET_VAR";

// ---------------------------------------------------------------------------------------------
// Process plumbing.

fn lattice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lattice"));
    // The log filter override would make the access-log assertions depend on the caller's shell.
    c.env_remove("LATTICE_LOG").stdin(Stdio::null());
    c
}

/// Kills and reaps the child when dropped (also while unwinding from a failed assertion).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `lattice` process whose stdout and stderr are drained by threads (so a chatty
/// debug log can never fill a pipe and stall it).
struct Proc {
    guard: Guard,
    lines: mpsc::Receiver<String>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// What a process left behind once it exited.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn lattice");
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let guard = Guard(child);
        let (tx, lines) = mpsc::channel();
        let stdout = thread::spawn(move || {
            let mut all = String::new();
            let mut reader = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        all.push_str(&line);
                        let _ = tx.send(line.trim_end_matches(['\r', '\n']).to_string());
                    }
                }
            }
            all
        });
        let stderr = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        Proc {
            guard,
            lines,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    /// Polls for the exit until `timeout`; `None` if the process is still running.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.guard.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (if still running) and returns everything it wrote.
    fn kill_and_collect(&mut self) -> (String, String) {
        let _ = self.guard.0.kill();
        let _ = self.guard.0.wait();
        self.collect()
    }

    fn collect(&mut self) -> (String, String) {
        let out = self.stdout.take().map(|h| h.join().unwrap_or_default());
        let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
        (out.unwrap_or_default(), err.unwrap_or_default())
    }

    /// Waits up to `timeout` for the process to exit by itself; fails the test (after killing
    /// it) when it does not.
    fn finish(mut self, timeout: Duration, what: &str) -> Finished {
        let start = Instant::now();
        match self.wait_exit(timeout) {
            Some(status) => {
                let elapsed = start.elapsed();
                let (stdout, stderr) = self.collect();
                Finished {
                    status,
                    stdout,
                    stderr,
                    elapsed,
                }
            }
            None => {
                let (stdout, stderr) = self.kill_and_collect();
                panic!("{what}: still running after {timeout:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
            }
        }
    }
}

/// Runs a short-lived `lattice` command to completion (bounded).
fn run(args: &[&str]) -> Finished {
    let mut cmd = lattice();
    cmd.args(args);
    Proc::spawn(&mut cmd).finish(EXIT_TIMEOUT, &format!("lattice {}", args.join(" ")))
}

/// A `lattice serve` that printed its listening line.
struct Served {
    proc: Proc,
    addr: SocketAddr,
    scheme: String,
    ready_line: String,
}

fn serve(config: &Path) -> Served {
    serve_with(config, &[])
}

fn serve_with(config: &Path, env: &[(&str, Option<&str>)]) -> Served {
    let mut cmd = lattice();
    cmd.arg("serve").arg("--config").arg(config);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut proc = Proc::spawn(&mut cmd);
    let line = match proc.lines.recv_timeout(READY_TIMEOUT) {
        Ok(line) => line,
        Err(e) => {
            let (stdout, stderr) = proc.kill_and_collect();
            panic!(
                "no listening line from `lattice serve --config {}` ({e})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                config.display()
            );
        }
    };
    let Some(rest) = line.strip_prefix("lattice listening on ") else {
        let (stdout, stderr) = proc.kill_and_collect();
        panic!("unexpected first stdout line {line:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    };
    let (scheme, hostport) = rest
        .split_once("://")
        .unwrap_or_else(|| panic!("no scheme in {line:?}"));
    let addr: SocketAddr = hostport
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
    assert_ne!(
        addr.port(),
        0,
        "the listening line must show the bound port: {line:?}"
    );
    Served {
        proc,
        addr,
        scheme: scheme.to_string(),
        ready_line: line,
    }
}

impl Served {
    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// SIGTERM, then the process must exit 0 within [`EXIT_TIMEOUT`], having printed nothing
    /// but its listening line on stdout.
    fn stop(self) -> Finished {
        let kill = Command::new("kill")
            .args(["-TERM", &self.proc.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM failed: {kill}");
        let ready_line = self.ready_line;
        let done = self.proc.finish(EXIT_TIMEOUT, "lattice serve after SIGTERM");
        assert!(
            done.status.success(),
            "lattice serve must exit 0 after SIGTERM, got {}\n--- stderr\n{}",
            done.status,
            done.stderr
        );
        assert_eq!(
            done.stdout,
            format!("{ready_line}\n"),
            "stdout must hold exactly the listening line"
        );
        done
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// A loopback port that was free a moment ago (bound, read, released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), the raw response back.
fn http_raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    s.write_all(request.as_bytes()).expect("write request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    String::from_utf8_lossy(&buf).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
}

// ---------------------------------------------------------------------------------------------
// curl.

struct CurlOut {
    success: bool,
    /// `%{http_code}`: "000" when no response arrived.
    code: String,
    /// `%{http_version}`: "1.1", "2", or "0" when no response arrived.
    version: String,
    /// Response headers and body (`-i`).
    response: String,
    stderr: String,
}

const MARK: &str = "\n@@curl@@";

fn curl(args: &[&str]) -> CurlOut {
    let out = Command::new(CURL)
        .args(["-sS", "-i", "--max-time", "20", "-w"])
        .arg(format!("{MARK}%{{http_code}} %{{http_version}}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (response, tail) = stdout
        .rsplit_once(MARK)
        .unwrap_or_else(|| panic!("no -w trailer in curl output {stdout:?}"));
    let (code, version) = tail.trim().split_once(' ').unwrap_or((tail.trim(), ""));
    CurlOut {
        success: out.status.success(),
        code: code.to_string(),
        version: version.to_string(),
        response: response.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const CHAT: &str = r#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#;

// ---------------------------------------------------------------------------------------------
// 1. Bad configurations fail before anything listens.

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstreams.mock]
kind = "mock"

[[routes]]
model = "demo"
upstream = "mock"
"#;

/// `lattice serve` and `lattice check` on `text` both exit non-zero without listening, and
/// stderr names the file and contains every fragment in `expected`.
fn assert_rejected(text: &str, expected: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "bad.toml", text);
    let path_s = path.to_str().expect("utf-8 temp path");

    let mut cmd = lattice();
    cmd.env_remove(UNSET_VAR).args(["serve", "--config", path_s]);
    let done = Proc::spawn(&mut cmd).finish(EXIT_TIMEOUT, "lattice serve on a bad config");
    assert!(
        !done.status.success(),
        "serve must fail on a bad config; stderr:\n{}",
        done.stderr
    );
    assert!(
        !done.stdout.contains("listening"),
        "serve printed a listening line for a bad config: {:?}",
        done.stdout
    );
    for want in std::iter::once(path_s).chain(expected.iter().copied()) {
        assert!(
            done.stderr.contains(want),
            "serve's stderr must contain {want:?}; got:\n{}",
            done.stderr
        );
    }

    let mut cmd = lattice();
    cmd.env_remove(UNSET_VAR).args(["check", "--config", path_s]);
    let done = Proc::spawn(&mut cmd).finish(EXIT_TIMEOUT, "lattice check on a bad config");
    assert!(
        !done.status.success(),
        "check must fail on a bad config; stdout:\n{}",
        done.stdout
    );
    for want in std::iter::once(path_s).chain(expected.iter().copied()) {
        assert!(
            done.stderr.contains(want),
            "check's stderr must contain {want:?}; got:\n{}",
            done.stderr
        );
    }
}

#[test]
fn bad_config_unknown_key() {
    assert_rejected(
        &GOOD.replace("[server]\n", "[server]\nlisen = \"127.0.0.1:0\"\n"),
        &["server.lisen", "unknown field"],
    );
}

#[test]
fn bad_config_wrong_type() {
    assert_rejected(
        &GOOD.replace("[server]\n", "[server]\nmax_body_bytes = \"big\"\n"),
        &["server.max_body_bytes", "invalid type"],
    );
}

#[test]
fn bad_config_missing_env_var() {
    let text = format!(
        "{GOOD}\n[upstreams.oa]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         api_key = \"${{{UNSET_VAR}}}\"\n"
    );
    assert_rejected(&text, &["upstreams.oa.api_key", UNSET_VAR]);
}

#[test]
fn bad_config_unreadable_cert() {
    let text = format!("{GOOD}\n[server.tls]\ncert = \"/nonexistent/x.pem\"\nkey = \"/nonexistent/x.key\"\n");
    assert_rejected(&text, &["server.tls.cert", "/nonexistent/x.pem"]);
}

#[test]
fn bad_config_route_to_unknown_upstream() {
    assert_rejected(
        &GOOD.replace("upstream = \"mock\"", "upstream = \"nowhere\""),
        &["routes[0].upstream", "nowhere"],
    );
}

#[test]
fn bad_config_not_toml() {
    assert_rejected("[server\nlisten = ", &["not valid TOML"]);
}

#[test]
fn taken_port_fails_without_listening() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("local_addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(
        dir.path(),
        "taken.toml",
        &GOOD.replace("127.0.0.1:0", &addr.to_string()),
    );
    let mut cmd = lattice();
    cmd.arg("serve").arg("--config").arg(&path);
    let done = Proc::spawn(&mut cmd).finish(EXIT_TIMEOUT, "lattice serve on a taken port");
    assert!(!done.status.success(), "serve must fail on a taken port");
    assert!(!done.stdout.contains("listening"), "{:?}", done.stdout);
    assert!(
        done.stderr.contains(&addr.to_string()),
        "stderr must name the address: {}",
        done.stderr
    );
    drop(taken);
}

#[test]
fn check_accepts_good_configs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "good.toml", GOOD);
    let done = run(&["check", "--config", path.to_str().expect("utf-8")]);
    assert!(
        done.status.success(),
        "check must accept a good config; stderr:\n{}",
        done.stderr
    );
    assert!(done.stdout.contains("ok"), "{:?}", done.stdout);

    // The shipped quickstart must validate with nothing set in the environment.
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/quickstart.toml");
    let mut cmd = lattice();
    cmd.arg("check").arg("--config").arg(&quickstart);
    for var in [
        "LATTICE_LISTEN",
        "LATTICE_LOG_FORMAT",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY",
    ] {
        cmd.env_remove(var);
    }
    let done = Proc::spawn(&mut cmd).finish(EXIT_TIMEOUT, "lattice check quickstart");
    assert!(
        done.status.success(),
        "deploy/quickstart.toml must validate; stderr:\n{}",
        done.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Interpolation from the real environment.

const ENV_LISTEN: &str = r#"
[server]
listen = "${LATTICE_T_LISTEN:-127.0.0.1:0}"

[upstreams.mock]
kind = "mock"

[[routes]]
model = "demo"
upstream = "mock"
"#;

fn assert_healthy(addr: SocketAddr) {
    let resp = get(addr, "/healthz");
    assert!(resp.starts_with("HTTP/1.1 200"), "GET /healthz: {resp:?}");
}

#[test]
fn listen_default_applies_when_var_unset_or_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "env.toml", ENV_LISTEN);
    for value in [None, Some("")] {
        let s = serve_with(&path, &[("LATTICE_T_LISTEN", value)]);
        assert_eq!(s.scheme, "http");
        assert_eq!(s.addr.ip().to_string(), "127.0.0.1", "{}", s.ready_line);
        assert_healthy(s.addr);
        s.stop();
    }
}

#[test]
fn listen_taken_from_env_var() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "env.toml", ENV_LISTEN);
    let port = free_port();
    let want = format!("127.0.0.1:{port}");
    let s = serve_with(&path, &[("LATTICE_T_LISTEN", Some(&want))]);
    assert_eq!(s.ready_line, format!("lattice listening on http://{want}"));
    assert_eq!(s.port(), port);
    assert_healthy(s.addr);
    s.stop();
}

// ---------------------------------------------------------------------------------------------
// 3. Development certificates and mTLS end to end.

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn certs_init(dir: &Path) {
    let done = run(&["certs", "init", "--dir", dir.to_str().expect("utf-8")]);
    assert!(done.status.success(), "certs init failed:\n{}", done.stderr);
    for f in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        let p = dir.join(f);
        assert!(p.is_file(), "certs init must write {}", p.display());
        assert!(
            done.stdout.contains(&p.display().to_string()),
            "certs init must report {}: {:?}",
            p.display(),
            done.stdout
        );
        if f.ends_with(".key") {
            assert_eq!(mode(&p), 0o600, "{} must be mode 0600", p.display());
        }
    }
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("read ca.pem");
    assert!(ca.contains("-----BEGIN CERTIFICATE-----"), "{ca}");
}

fn tls_config(d: &Path, client_auth: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[server.tls]
cert = "{d}/server.pem"
key = "{d}/server.key"
client_ca = "{d}/ca.pem"
client_auth = "{client_auth}"

[upstreams.mock]
kind = "mock"

[[routes]]
model = "demo"
upstream = "mock"
"#,
        d = d.display()
    )
}

/// A chat call to `demo` over https://localhost:PORT, trusting `ca`, with `extra` curl flags.
fn tls_chat(port: u16, ca: &Path, extra: &[&str]) -> CurlOut {
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/v1/chat/completions");
    let mut args = vec![
        "--resolve",
        &resolve,
        "--cacert",
        ca.to_str().expect("utf-8"),
        "-H",
        "content-type: application/json",
        "--data-binary",
        CHAT,
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

fn assert_ok_chat(out: &CurlOut, what: &str) {
    assert!(
        out.success && out.code == "200",
        "{what}: want 200, got code {} (curl ok: {})\n{}\n{}",
        out.code,
        out.success,
        out.stderr,
        out.response
    );
    assert!(out.response.contains(GREETING), "{what}: {}", out.response);
}

fn assert_refused(out: &CurlOut, what: &str) {
    assert!(
        !out.success && out.code != "200" && !out.response.contains(GREETING),
        "{what}: the call must fail, got code {} (curl ok: {})\n{}",
        out.code,
        out.success,
        out.response
    );
}

#[test]
fn certs_client_issues_from_the_same_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("pki");
    certs_init(&d);
    let done = run(&[
        "certs",
        "client",
        "--dir",
        d.to_str().expect("utf-8"),
        "--name",
        "agent2",
    ]);
    assert!(done.status.success(), "certs client failed:\n{}", done.stderr);
    assert!(d.join("agent2.pem").is_file());
    assert_eq!(mode(&d.join("agent2.key")), 0o600);
    // A second init would silently replace the CA: refused without --force.
    let again = run(&["certs", "init", "--dir", d.to_str().expect("utf-8")]);
    assert!(
        !again.status.success(),
        "certs init over an existing CA must fail"
    );
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
}

#[test]
fn mtls_required_end_to_end_with_curl() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("pki");
    let other = tmp.path().join("other-pki");
    certs_init(&d);
    certs_init(&other);
    let done = run(&[
        "certs",
        "client",
        "--dir",
        d.to_str().expect("utf-8"),
        "--name",
        "agent2",
    ]);
    assert!(done.status.success(), "certs client failed:\n{}", done.stderr);

    let cfg = write_file(tmp.path(), "mtls.toml", &tls_config(&d, "required"));
    let s = serve(&cfg);
    assert_eq!(s.scheme, "https", "{}", s.ready_line);
    let port = s.port();
    let ca = d.join("ca.pem");
    let p = |name: &str| d.join(name).to_str().expect("utf-8").to_string();
    let (cert, key) = (p("client.pem"), p("client.key"));
    let (cert2, key2) = (p("agent2.pem"), p("agent2.key"));
    let ocert = other.join("client.pem").to_str().expect("utf-8").to_string();
    let okey = other.join("client.key").to_str().expect("utf-8").to_string();

    let out = tls_chat(port, &ca, &["--cert", &cert, "--key", &key]);
    assert_ok_chat(&out, "client cert");

    let out = tls_chat(port, &ca, &["--http2", "--cert", &cert, "--key", &key]);
    assert_ok_chat(&out, "client cert, --http2");
    assert_eq!(out.version, "2", "ALPN must select HTTP/2");

    let out = tls_chat(port, &ca, &["--http1.1", "--cert", &cert, "--key", &key]);
    assert_ok_chat(&out, "client cert, --http1.1");
    assert_eq!(out.version, "1.1", "ALPN must select HTTP/1.1");

    let out = tls_chat(port, &ca, &["--cert", &cert2, "--key", &key2]);
    assert_ok_chat(&out, "agent2's cert");

    let out = tls_chat(port, &ca, &[]);
    assert_refused(&out, "no client cert with client_auth = required");
    let out = tls_chat(port, &ca, &["--http1.1"]);
    assert_refused(&out, "no client cert with client_auth = required, --http1.1");

    let out = tls_chat(port, &ca, &["--cert", &ocert, "--key", &okey]);
    assert_refused(&out, "client cert from another CA");

    // The other CA's server certificate is not trusted for this server either.
    let out = tls_chat(port, &other.join("ca.pem"), &["--cert", &cert, "--key", &key]);
    assert_refused(&out, "server cert checked against the wrong CA");

    // Refused handshakes leave the listener serving.
    let out = tls_chat(port, &ca, &["--cert", &cert, "--key", &key]);
    assert_ok_chat(&out, "client cert after refused handshakes");

    s.stop();
}

#[test]
fn mtls_optional_accepts_anonymous_but_not_foreign_certs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("pki");
    let other = tmp.path().join("other-pki");
    certs_init(&d);
    certs_init(&other);
    let cfg = write_file(tmp.path(), "optional.toml", &tls_config(&d, "optional"));
    let s = serve(&cfg);
    assert_eq!(s.scheme, "https", "{}", s.ready_line);
    let port = s.port();
    let ca = d.join("ca.pem");

    assert_ok_chat(&tls_chat(port, &ca, &[]), "no client cert, optional");
    assert_ok_chat(
        &tls_chat(port, &ca, &["--http1.1"]),
        "no client cert, optional, h1",
    );
    let cert = d.join("client.pem").to_str().expect("utf-8").to_string();
    let key = d.join("client.key").to_str().expect("utf-8").to_string();
    assert_ok_chat(
        &tls_chat(port, &ca, &["--cert", &cert, "--key", &key]),
        "client cert, optional",
    );
    // A certificate that is presented must still verify.
    let ocert = other.join("client.pem").to_str().expect("utf-8").to_string();
    let okey = other.join("client.key").to_str().expect("utf-8").to_string();
    assert_refused(
        &tls_chat(port, &ca, &["--cert", &ocert, "--key", &okey]),
        "foreign client cert, optional",
    );
    s.stop();
}

// ---------------------------------------------------------------------------------------------
// 4. No credential in logs, errors or responses.

#[test]
fn no_credential_in_logs_errors_or_responses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let closed = free_port();
    let cfg = write_file(
        tmp.path(),
        "secrets.toml",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"

[log]
level = "debug"

[upstreams.oa]
kind = "openai"
base_url = "http://127.0.0.1:{closed}/v1"
api_key = "sk-upstream-SECRET-123"

[[routes]]
model = "gpt-*"
upstream = "oa"

[[deny]]
model = "blocked"
status = 403
"#
        ),
    );
    let s = serve(&cfg);
    let url = format!("http://{}/v1/chat/completions", s.addr);
    let call = |body: &str| {
        curl(&[
            "-H",
            "content-type: application/json",
            "-H",
            "Authorization: Bearer sk-client-SECRET-456",
            "-H",
            "x-api-key: sk-client-SECRET-789",
            "--data-binary",
            body,
            &url,
        ])
    };
    let chat =
        |model: &str| format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);

    let cases = [
        (chat("gpt-4o"), "502", "upstream_unreachable"),
        (chat("blocked"), "403", "model_denied"),
        (chat("no-such-model"), "404", "model_not_found"),
        (
            r#"{"model": "gpt-4o", "messages": [ "#.to_string(),
            "400",
            "invalid_json",
        ),
    ];
    let mut transcript = String::new();
    for (body, status, code) in &cases {
        let out = call(body);
        assert!(out.success, "curl failed: {}", out.stderr);
        assert_eq!(&out.code, status, "{body}: {}", out.response);
        let json = out
            .response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("no body in {:?}", out.response));
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{body}: not JSON ({e}): {json:?}"));
        assert_eq!(v["error"]["code"], *code, "{body}: {json}");
        assert!(v["error"]["message"].is_string(), "OpenAI error shape: {json}");
        transcript.push_str(&out.response);
        transcript.push_str(&out.stderr);
    }

    let done = s.stop();
    for (what, text) in [
        ("responses", &transcript),
        ("stdout", &done.stdout),
        ("stderr", &done.stderr),
    ] {
        assert!(
            !text.contains("SECRET"),
            "a credential leaked into {what}:\n{text}"
        );
    }

    let access: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("lattice::access"))
        .collect();
    assert_eq!(
        access.len(),
        cases.len(),
        "one access line per request; stderr:\n{}",
        done.stderr
    );
    for (_, status, _) in &cases {
        let want = format!("status={status}");
        assert_eq!(
            access.iter().filter(|l| l.contains(&want)).count(),
            1,
            "one access line with {want}: {access:#?}"
        );
    }
}

/// A one-shot fake OpenAI upstream on loopback: answers one request with a canned chat
/// completion and hands back the raw request it received. Every wait in it is bounded.
fn fake_upstream() -> (u16, JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind fake upstream");
    let port = l.local_addr().expect("local_addr").port();
    l.set_nonblocking(true).expect("nonblocking");
    let h = thread::spawn(move || {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("fake upstream: no connection: {e}"),
            }
        };
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut buf).expect("fake upstream: read head");
            assert_ne!(n, 0, "fake upstream: connection closed in the head");
            req.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&req[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("content-length"))
            .unwrap_or(0);
        while req.len() < head_end + len {
            let n = s.read(&mut buf).expect("fake upstream: read body");
            assert_ne!(n, 0, "fake upstream: connection closed in the body");
            req.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"upstream says hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).expect("fake upstream: write");
        String::from_utf8_lossy(&req).into_owned()
    });
    (port, h)
}

#[test]
fn upstream_gets_the_gateway_key_never_the_clients() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (port, upstream) = fake_upstream();
    let cfg = write_file(
        tmp.path(),
        "forward.toml",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"

[log]
level = "debug"

[upstreams.oa]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
api_key = "sk-upstream-SECRET-123"

[[routes]]
model = "gpt-*"
upstream = "oa"
"#
        ),
    );
    let s = serve(&cfg);
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let out = curl(&[
        "-H",
        "content-type: application/json",
        "-H",
        "Authorization: Bearer sk-client-SECRET-456",
        "-H",
        "x-api-key: sk-client-SECRET-789",
        "--data-binary",
        body,
        &format!("http://{}/v1/chat/completions", s.addr),
    ]);
    let req = upstream.join().expect("fake upstream thread");
    assert!(
        out.success && out.code == "200",
        "{}\n{}",
        out.stderr,
        out.response
    );
    assert!(out.response.contains("upstream says hi"), "{}", out.response);
    assert!(!out.response.contains("SECRET"), "{}", out.response);

    assert!(req.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"), "{req}");
    assert!(req.ends_with(body), "the body must be forwarded as sent: {req}");
    let auth: Vec<&str> = req
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .collect();
    assert_eq!(
        auth,
        ["authorization: Bearer sk-upstream-SECRET-123"],
        "exactly the gateway's own credential goes upstream: {req}"
    );
    assert!(
        !req.contains("sk-client-SECRET"),
        "a client credential was forwarded: {req}"
    );

    let done = s.stop();
    assert!(!done.stderr.contains("SECRET"), "{}", done.stderr);
    assert!(
        done.stderr
            .lines()
            .any(|l| l.contains("lattice::access") && l.contains("status=200")),
        "{}",
        done.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Graceful stop.

#[test]
fn sigterm_with_an_idle_keepalive_connection_exits_zero_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "good.toml", GOOD);
    let s = serve(&path);

    // An idle HTTP/1.1 keep-alive connection must not hold the shutdown for the whole drain.
    let mut conn = TcpStream::connect_timeout(&s.addr, Duration::from_secs(10)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).ends_with("\r\n\r\nok\n") {
        let n = conn.read(&mut buf).expect("read keep-alive response");
        assert_ne!(
            n,
            0,
            "connection closed early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    let addr = s.addr;
    let done = s.stop();
    assert!(done.elapsed < EXIT_TIMEOUT, "took {:?}", done.elapsed);
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "nothing may listen on {addr} after the stop"
    );
    drop(conn);
}

#[test]
fn shipped_mtls_config_works_as_the_readme_says() {
    // `lattice certs init --dir certs` then `LATTICE_CERT_DIR=certs lattice serve --config deploy/mtls.toml`.
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("certs");
    certs_init(&d);
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mtls.toml");
    let dir = d.to_str().expect("utf-8");
    let s = serve_with(
        &shipped,
        &[
            ("LATTICE_CERT_DIR", Some(dir)),
            ("LATTICE_LISTEN", Some("127.0.0.1:0")),
            ("LATTICE_LOG_FORMAT", None),
        ],
    );
    assert_eq!(s.scheme, "https", "{}", s.ready_line);
    let ca = d.join("ca.pem");
    let (cert, key) = (format!("{dir}/client.pem"), format!("{dir}/client.key"));
    assert_ok_chat(
        &tls_chat(s.port(), &ca, &["--cert", &cert, "--key", &key]),
        "shipped mtls.toml",
    );
    assert_refused(
        &tls_chat(s.port(), &ca, &[]),
        "shipped mtls.toml without a client cert",
    );
    s.stop();
}

#[test]
fn policy_test_runs_the_shipped_bundle_and_fails_on_a_failing_test() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let done = run(&["policy", "test", shipped.to_str().expect("utf-8")]);
    assert!(
        done.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        done.stdout,
        done.stderr
    );
    let last = done.stdout.lines().last().unwrap_or("");
    assert!(last.ends_with(" passed, 0 failed"), "{}", done.stdout);

    let tmp = tempfile::tempdir().expect("tempdir");
    write_file(
        tmp.path(),
        "p.rego",
        "package lattice.authz\nimport rego.v1\ndecision := {\"allow\": true}\ntest_ok if true\ntest_broken if false\n",
    );
    let done = run(&["policy", "test", tmp.path().to_str().expect("utf-8")]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stdout);
    assert!(
        done.stdout.contains("FAIL  data.lattice.authz.test_broken"),
        "{}",
        done.stdout
    );
    assert!(done.stdout.contains("1 passed, 1 failed"), "{}", done.stdout);

    write_file(tmp.path(), "p.rego", "package lattice.authz\nthis is not rego\n");
    let done = run(&["policy", "test", tmp.path().to_str().expect("utf-8")]);
    assert_eq!(done.status.code(), Some(2));
    assert!(done.stderr.contains("p.rego"), "{}", done.stderr);
}

#[test]
fn policy_eval_prints_the_decision_and_the_bundle_hash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = write_file(
        tmp.path(),
        "in.json",
        r#"{"version":1,"principal":{"id":"k","kind":"api_key","user":"u","team":"support","roles":[],"attributes":{}},
            "request":{"surface":"chat.completions","model":"gpt-4o","provider":"openai","tools":[]},
            "time":{"weekday":"Tuesday","hour":10}}"#,
    );
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let done = run(&[
        "policy",
        "eval",
        "--input",
        input.to_str().expect("utf-8"),
        "--bundle",
        shipped.to_str().expect("utf-8"),
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let out: serde_json::Value = serde_json::from_str(&done.stdout).expect("JSON on stdout");
    assert_eq!(out["decision"]["allow"], false);
    assert_eq!(
        out["decision"]["reasons"][0],
        "team \"support\" may not use model \"gpt-4o\""
    );
    assert_eq!(out["decision"]["obligations"]["model"], "gpt-4o-mini");
    assert_eq!(out["bundle_sha256"].as_str().map(str::len), Some(64));
}

#[test]
fn keys_create_list_revoke() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_str().expect("utf-8");
    let done = run(&[
        "keys",
        "create",
        "--data-dir",
        dir,
        "--team",
        "research",
        "--user",
        "ana",
        "--role",
        "dev",
        "--expires",
        "30d",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    let key = done.stdout.lines().last().unwrap_or("").to_string();
    let well_formed = key.len() == 3 + 12 + 1 + 64
        && key.starts_with("lk_")
        && key[3..]
            .chars()
            .enumerate()
            .all(|(i, c)| if i == 12 { c == '_' } else { c.is_ascii_hexdigit() });
    assert!(well_formed, "the secret must be alone on the last line: {key:?}");
    let id = &key[3..15];

    // The key store and the listing never contain the secret.
    let stored = std::fs::read_to_string(tmp.path().join("keys.json")).expect("keys.json");
    assert!(!stored.contains(&key[16..]), "secret stored in clear");
    let list = run(&["keys", "list", "--data-dir", dir]);
    assert!(list.status.success() && !list.stdout.contains(&key[16..]));
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with(id) && l.contains("active")),
        "{}",
        list.stdout
    );

    let done = run(&["keys", "revoke", "--data-dir", dir, id]);
    assert!(done.status.success(), "{}", done.stderr);
    let list = run(&["keys", "list", "--data-dir", dir]);
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with(id) && l.contains("revoked")),
        "{}",
        list.stdout
    );

    let done = run(&["keys", "revoke", "--data-dir", dir, "000000000000"]);
    assert_eq!(done.status.code(), Some(2));
    let done = run(&[
        "keys",
        "create",
        "--data-dir",
        dir,
        "--team",
        "t",
        "--user",
        "u",
        "--expires",
        "someday",
    ]);
    assert_eq!(done.status.code(), Some(2));
    assert!(done.stderr.contains("--expires"), "{}", done.stderr);
}

/// `curl` a chat completion for `model` at `port` with an optional gateway key.
fn chat_as(port: u16, key: Option<&str>, model: &str) -> CurlOut {
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello"}}]}}"#);
    let auth = key.map(|k| format!("authorization: Bearer {k}"));
    let mut args = vec![
        url.as_str(),
        "-H",
        "content-type: application/json",
        "-d",
        body.as_str(),
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    curl(&args)
}

#[test]
fn shipped_quickstart_works_as_the_readme_says() {
    // `lattice serve --config deploy/quickstart.toml`, then `lattice keys create --config
    // deploy/quickstart.toml --team research --user me` beside it (LATTICE_DATA_DIR keeps the
    // test's keys out of the repository; it overrides the config's data_dir for both).
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().to_str().expect("utf-8");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/quickstart.toml");
    let env = [
        ("LATTICE_LISTEN", Some("127.0.0.1:0")),
        ("LATTICE_DATA_DIR", Some(data)),
        ("LATTICE_POLICY_DIR", None),
        ("LATTICE_LOG_FORMAT", None),
    ];
    let s = serve_with(&shipped, &env);
    let keys = |team: &str| {
        let mut cmd = lattice();
        cmd.args(["keys", "create", "--config"]).arg(&shipped);
        cmd.args(["--team", team, "--user", "me"])
            .env("LATTICE_DATA_DIR", data);
        let done = Proc::spawn(&mut cmd).finish(EXIT_TIMEOUT, "lattice keys create");
        assert!(done.status.success(), "{}", done.stderr);
        done.stdout.lines().last().unwrap_or_default().to_string()
    };
    let (research, support) = (keys("research"), keys("support"));

    // The key is picked up by the running gateway, no restart.
    let deadline = Instant::now() + Duration::from_secs(2);
    let ok = loop {
        let out = chat_as(s.port(), Some(&research), "demo");
        if out.code == "200" || Instant::now() >= deadline {
            break out;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_ok_chat(&ok, "quickstart with a research key");
    let none = chat_as(s.port(), None, "demo");
    assert_eq!(none.code, "401", "{}", none.response);
    assert!(none.response.contains("missing_credential"), "{}", none.response);
    // Denied by the default policy before any upstream is contacted (no network needed).
    let denied = chat_as(s.port(), Some(&support), "gpt-4o");
    assert_eq!(denied.code, "403", "{}", denied.response);
    assert!(
        denied
            .response
            .contains(r#"team \"support\" may not use model \"gpt-4o\""#),
        "{}",
        denied.response
    );

    // SIGHUP reloads the policy and does not end the process (its default action would).
    let hup = Command::new("kill")
        .args(["-HUP", &s.proc.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while chat_as(s.port(), Some(&research), "demo").code != "200" {
        assert!(
            Instant::now() < deadline,
            "the gateway stopped serving after SIGHUP"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let done = s.stop();
    assert!(
        done.stderr.contains("reload requested (SIGHUP)"),
        "no SIGHUP reload in the log:\n{}",
        done.stderr
    );
    // The access line names the caller (its key id, never the key) and the deciding bundle.
    let line = done
        .stderr
        .lines()
        .find(|l| l.contains("lattice::access") && l.contains("status=403"))
        .unwrap_or_else(|| panic!("no access line for the denied call:\n{}", done.stderr));
    assert!(line.contains(&format!("principal={}", &support[3..15])), "{line}");
    assert!(line.contains(" policy=") && !line.contains(" policy=-"), "{line}");
    assert!(!done.stderr.contains(&support[16..]) && !done.stderr.contains(&research[16..]));
}

/// A chat call with its own request id over a fresh connection; true when it was answered 200
/// in full (the body's closing brace arrived).
fn chat_ok(addr: SocketAddr, request_id: &str) -> bool {
    let body = r#"{"model":"demo","messages":[{"role":"user","content":"hello"}]}"#;
    post_ok(addr, request_id, body).trim_end().ends_with('}')
}

/// POSTs `body` to the chat surface over a fresh connection; the response if it was a 200 (as
/// far as it arrived), else empty.
fn post_ok(addr: SocketAddr, request_id: &str, body: &str) -> String {
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         content-type: application/json\r\nx-request-id: {request_id}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.1 200") {
        text.into_owned()
    } else {
        String::new()
    }
}

/// A config serving `demo` from the mock, with its data dir (and audit log) in `dir/data`;
/// `extra` goes at the top level (an `[audit]` table, say).
fn mock_config(dir: &Path, extra: &str) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    let text = format!(
        "data_dir = \"{}\"\n{extra}\n[server]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.mock]\nkind = \"mock\"\n[[routes]]\nmodel = \"demo\"\nupstream = \"mock\"\n",
        data.display()
    );
    (write_file(dir, "mock.toml", &text), data)
}

/// Serves `config` once per kill moment (ms after start), with four clients calling
/// `call(addr, request_id)` in a loop, and SIGKILLs it at that moment; returns the request ids
/// (`{prefix}{round}-{client}-{n}`) of the calls `call` saw complete.
fn under_kills(
    config: &Path,
    kills: &[u64],
    prefix: &str,
    call: fn(SocketAddr, &str) -> bool,
    min_load: usize,
) -> Vec<String> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let mut done = Vec::new();
    for (round, &kill_after_ms) in kills.iter().enumerate() {
        let s = serve(config);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let completed = std::sync::Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..4)
            .map(|t| {
                let (addr, stop, completed, prefix) =
                    (s.addr, stop.clone(), completed.clone(), prefix.to_string());
                thread::spawn(move || {
                    let mut ok = Vec::new();
                    for i in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let id = format!("{prefix}{round}-t{t}-{i}");
                        if call(addr, &id) {
                            ok.push(id);
                            completed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    ok
                })
            })
            .collect();
        // Load first, whatever the machine's speed (a busy CI runner answers slower), then the
        // kill at its fixed moment, with calls still in flight.
        let waited = std::time::Instant::now();
        while completed.load(Ordering::SeqCst) < min_load && waited.elapsed() < Duration::from_secs(20) {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(kill_after_ms));
        let mut proc = s.proc;
        let _ = proc.kill_and_collect(); // SIGKILL, mid-load
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in clients {
            done.extend(c.join().expect("client thread"));
        }
    }
    done
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_audit_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (config, data) = mock_config(tmp.path(), "[audit]\nsync = \"always\"\nsegment_bytes = 65536");
    // A fixed sequence of kill moments, so a failure repeats.
    let acknowledged = under_kills(&config, &[120, 35, 260, 80, 190, 10], "r", chat_ok, 4);
    assert!(
        acknowledged.len() >= 20,
        "too little load to mean anything: {}",
        acknowledged.len()
    );

    // Restarted once more: recovery cuts whatever the last kill tore, and the gateway serves.
    let s = serve(&config);
    assert!(chat_ok(s.addr, "after"));
    s.stop();

    let dir = data.to_str().expect("utf-8");
    let verified = run(&["audit", "verify", "--data-dir", dir]);
    assert!(
        verified.status.success() && verified.stdout.starts_with("audit log intact"),
        "{}{}",
        verified.stdout,
        verified.stderr
    );
    let export = run(&["audit", "export", "--data-dir", dir, "--format", "jsonl"]);
    assert!(export.status.success(), "{}", export.stderr);
    let recorded: std::collections::HashSet<String> = export
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "call.decision")
        .filter_map(|v| v["payload"]["request_id"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !recorded.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} calls answered 200 have no decision record, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
}

/// `lattice_budget_spent_usd` of one budget account, from `/metrics`.
fn metered_spend(addr: SocketAddr, budget: &str, subject: &str) -> String {
    let metrics = get(addr, "/metrics");
    let prefix = format!("lattice_budget_spent_usd{{budget=\"{budget}\",subject=\"{subject}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
        .to_string()
}

#[test]
fn kill_9_mid_stream_charges_open_reservations_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let text = format!(
        "data_dir = \"{}\"\n[audit]\nsync = \"always\"\n[budgets]\n[[budgets.limit]]\nname = \"all\"\n\
         scope = \"team\"\nwindow = \"monthly\"\nusd = 1000.0\n[prices.demo]\ninput = 1.0\noutput = 2.0\n\
         [server]\nlisten = \"127.0.0.1:0\"\n[upstreams.mock]\nkind = \"mock\"\nchunk_delay_ms = 5\n\
         [[routes]]\nmodel = \"demo\"\nupstream = \"mock\"\n",
        data.display()
    );
    let config = write_file(tmp.path(), "budget.toml", &text);
    // Kills with calls in flight, after load: an end record written but not yet sealed (a
    // lazy record rides the next seal) is what a kill leaves past the last seal. The report
    // read before the restart must charge that call as the rebuilt ledger does: at its
    // reservation (recovery sets the unsealed record aside).
    let completed = under_kills(
        &config,
        &[150, 90, 220],
        "b",
        |addr, id| {
            let body = r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"one two three four five six"}]}"#;
            post_ok(addr, id, body).contains("data: [DONE]")
        },
        4,
    )
    .len() as u64;
    assert!(completed >= 8, "too little load to mean anything: {completed}");

    let dir = data.to_str().expect("utf-8");
    let report = run(&["spend", "--data-dir", dir, "--group-by", "team,model"]);
    assert!(report.status.success(), "{}", report.stderr);
    let report: serde_json::Value = serde_json::from_str(&report.stdout).expect("JSON report");
    let total = &report["total"];
    // Every kill cut streams whose reservations were durable and never settled.
    assert!(total["unsettled_calls"].as_u64().expect("count") >= 1, "{report}");
    assert!(total["calls"].as_u64().expect("count") >= completed, "{report}");
    let logged = total["cost_usd"].as_str().expect("cost").to_string();
    assert_eq!(report["rows"][0]["model"], "demo", "{report}");

    // The rebuilt ledger holds exactly what the log says, however often it is rebuilt.
    for _ in 0..2 {
        let s = serve(&config);
        assert_eq!(metered_spend(s.addr, "all", "-"), logged);
        s.stop();
    }
    let csv = run(&[
        "spend",
        "--data-dir",
        dir,
        "--group-by",
        "model",
        "--format",
        "csv",
    ]);
    assert!(
        csv.stdout.starts_with("model,calls,unsettled_calls,")
            && csv.stdout.contains(&format!(",{logged}\n")),
        "{}",
        csv.stdout
    );
}

/// A mock config's gateway served for three calls (`{prefix}-0..2`) and stopped: the temp dir,
/// the config and the data dir.
fn three_logged_calls(prefix: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (config, data) = mock_config(tmp.path(), "");
    let s = serve(&config);
    for i in 0..3 {
        assert!(chat_ok(s.addr, &format!("{prefix}-{i}")));
    }
    s.stop();
    (tmp, config, data)
}

#[test]
fn audit_commands_verify_read_and_catch_damage() {
    let (tmp, config, data) = three_logged_calls("call");
    let cfg = config.to_str().expect("utf-8");

    let v = run(&["audit", "verify", "--config", cfg]);
    assert!(v.status.success(), "{}{}", v.stdout, v.stderr);
    assert!(
        v.stdout.starts_with("audit log intact: ") && v.stdout.contains(" records (6 events, "),
        "{}",
        v.stdout
    );
    assert!(v.stdout.contains("\nsigned: records 1..="), "{}", v.stdout);
    let tail = run(&["audit", "tail", "-n", "2", "--config", cfg]);
    let lines: Vec<serde_json::Value> = tail
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["kind"].as_str(), Some("call.end"));
    assert_eq!(lines[0]["payload"]["request_id"], "call-2");
    let export = run(&["audit", "export", "--since", "1h", "--config", cfg]);
    assert_eq!(export.stdout.lines().count(), 6);
    assert_eq!(
        run(&[
            "audit",
            "export",
            "--since",
            "2999-01-01T00:00:00Z",
            "--config",
            cfg
        ])
        .stdout,
        ""
    );
    let pubkey = run(&["audit", "pubkey", "--config", cfg]);
    assert!(pubkey.stdout.starts_with("ed25519:") && pubkey.stdout.trim().len() == 8 + 64);

    // Checked against another key, the seals are forgeries.
    let other = write_file(tmp.path(), "other.pub", &format!("ed25519:{}\n", "11".repeat(32)));
    let v = run(&[
        "audit",
        "verify",
        "--config",
        cfg,
        "--pubkey",
        other.to_str().expect("utf-8"),
    ]);
    assert_eq!(v.status.code(), Some(1), "{}{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("forged"), "{}", v.stdout);

    // One flipped byte in the middle of the log.
    let seg = data.join("audit").join(lattice_audit::log::segment_name(1));
    let mut bytes = std::fs::read(&seg).expect("segment");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&seg, bytes).expect("write");
    let v = run(&["audit", "verify", "--config", cfg]);
    assert_eq!(v.status.code(), Some(1), "{}{}", v.stdout, v.stderr);
    assert!(
        v.stdout.starts_with("audit log damaged: modified at record "),
        "{}",
        v.stdout
    );
}

/// An HTTP receiver on loopback that answers 200 to every POST and hands over each body.
fn witness_receiver() -> (SocketAddr, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let mut w = conn;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
                    if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The head a witness file holds once it covers at least record `at_least` (polled).
fn witnessed(path: &Path, at_least: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["seq"].as_u64().is_some_and(|s| s >= at_least)
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the witness never got a head past {at_least}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn audit_witness_keeps_heads_outside_and_catches_a_rollback() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("witness");
    std::fs::create_dir(&outside).expect("mkdir");
    let head_file = outside.join("head.json");
    let (receiver, posted) = witness_receiver();
    // A file witness and, in a second config on the same data dir, an HTTP one.
    let (file_cfg, data) = mock_config(
        tmp.path(),
        &format!(
            "[audit]\nwitness = \"{}\"\nwitness_interval_ms = 20",
            head_file.display()
        ),
    );
    let http_text = std::fs::read_to_string(&file_cfg).expect("config").replace(
        &head_file.display().to_string(),
        &format!("http://{receiver}/heads"),
    );
    let http_cfg = write_file(tmp.path(), "http.toml", &http_text);
    let dir = data.to_str().expect("utf-8");

    let s = serve(&file_cfg);
    assert!(chat_ok(s.addr, "w-1"));
    // While it runs: the decision's seal reaches the witness within the interval.
    witnessed(&head_file, 1);
    s.stop();
    let head = run(&["audit", "head", "--data-dir", dir]);
    assert!(head.status.success(), "{}", head.stderr);
    let early: serde_json::Value = serde_json::from_str(&head.stdout).expect("head JSON");
    // The witness has the same head as the log says it has.
    let kept: serde_json::Value =
        serde_json::from_str(&witnessed(&head_file, early["seq"].as_u64().unwrap_or(0)))
            .expect("witness JSON");
    assert_eq!(kept, early);
    let seg = data.join("audit").join(lattice_audit::log::segment_name(1));
    let snapshot = std::fs::read(&seg).expect("segment");

    // More calls, witnessed over HTTP this time.
    let s = serve(&http_cfg);
    assert!(chat_ok(s.addr, "w-2"));
    assert!(chat_ok(s.addr, "w-3"));
    s.stop();
    let latest = run(&["audit", "head", "--data-dir", dir]).stdout;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last_posted = String::new();
    while last_posted.trim() != latest.trim() {
        let left = deadline.saturating_duration_since(Instant::now());
        match posted.recv_timeout(left) {
            Ok(body) => last_posted = body,
            Err(_) => panic!("the HTTP witness never got the head {latest}, last {last_posted}"),
        }
    }
    let kept_http = write_file(tmp.path(), "kept.json", &last_posted);
    let since = |f: &Path| {
        run(&[
            "audit",
            "verify",
            "--data-dir",
            dir,
            "--since-head",
            f.to_str().expect("utf-8"),
        ])
    };
    let v = since(&kept_http);
    assert!(
        v.status.success() && v.stdout.contains("extends the kept head"),
        "{}{}",
        v.stdout,
        v.stderr
    );
    assert!(
        since(&head_file).status.success(),
        "the log no longer extends an earlier head"
    );

    // Records and seals cut back together to the earlier head: intact on its own, caught
    // against the witness's copy.
    std::fs::write(&seg, &snapshot).expect("roll back");
    let plain = run(&["audit", "verify", "--data-dir", dir]);
    assert!(plain.status.success(), "{}", plain.stdout);
    let v = since(&kept_http);
    assert_eq!(v.status.code(), Some(1), "{}{}", v.stdout, v.stderr);
    assert!(
        v.stdout.starts_with("audit log damaged: rolled back at record "),
        "{}",
        v.stdout
    );
    // A gateway whose file witness holds the newer head refuses to start on the rolled-back log,
    // instead of witnessing the older head anew.
    std::fs::write(&head_file, &last_posted).expect("witness");
    let mut cmd = lattice();
    cmd.arg("serve").arg("--config").arg(&file_cfg);
    let done = Proc::spawn(&mut cmd).finish(EXIT_TIMEOUT, "lattice serve on a rolled-back log");
    assert!(!done.status.success(), "{}", done.stdout);
    assert!(done.stderr.contains("rolled back"), "{}", done.stderr);
    assert_eq!(
        std::fs::read_to_string(&head_file).expect("witness"),
        last_posted,
        "the witness was overwritten"
    );
}

#[test]
fn a_witness_inside_the_data_dir_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let inside = tmp.path().join("data").join("head.json");
    let (cfg, _) = mock_config(
        tmp.path(),
        &format!("[audit]\nwitness = \"{}\"", inside.display()),
    );
    let c = run(&["check", "--config", cfg.to_str().expect("utf-8")]);
    assert!(!c.status.success(), "{}", c.stdout);
    assert!(
        c.stderr.contains("audit.witness") && c.stderr.contains("inside the data dir"),
        "{}",
        c.stderr
    );
}

#[test]
fn a_forged_log_is_not_adopted_on_start() {
    use lattice_audit::record;
    let (_tmp, config, data) = three_logged_calls("f");
    // Without the key: a call's end record changed, everything after it re-chained.
    let seg = data.join("audit").join(lattice_audit::log::segment_name(1));
    let bytes = std::fs::read(&seg).expect("segment");
    let mut out = lattice_audit::log::MAGIC.to_vec();
    let (mut pos, mut prev, mut changed) = (8, [0u8; 32], false);
    while pos < bytes.len() {
        let (mut r, n) = record::decode(&bytes[pos..]).expect("record");
        if !changed && r.event.kind == "call.end" {
            let text = String::from_utf8(r.event.payload.clone()).expect("utf-8");
            assert!(text.contains("\"status\":200"), "{text}");
            r.event.payload = text.replace("\"status\":200", "\"status\":403").into_bytes();
            changed = true;
        }
        prev = record::encode(&mut out, r.seq, r.time_ns, &r.event, &prev);
        pos += n;
    }
    assert!(changed);
    std::fs::write(&seg, out).expect("write");
    let v = run(&["audit", "verify", "--data-dir", data.to_str().expect("utf-8")]);
    assert!(
        v.stdout.starts_with("audit log damaged: forged at record "),
        "{}",
        v.stdout
    );

    let mut cmd = lattice();
    cmd.arg("serve").arg("--config").arg(&config);
    let done = Proc::spawn(&mut cmd).finish(EXIT_TIMEOUT, "lattice serve on a forged log");
    assert!(!done.status.success());
    assert!(done.stderr.contains("not what was signed"), "{}", done.stderr);
    assert!(!done.stdout.contains("listening"), "{}", done.stdout);
}
