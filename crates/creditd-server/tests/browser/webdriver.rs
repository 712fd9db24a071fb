//! A small W3C WebDriver client over `ureq` (blocking), enough to drive
//! headless Chromium through `chromedriver`: navigate, find, click, type,
//! read text and attributes, run a script, resize, reload, screenshot.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The browser and driver binaries, or why they are missing.
pub fn tools() -> Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(n)).find(|p| p.is_file())
        })
    };
    let browser = std::env::var_os("CREDITD_TEST_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| find(&["chromium", "chromium-browser"]))
        .ok_or("chromium is not installed (scripts/test-deps installs it)")?;
    let driver = std::env::var_os("CREDITD_TEST_CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| find(&["chromedriver"]))
        .ok_or("chromedriver is not installed (scripts/test-deps installs chromium-driver)")?;
    Ok((browser, driver))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running chromedriver with one headless Chromium session.
pub struct Browser {
    driver: Child,
    agent: ureq::Agent,
    base: String,
    _profile: tempfile::TempDir,
    pub downloads: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// An element of the page.
#[derive(Clone, Debug)]
pub struct El(String);

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium (its own profile,
    /// nothing from the network). `javascript: false` turns scripts off.
    pub fn start(javascript: bool) -> Browser {
        let (chromium, chromedriver) = tools().unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let root = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(mut r) = agent.get(&format!("{root}/status")).call()
                && r.body_mut().read_json::<Value>().ok().is_some_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let downloads = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--hide-scrollbars".into(),
            "--force-device-scale-factor=1".into(),
            format!("--user-data-dir={}", profile.path().display()),
            "--window-size=1280,900".into(),
        ];
        args.push("--lang=en-US".into());
        let mut prefs = json!({
            "download.default_directory": downloads.path().to_str().unwrap(),
            "download.prompt_for_download": false,
        });
        if !javascript {
            prefs["profile.managed_default_content_settings.javascript"] = json!(2);
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.to_str().unwrap(), "args": args, "prefs": prefs}
        }}});
        let mut r = agent.post(&format!("{root}/session")).send_json(&caps).expect("new session");
        let v: Value = r.body_mut().read_json().unwrap();
        let id = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        let mut b = Browser { driver, agent, base: format!("{root}/session/{id}"), _profile: profile, downloads };
        let dir = b.downloads.path().to_str().unwrap().to_string();
        b.cdp("Page.setDownloadBehavior", json!({"behavior": "allow", "downloadPath": dir}));
        b.resize(1280, 900);
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, Some(b)) => self.agent.post(&url).send_json(&b),
            (_, None) => self.agent.post(&url).send_json(json!({})),
        };
        let mut response = response.unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let status = response.status().as_u16();
        let v: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        assert!(status < 300, "webdriver {method} {path}: {status} {v}");
        v["value"].clone()
    }

    /// A Chrome DevTools command.
    pub fn cdp(&mut self, cmd: &str, params: Value) -> Value {
        self.call("POST", "/goog/cdp/execute", Some(json!({"cmd": cmd, "params": params})))
    }

    pub fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    /// Reloads the page, as the browser's reload button does.
    pub fn refresh(&self) {
        self.call("POST", "/refresh", None);
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_string()
    }

    pub fn find(&self, css: &str) -> El {
        self.try_find(css).unwrap_or_else(|| panic!("no element {css:?} on {}", self.url()))
    }

    pub fn try_find(&self, css: &str) -> Option<El> {
        let url = format!("{}/element", self.base);
        let mut r = self.agent.post(&url).send_json(json!({"using": "css selector", "value": css})).expect("webdriver");
        let status = r.status().as_u16();
        let v: Value = r.body_mut().read_json().expect("webdriver answer");
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "find {css}: {v}");
        Some(El(v["value"][ELEMENT].as_str().unwrap_or_else(|| panic!("find {css}: {v}")).to_string()))
    }

    pub fn find_all(&self, css: &str) -> Vec<El> {
        let v = self.call("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        v.as_array().unwrap().iter().map(|e| El(e[ELEMENT].as_str().unwrap().to_string())).collect()
    }

    pub fn text(&self, el: &El) -> String {
        self.call("GET", &format!("/element/{}/text", el.0), None).as_str().unwrap_or("").to_string()
    }

    pub fn attr(&self, el: &El, name: &str) -> Option<String> {
        self.call("GET", &format!("/element/{}/attribute/{name}", el.0), None).as_str().map(str::to_string)
    }

    pub fn click(&self, el: &El) {
        self.call("POST", &format!("/element/{}/click", el.0), None);
    }

    pub fn type_into(&self, el: &El, text: &str) {
        self.call("POST", &format!("/element/{}/value", el.0), Some(json!({"text": text})));
    }

    /// Presses keys on whatever has the focus (`\u{E004}` is Tab, `\u{E007}` Enter).
    pub fn keys(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                [json!({"type": "keyDown", "value": c.to_string()}), json!({"type": "keyUp", "value": c.to_string()})]
            })
            .collect();
        self.call("POST", "/actions", Some(json!({"actions": [{"type": "key", "id": "kbd", "actions": actions}]})));
    }

    /// Runs a script in the page (WebDriver's, not subject to the page's CSP).
    pub fn script(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    pub fn resize(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }

    /// A PNG of the whole page at `width` CSS pixels.
    pub fn screenshot(&mut self, width: u32, path: &Path) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": width < 600}),
        );
        // Let the page settle at this width (the chart redraws on resize).
        std::thread::sleep(Duration::from_millis(400));
        let height = self.script("return Math.ceil(document.documentElement.scrollHeight);").as_u64().unwrap_or(800);
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height.min(6000), "deviceScaleFactor": 1, "mobile": width < 600}),
        );
        std::thread::sleep(Duration::from_millis(200));
        let shot = self.cdp("Page.captureScreenshot", json!({"format": "png"}));
        self.cdp("Emulation.clearDeviceMetricsOverride", json!({}));
        let png = base64_decode(shot["data"].as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Waits until `check` is true (or panics after 10 s). A check that
    /// fails because the page changed under it (an element found on the old
    /// page is stale on the new one, a script ran while it unloaded) counts
    /// as "not yet": the page is what the wait is waiting for.
    pub fn wait_for(&self, what: &str, mut check: impl FnMut(&Browser) -> bool) {
        let started = Instant::now();
        while !std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(self))).unwrap_or(false) {
            if started.elapsed() > Duration::from_secs(10) {
                let text = self.script("return document.body ? document.body.innerText : ''");
                panic!("timed out waiting for {what} on {}; the page says: {text}", self.url());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n: u32 = 0;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}
