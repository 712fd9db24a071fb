//! Issue 18, item 3: the listener's limits, on the real binary. Idle
//! sockets, slow headers and a byte-a-second body used to stay open for
//! ever, and with 1,024 descriptors 1,100 idle sockets stopped `/healthz`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_creditd");

struct Server {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `creditd serve` with `[server]` settings `extra`, started by a shell that
/// first lowers the soft open-file limit to `soft_nofile` (the hard limit
/// stays): the server must raise it itself.
fn start(extra: &str, soft_nofile: u32) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!("[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n");
    std::fs::write(dir.path().join("creditd.toml"), config).expect("config");
    let db = format!("sqlite://{}", dir.path().join("creditd.db").display());
    let script =
        format!("ulimit -Sn {soft_nofile} && exec \"$0\" serve --db \"$1\" --admin-key adm_connections_test_key");
    let mut command = Command::new("bash");
    command.args(["-c", &script, BIN, &db]).current_dir(dir.path()).env("CREDITD_LOG", "warn");
    for (name, _) in std::env::vars() {
        if name.starts_with("CREDITD_") && name != "CREDITD_LOG" {
            command.env_remove(name);
        }
    }
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut address = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.expect("line");
        if let Some(rest) = line.strip_prefix("listening on http://") {
            address = Some(rest.to_string());
            break;
        }
    }
    let address = address.expect("creditd printed its address");
    Server { child, address, _dir: dir }
}

/// One request on a new connection; the status line and body.
fn get(address: &str, path: &str, timeout: Duration) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(timeout))?;
    // A server that refuses may answer and close before the request is
    // written: the answer is what counts.
    let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: creditd\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    line.split_whitespace().nth(3).expect("soft").parse().expect("a number")
}

fn hard_nofile() -> u64 {
    let out = Command::new("bash").args(["-c", "ulimit -Hn"]).output().expect("ulimit");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(u64::MAX)
}

fn closed_by_peer(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    matches!(stream.read(&mut buf), Ok(0)) || matches!(stream.read(&mut buf), Ok(0))
}

#[test]
fn idle_sockets_do_not_stop_healthz_and_the_descriptor_limit_is_raised() {
    let hard = hard_nofile();
    let server = start("header_timeout_seconds = 30\nidle_timeout_seconds = 60", 1024);
    if hard > 1024 {
        assert_eq!(soft_nofile(server.child.id()), hard, "the soft open-file limit is raised to the hard one");
    }
    // 1,100 idle sockets: more than the 1,024 descriptors the process started with.
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(&server.address).expect("connect"));
    }
    let started = Instant::now();
    let (status, body) = get(&server.address, "/healthz", Duration::from_secs(10)).expect("healthz answers");
    assert!(status.contains(" 200 "), "{status} {body}");
    assert!(body.contains("\"ok\""), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "healthz took {:?}", started.elapsed());
    drop(idle);
}

#[test]
fn slow_headers_idle_connections_and_slow_bodies_are_cut() {
    let server = start("header_timeout_seconds = 2\nidle_timeout_seconds = 2\nbody_timeout_seconds = 2", 4096);
    // A head that never ends.
    let mut slow_head = TcpStream::connect(&server.address).unwrap();
    slow_head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A socket opened and left silent.
    let mut silent = TcpStream::connect(&server.address).unwrap();
    // A kept-alive connection after one answer.
    let mut kept = TcpStream::connect(&server.address).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 256];
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(kept.read(&mut first).unwrap() > 0);
    let started = Instant::now();
    for (what, stream) in [("slow head", &mut slow_head), ("silent", &mut silent), ("kept alive", &mut kept)] {
        assert!(closed_by_peer(stream, Duration::from_secs(10)), "{what}: still open");
    }
    assert!(started.elapsed() < Duration::from_secs(9), "{:?}", started.elapsed());

    // A body at a byte a second: 408 request_timeout once the time is up.
    let mut slow_body = TcpStream::connect(&server.address).unwrap();
    let head = "POST /v1/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer adm_connections_test_key\r\n\
                Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{";
    slow_body.write_all(head.as_bytes()).unwrap();
    slow_body.set_read_timeout(Some(Duration::from_millis(900))).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(15) {
        let _ = slow_body.write_all(b" ");
        let mut buf = [0u8; 1024];
        match slow_body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"}}}\n") || answer.ends_with(b"}}") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
}

#[test]
fn connections_over_the_cap_are_refused_with_a_json_503() {
    let server = start("max_connections = 20\nheader_timeout_seconds = 30\nidle_timeout_seconds = 60", 4096);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&server.address).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = get(&server.address, "/healthz", Duration::from_secs(5)).expect("an answer");
    assert!(status.starts_with("HTTP/1.1 503 "), "{status}");
    let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(value["error"]["code"], "unavailable");
    // A slot frees when a connection closes.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = get(&server.address, "/healthz", Duration::from_secs(5)).expect("an answer");
    assert!(status.contains(" 200 "), "{status}");
}
