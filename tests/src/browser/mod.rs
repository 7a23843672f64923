//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for tests of
//! the dashboard as a user sees it: load a page, type, click with the mouse, read the
//! DOM, take a screenshot. One browser per test, in a temp profile, on a random debugging
//! port on loopback; killed on drop.
//!
//! Commands go to one page over the browser's WebSocket ([`websocket`]) in flattened
//! session mode; events the browser sends are skipped, answers are matched by id.

pub mod websocket;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use self::websocket::WebSocket;

/// Longest one DevTools command may take on a loaded machine.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// Longest Chromium may take to open its debugging port.
const START_DEADLINE: Duration = Duration::from_secs(60);

pub struct Browser {
    child: Child,
    socket: WebSocket,
    session: String,
    next_id: u64,
    width: u32,
    height: u32,
    profile: TempDir,
}

impl Browser {
    /// Starts headless Chromium with one blank page of `width` × `height` CSS pixels.
    pub async fn launch(width: u32, height: u32) -> Self {
        let profile = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log file");
        let data_dir = profile.path().join("profile");
        let child = Command::new(chromium())
            .args([
                "--headless",
                // Tests run as root, which Chromium's sandbox refuses.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", data_dir.display()),
                &format!("--window-size={width},{height}"),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromium ({e}); install it: apt-get install chromium")
            });
        let (port, path) = debugging_endpoint(&data_dir, profile.path()).await;
        let socket = WebSocket::connect(&format!("127.0.0.1:{port}"), &path)
            .await
            .expect("connecting to Chromium's DevTools endpoint");
        let mut browser = Browser {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            width,
            height,
            profile,
        };
        let target = browser
            .command("Target.createTarget", json!({ "url": "about:blank" }))
            .await["targetId"]
            .clone();
        let attached = browser
            .command(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a DevTools session id")
            .to_owned();
        browser.resize(height).await;
        browser
    }

    /// Sends a command to the page and returns its result; panics on a protocol error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(&session)).await
    }

    /// A browser-level command (no page session).
    async fn command(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None).await
    }

    async fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let exchange = async {
            self.socket.send(&message.to_string()).await?;
            loop {
                let answer: Value = serde_json::from_str(&self.socket.receive().await?)
                    .map_err(std::io::Error::other)?;
                if answer["id"] == id {
                    return Ok::<_, std::io::Error>(answer);
                }
            }
        };
        let answer = tokio::time::timeout(COMMAND_DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("DevTools command {method} got no answer in time"))
            .unwrap_or_else(|e| panic!("DevTools command {method}: {e}"));
        if let Some(error) = answer.get("error") {
            panic!("DevTools command {method} failed: {error}");
        }
        answer["result"].clone()
    }

    /// Loads `url` and waits until its document is complete.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for(
            "document.readyState === 'complete'",
            "the page to load",
            Duration::from_secs(30),
        )
        .await;
    }

    /// The value of JavaScript `expression` in the page (promises awaited); panics when it
    /// throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy, and returns that value; panics naming
    /// `what` after `deadline`.
    pub async fn wait_for(&mut self, expression: &str, what: &str, deadline: Duration) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(expression).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                started.elapsed() < deadline,
                "waited {deadline:?} for {what} ({expression} stayed {value})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the middle of the element `selector` names with the mouse, as a user would.
    pub async fn click(&mut self, selector: &str) {
        let selector_json = json!(selector);
        let point = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector_json}); if (!e) return null; \
                 e.scrollIntoView({{ block: 'center' }}); const r = e.getBoundingClientRect(); \
                 return {{ x: r.x + r.width / 2, y: r.y + r.height / 2 }}; }})()"
            ))
            .await;
        assert!(!point.is_null(), "nothing on the page matches {selector}");
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": point["x"], "y": point["y"], "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Types `text` into the element `selector` names (focused first).
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        let selector_json = json!(selector);
        let focused = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector_json}); if (!e) return false; e.focus(); return true; }})()"
            ))
            .await;
        assert_eq!(
            focused,
            json!(true),
            "nothing on the page matches {selector}"
        );
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Saves a PNG of the whole page (not only the window) to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")
            .await
            .as_u64()
            .and_then(|h| u32::try_from(h).ok())
            .unwrap_or(self.height);
        self.resize(height.clamp(self.height, 8000)).await;
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        self.resize(self.height).await;
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot data is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("writing the screenshot");
    }

    async fn resize(&mut self, height: u32) {
        let width = self.width;
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    }

    /// What Chromium logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `MERIDIAN_CHROMIUM`, or `chromium` on the PATH.
fn chromium() -> PathBuf {
    std::env::var_os("MERIDIAN_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

/// The port and browser path Chromium writes to `DevToolsActivePort` once it listens.
async fn debugging_endpoint(data_dir: &Path, profile: &Path) -> (u16, String) {
    let file = data_dir.join("DevToolsActivePort");
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next())
                && let Ok(port) = port.trim().parse()
            {
                return (port, path.trim().to_owned());
            }
        }
        assert!(
            started.elapsed() < START_DEADLINE,
            "Chromium opened no debugging port within {START_DEADLINE:?}; its log:\n{}",
            std::fs::read_to_string(profile.join("chromium.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
