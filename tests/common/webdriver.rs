//! A minimal W3C WebDriver client over reqwest, enough to drive a real headless Chromium
//! through `chromedriver`: open pages, find elements, type, click, read text, take a
//! screenshot. (The protocol is JSON over HTTP; a full client crate would add a second HTTP
//! stack to the build for these few calls.)
#![allow(dead_code)]

use base64::Engine as _;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session; both end on drop, and the browser's
/// profile (a directory of this session's own) is removed with them.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: tempfile::TempDir,
}

fn find_binary(names: &[&str]) -> String {
    for name in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
            let path = format!("{dir}/{name}");
            if std::path::Path::new(&path).exists() {
                return path;
            }
        }
    }
    panic!(
        "the dashboard test needs Chromium and ChromeDriver ({names:?}): \
         apt-get install chromium chromium-driver (scripts/test.sh does)"
    )
}

impl Browser {
    /// Start chromedriver and a headless Chromium session.
    pub async fn start() -> Browser {
        let driver_path = find_binary(&["chromedriver"]);
        let chromium = find_binary(&["chromium", "chromium-browser"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        // Wait until the driver answers that it is ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(response) => response
                    .text()
                    .await
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .is_some_and(|v| v["value"]["ready"] == json!(true)),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("browser profile directory");
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            profile,
        };
        let user_data = format!("--user-data-dir={}", browser.profile.path().display());
        let answer = browser
            .call(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1280,1000",
                                 user_data]
                    }
                }}}),
            )
            .await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        match self.try_call(method, path, body).await {
            Ok(value) => value,
            Err(error) => panic!("webdriver {path}: {error}"),
        }
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let mut request = self.http.request(method.clone(), url);
        if method != reqwest::Method::GET {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let text = request.send().await.unwrap().text().await.unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(error) = value["value"]["error"].as_str() {
            return Err(format!("{error}: {}", value["value"]["message"]));
        }
        Ok(value["value"].clone())
    }

    /// Open `url`.
    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// The current page's address.
    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element matching a CSS selector (panics when there is none).
    pub async fn find(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}`: {found}"))
            .to_string()
    }

    /// Wait (up to 10 s) until an element matches `css`: a click that submits a form
    /// returns before the next page has loaded.
    pub async fn wait_for(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .call(
                    reqwest::Method::POST,
                    "/elements",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            if found.as_array().is_some_and(|a| !a.is_empty()) {
                return;
            }
            assert!(Instant::now() < deadline, "nothing matched `{css}`");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Type `text` into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Click the element matching `css`.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    /// Click the element matching `css` (a link, or a button that submits a form) and wait
    /// (up to 10 s) for the page it leads to: the old page is marked before the click, so
    /// nothing read afterwards comes from it (a page may share elements with the next one).
    pub async fn submit(&self, css: &str) {
        self.execute("window.__stewardBeforeSubmit = true;").await;
        self.click(css).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // While the browser navigates, a script may fail to run: that is "not yet".
            let loaded = self
                .try_call(
                    reqwest::Method::POST,
                    "/execute/sync",
                    json!({
                        "script": "return window.__stewardBeforeSubmit === undefined \
                                   && document.readyState === 'complete';",
                        "args": []
                    }),
                )
                .await;
            if loaded == Ok(Value::Bool(true)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page after `{css}` did not load"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the element matching `css`, waiting (up to 10 s) for it: found
    /// again when a live update replaced it between the lookup and the read, and looked for
    /// again while the page after a click or a reload has not loaded it yet.
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .try_call(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            let element = match found {
                Ok(found) => found[ELEMENT].as_str().map(str::to_string),
                Err(error) if error.starts_with("no such element") => None,
                Err(error) => panic!("webdriver /element `{css}`: {error}"),
            };
            if let Some(element) = element {
                match self
                    .try_call(
                        reqwest::Method::GET,
                        &format!("/element/{element}/text"),
                        Value::Null,
                    )
                    .await
                {
                    Ok(text) => return text.as_str().unwrap_or_default().to_string(),
                    Err(error) if is_stale(&error) => {}
                    Err(error) => panic!("webdriver text of `{css}`: {error}"),
                }
            }
            assert!(Instant::now() < deadline, "nothing matched `{css}`");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Run `script` (a function body; `return` gives its value) in the page.
    pub async fn execute(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Save a PNG of the viewport as `target/…/dashboard-<name>.png`.
    pub async fn shot(&self, name: &str) {
        let png = self.screenshot().await;
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let path =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-{name}.png"));
        std::fs::write(&path, &png).unwrap();
    }

    /// On the login page: paste `token`, log in, and wait for `landmark` (a selector of the
    /// page one lands on).
    pub async fn log_in(&self, token: &str, landmark: &str) {
        self.type_into("#token", token).await;
        self.submit("#login").await;
        self.wait_for(landmark).await;
    }

    /// Reload the page.
    pub async fn refresh(&self) {
        self.call(reqwest::Method::POST, "/refresh", json!({}))
            .await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let data = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap()
    }
}

/// Whether a WebDriver error says the element left the document (a navigation or a live
/// update replaced it). Chromium reports it either as W3C `stale element reference` or, when
/// the node went between the lookup and the read, as an inspector error.
fn is_stale(error: &str) -> bool {
    error.starts_with("stale element reference")
        || error.contains("does not belong to the document")
}

impl Browser {
    /// End the session (Chromium quits) and the driver.
    pub async fn close(self) {
        self.call(reqwest::Method::DELETE, "", json!({})).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session first (Chromium exits and removes its own temporary files), with a
        // plain blocking request: drop cannot await.
        use std::io::{Read, Write};
        let address = self.base.trim_start_matches("http://").to_string();
        if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
