//! README.md's "Five minutes with curl", run as written: the built binary
//! serves the built-in defaults in a fresh directory, the section's `sh`
//! blocks run in one bash (with curl), and every shown output (the `json`
//! block after a command, the lines after a `$` in a `console` block) must
//! be what was printed. `…` in a shown output matches anything (ids, times);
//! JSON is compared without the whitespace between tokens.
//!
//! Two substitutions make it runnable anywhere: the server listens on a free
//! port (`CREDITD_LISTEN=127.0.0.1:0`), which replaces `127.0.0.1:8080`
//! everywhere in the section, and the admin key it prints replaces `ck_…` in
//! the commands. `cargo run --release -p creditd --` is the built binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_creditd");
const SECTION: &str = "## Five minutes with curl";
const RUN: &str = "cargo run --release -p creditd --";
const README_ADDRESS: &str = "127.0.0.1:8080";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One fenced block of the section: its info string and its text.
#[derive(Debug)]
struct Block {
    lang: String,
    text: String,
    line: usize,
}

fn blocks(section: &str, first_line: usize) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (n, line) in section.lines().enumerate() {
        match &mut open {
            Some(block) if line.trim_start().starts_with("```") => {
                out.push(std::mem::replace(block, Block { lang: String::new(), text: String::new(), line: 0 }));
                open = None;
            }
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            None => {
                if let Some(lang) = line.trim_start().strip_prefix("```") {
                    open = Some(Block { lang: lang.trim().to_string(), text: String::new(), line: first_line + n + 1 });
                }
            }
        }
    }
    assert!(open.is_none(), "README: a block of {SECTION:?} is not closed");
    out
}

/// The section of README.md, and the line it starts on.
fn section() -> (String, usize) {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).expect("README.md");
    let start = readme.find(SECTION).unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let rest = &readme[start + SECTION.len()..];
    let end = rest.find("\n## ").map_or(readme.len(), |i| start + SECTION.len() + i);
    let first_line = readme[..start].lines().count();
    (readme[start..end].to_string(), first_line)
}

/// Drops whitespace outside JSON strings (and the line breaks of a shown
/// block), so that the README may wrap and indent what curl prints compactly.
fn squeeze(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Whether `text` matches `pattern`, where `…` matches any run of characters.
fn matches(pattern: &str, text: &str) -> bool {
    let pieces: Vec<&str> = pattern.split('…').collect();
    if pieces.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// A `creditd` command in `dir` with none of the caller's CREDITD_* settings:
/// the built-in defaults, as on a fresh machine.
fn creditd(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("CREDITD_") {
            command.env_remove(name);
        }
    }
    command
}

struct Serve {
    child: Child,
    printed: Vec<String>,
}

impl Serve {
    /// Starts `creditd serve` and reads its stdout up to "listening on".
    fn start(dir: &Path) -> Serve {
        let log = std::fs::File::create(dir.join("serve.log")).expect("log file");
        let mut child = creditd(dir)
            .arg("serve")
            .env("CREDITD_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn creditd serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with("listening on ");
                    printed.push(line);
                    if done {
                        return Serve { child, printed };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
                    panic!("creditd serve did not print `listening on` (stdout: {printed:?}); log:\n{log}");
                }
            }
        }
    }

    /// Ctrl-C, as the README says, and a clean exit.
    fn interrupt(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "creditd serve exited with {status} after Ctrl-C");
                return;
            }
            assert!(Instant::now() < deadline, "creditd serve did not stop within 30 s of Ctrl-C");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The command of a `console` block and the lines it shows.
fn console(block: &Block) -> (Vec<String>, Vec<String>) {
    let mut lines = block.text.lines();
    let command = lines.next().and_then(|l| l.strip_prefix("$ ")).unwrap_or_else(|| {
        panic!("README.md:{}: a console block starts with `$ command`", block.line);
    });
    let command = command.strip_prefix(RUN).unwrap_or_else(|| {
        panic!("README.md:{}: the walkthrough runs creditd as `{RUN} …`, not {command:?}", block.line)
    });
    let args = command.split_whitespace().map(str::to_string).collect();
    (args, lines.map(str::to_string).collect())
}

fn assert_lines(block: &Block, shown: &[String], printed: &[String]) {
    let ok = shown.len() == printed.len() && shown.iter().zip(printed).all(|(s, p)| matches(s, p));
    assert!(
        ok,
        "README.md:{}: the block shows\n{}\nbut creditd printed\n{}",
        block.line,
        shown.join("\n"),
        printed.join("\n")
    );
}

