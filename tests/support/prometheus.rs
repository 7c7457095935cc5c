//! A real Prometheus (Debian's `prometheus`, which `scripts/test` installs
//! when missing) on a free loopback port, scraping the given targets every
//! second, and its HTTP query API.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts scraping `targets` (`/metrics` of each) and evaluating the
    /// rule files `rules`; returns once the server answers.
    pub async fn start(targets: &[SocketAddr], rules: &[&std::path::Path]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules: Vec<String> = rules.iter().map(|r| format!("'{}'", r.display())).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: aether-hub\n    static_configs:\n      - targets: [{}]\n",
            rules.join(", "),
            targets.join(", ")
        );
        let config_file = dir.0.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], super::private_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (run scripts/test, which installs it)");
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        super::eventually("Prometheus answers", || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
                && super::http_request(addr, "GET", "/-/ready", &[], "")
                    .await
                    .status
                    == 200
        })
        .await;
        prometheus
    }

    /// An instant query through `/api/v1/query`: the result vector, or
    /// Prometheus's error.
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let response = super::http_request(self.addr, "GET", &path, &[], "").await;
        let body: Value = serde_json::from_str(&response.body)
            .map_err(|e| format!("HTTP {}: {e}: {}", response.status, response.body))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        match body["data"]["result"].as_array() {
            Some(series) => Ok(series.clone()),
            None => Err(format!("not a vector: {}", body["data"])),
        }
    }

    /// Every rule group's rules, as `/api/v1/rules` reports them (name,
    /// health, state, last error).
    pub async fn rules(&self) -> Vec<Value> {
        let response = super::http_request(self.addr, "GET", "/api/v1/rules", &[], "").await;
        let body: Value = serde_json::from_str(&response.body).expect("rules are JSON");
        body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The single number an aggregate query returns (0 when it returns
    /// nothing yet).
    pub async fn scalar(&self, promql: &str) -> f64 {
        let series = self.query(promql).await.unwrap_or_default();
        series
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until every target has been scraped successfully `scrapes`
    /// times, bounded in time.
    pub async fn wait_for_scrapes(&self, targets: usize, scrapes: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let up = self.scalar("count(up == 1)").await as usize;
            let fewest = self.scalar("min(sum_over_time(up[5m]))").await as usize;
            if up == targets && fewest >= scrapes {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus scraped {up} of {targets} targets, the least {fewest} times"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A directory of the test's own, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "aether-{name}-{}-{}",
            std::process::id(),
            super::private_port()
        ));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
