//! The first start of `creditd serve`, as a new user meets it: the admin key
//! and the listening address, and what a wrong address says.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_creditd");

/// `creditd` in `dir` with none of the caller's CREDITD_* settings.
fn creditd(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir).env("CREDITD_LOG", "warn");
    for (name, _) in std::env::vars() {
        if name.starts_with("CREDITD_") && name != "CREDITD_LOG" {
            command.env_remove(name);
        }
    }
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must end by itself (a failed start), within a minute.
fn run_to_end(mut command: Command) -> Output {
    let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let (tx, rx) = std::sync::mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &id.to_string()]).status();
            panic!("creditd did not stop by itself (it should have failed to start)");
        }
    }
}

#[test]
fn admin_key_printed_before_the_port_is_bound_is_lost_when_the_port_is_taken() {
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();

    let mut serve = creditd(dir.path());
    serve.args(["serve", "--listen", &address]);
    let out = run_to_end(serve);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("admin key"), "no key is made when the start fails: {stdout}");
    assert!(stderr.contains(&format!("cannot listen on {address}")) && stderr.contains("--listen"), "{stderr}");
    assert!(!dir.path().join("creditd.db").exists(), "nothing was created before the bind");
    drop(taken);

    // The next start, on a free port, is the first: it makes and prints the key.
    let mut serve = creditd(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = serve.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        let done = line.starts_with("listening on ");
        printed.push(line);
        if done {
            break;
        }
    }
    assert!(Command::new("kill").args(["-TERM", &serve.id().to_string()]).status().expect("kill").success());
    assert!(serve.wait().expect("wait").success());
    assert_eq!(printed.len(), 3, "{printed:?}");
    assert!(printed[0].starts_with("admin key (shown once, store it now): ck_"), "{printed:?}");
    assert_eq!(printed[1], "(lost it? `creditd keys create --role admin` makes another)");
    assert!(printed[2].starts_with("listening on http://127.0.0.1:"), "{printed:?}");
}

#[test]
fn listen_not_an_address_exits_1_without_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("creditd.toml"), "[server]\nlisten = \"not-an-address\"\n").expect("write");
    let mut serve = creditd(dir.path());
    serve.arg("serve");
    let out = run_to_end(serve);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a configuration error exits 2: {stderr}");
    assert!(stderr.contains("`server.listen`") && stderr.contains("creditd.toml"), "{stderr}");
    assert!(stderr.contains("\"not-an-address\""), "{stderr}");
    assert!(!dir.path().join("creditd.db").exists());

    // The same address from the flag (or CREDITD_LISTEN) names the flag.
    std::fs::remove_file(dir.path().join("creditd.toml")).expect("rm");
    let mut serve = creditd(dir.path());
    serve.args(["serve"]).env("CREDITD_LISTEN", "not-an-address");
    let out = run_to_end(serve);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--listen") && stderr.contains("CREDITD_LISTEN"), "{stderr}");
}