#[test]
fn the_readme_walkthrough_runs_verbatim_on_the_built_in_defaults() {
    let curl = Command::new("curl").arg("--version").stdout(Stdio::null()).status();
    assert!(
        curl.is_ok_and(|s| s.success()),
        "this test runs the README's curl commands: install curl (scripts/test-deps does)"
    );
    let (text, first_line) = section();
    let blocks = blocks(&text, first_line);
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();

    // The server: the first block.
    let first = blocks.first().expect("the section has blocks");
    assert_eq!(first.lang, "console", "README.md:{}: the walkthrough starts the server first", first.line);
    let (args, shown) = console(first);
    assert_eq!(args, ["serve"], "README.md:{}", first.line);
    let serve = Serve::start(dir);
    let address = serve.printed.last().and_then(|l| l.strip_prefix("listening on http://")).expect("address");
    let address = address.to_string();
    let key = serve
        .printed
        .iter()
        .find_map(|l| l.strip_prefix("admin key (shown once, store it now): "))
        .expect("a fresh start prints the admin key")
        .to_string();
    let shown: Vec<String> = shown.iter().map(|l| l.replace(README_ADDRESS, &address)).collect();
    assert_lines(first, &shown, &serve.printed);

    // The curl blocks, in one shell, each followed by a marker; each `json`
    // block is the output of the `sh` block before it.
    let mut script = String::from("set -u\n");
    let mut expected: Vec<(&Block, Option<&Block>)> = Vec::new();
    let mut rest = blocks[1..].iter().peekable();
    let mut after = Vec::new();
    while let Some(block) = rest.next() {
        match block.lang.as_str() {
            "sh" => {
                let output = rest.next_if(|b| b.lang == "json");
                let n = expected.len();
                let command = block.text.replace(README_ADDRESS, &address).replace("ck_…", &key);
                script.push_str(&format!("{command}\necho; echo '@@END {n}@@'\n"));
                expected.push((block, output));
            }
            "console" => after.push(block),
            other => panic!("README.md:{}: a {other:?} block follows no command", block.line),
        }
    }
    assert!(expected.len() >= 8, "the walkthrough has its steps ({} commands)", expected.len());
    let output = Command::new("bash")
        .current_dir(dir)
        .env("CREDITD_README_TEST", "1")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "the walkthrough's commands failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut outputs = Vec::new();
    let mut rest = stdout.as_str();
    for n in 0..expected.len() {
        let marker = format!("\n@@END {n}@@\n");
        let at = rest.find(&marker).unwrap_or_else(|| panic!("no output for command {n}: {stdout}"));
        outputs.push(rest[..at].to_string());
        rest = &rest[at + marker.len()..];
    }
    for ((command, shown), printed) in expected.iter().zip(&outputs) {
        let shown = shown.map_or(String::new(), |b| squeeze(&b.text.replace(README_ADDRESS, &address)));
        let printed = squeeze(printed);
        assert!(
            matches(&shown, &printed),
            "README.md:{}: the command's shown output differs from what it printed\nshown:   {shown}\nprinted: {printed}",
            command.line
        );
    }

    // Ctrl-C, then the console blocks after it (the audit).
    serve.interrupt();
    assert!(!after.is_empty(), "the walkthrough ends with the audit");
    for block in after {
        let (args, shown) = console(block);
        let out = creditd(dir).args(&args).stdin(Stdio::null()).output().expect("run creditd");
        assert!(out.status.success(), "README.md:{}: creditd {args:?} failed: {out:?}", block.line);
        let printed: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        assert_lines(block, &shown, &printed);
    }
}

#[test]
fn the_comparison_wildcards_only_what_is_elided() {
    assert!(matches("{\"id\":\"…\",\"a\":1}", "{\"id\":\"0190\",\"a\":1}"));
    assert!(!matches("{\"id\":\"…\",\"a\":1}", "{\"id\":\"0190\",\"a\":2}"));
    assert!(matches("ck_…", "ck_123_abc"));
    assert!(!matches("ck_…", "ct_123"));
    assert!(!matches("no wildcard", "no wildcard!"));
    assert_eq!(squeeze("{\"a\": \"x y\",\n \"b\": [1, 2]}"), "{\"a\":\"x y\",\"b\":[1,2]}");
}
