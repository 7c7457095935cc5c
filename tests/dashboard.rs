//! The Grafana dashboard works: a real Prometheus scrapes two hubs in Redis
//! mode while a small driver keeps them busy, and every panel's PromQL,
//! evaluated through Prometheus's HTTP API, returns data. The same
//! Prometheus evaluates the alerting rules of `deploy/alerts.yml`: all
//! healthy, none firing on healthy hubs. (`deploy/alerts.test.yml` shows
//! each alert firing, with `promtool test rules`.)

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::process::{spawn_hub, Running};
use support::prometheus::Prometheus;
use support::redis::RedisServer;
use support::{msg, Client};

const DASHBOARD: &str = include_str!("../grafana/dashboards/aether-hub.json");
const ALERTS: &str = include_str!("../deploy/alerts.yml");

/// Every query target of every panel, rows included: (panel title, expr).
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            let expr = target["expr"].as_str().expect("a PromQL expr").to_owned();
            found.push((title, expr));
        }
    }
    found
}

/// What Grafana would put in place of the dashboard's variables.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$instance", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
}

#[test]
fn the_dashboard_is_importable_with_its_variables() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(variable("instance")["type"], "query");
    assert_eq!(variable("instance")["includeAll"], true);

    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(ids.insert(panel["id"].as_i64()), "panel ids are unique");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}: uses the datasource variable",
            panel["title"]
        );
    }
    for (title, expr) in panel_queries(&dashboard) {
        assert!(
            expr.contains(r#"instance=~"$instance""#),
            "{title}: {expr} ignores the instance variable"
        );
    }
}

/// Keeps two hubs busy until dropped: group and direct messages crossing
/// Redis, and a socket opened and closed every 100 ms. Bounded: it stops by
/// itself after `MAX_ROUNDS`.
struct Driver(Vec<tokio::task::JoinHandle<()>>);

const MAX_ROUNDS: usize = 6_000; // 10 ms each: one minute at most

impl Driver {
    async fn start(a: &Running, b: &Running) -> Driver {
        let mut tasks = Vec::new();
        for (hub, worker) in [(a, "w1"), (b, "w2")] {
            let mut client = Client::connect(&hub.ws_url("ops", worker), &[])
                .await
                .expect("worker connects");
            tasks.push(tokio::spawn(async move {
                while client.next_event(Duration::from_secs(70)).await.is_some() {}
            }));
        }
        let mut controller = Client::connect(&a.ws_url("ops", "ctl"), &[])
            .await
            .expect("controller connects");
        let urls = [a.ws_url("ops", "visitor"), b.ws_url("ops", "visitor")];
        tasks.push(tokio::spawn(async move {
            for round in 0..MAX_ROUNDS {
                let payload = json!({ "round": round });
                controller
                    .send(msg(
                        "group",
                        json!({ "group_id": "ops", "payload": payload }),
                    ))
                    .await;
                controller
                    .send(msg("direct", json!({ "to_id": "w2", "payload": payload })))
                    .await;
                if round % 10 == 0 {
                    if let Ok(visitor) = Client::connect(&urls[round / 10 % 2], &[]).await {
                        visitor.close().await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
        Driver(tasks)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_from_real_prometheus() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let redis = RedisServer::start();
    let url = redis.url();
    let a = spawn_hub(&[("AETHER_REDIS_URL", &url), ("AETHER_INSTANCE_ID", "hub-a")]).await;
    let b = spawn_hub(&[("AETHER_REDIS_URL", &url), ("AETHER_INSTANCE_ID", "hub-b")]).await;
    let targets: [SocketAddr; 2] = [a.addr, b.addr];
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts.yml");
    let prometheus = Prometheus::start(&targets, &[&rules]).await;
    let _driver = Driver::start(&a, &b).await;
    prometheus.wait_for_scrapes(2, 5).await;

    let mut failures = Vec::new();
    let queries = panel_queries(&dashboard);
    for (title, expr) in &queries {
        let sent = as_grafana_sends(expr);
        match prometheus.query(&sent).await {
            Err(e) => failures.push(format!("{title}: {sent}: query error {e}")),
            Ok(series) if series.is_empty() => failures.push(format!("{title}: {sent}: no series")),
            Ok(series) => {
                let numbers = series
                    .iter()
                    .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                    .filter(|v| v.is_finite());
                if numbers.count() == 0 {
                    failures.push(format!("{title}: {sent}: only NaN"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} panel queries failed:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );

    // The driver's traffic is what the panels show, on both instances.
    let per_instance = prometheus
        .query("sum by (instance) (rate(aether_messages_delivered_total[1m])) > 0")
        .await
        .expect("query");
    assert_eq!(per_instance.len(), 2, "deliveries on both hubs");
    assert!(prometheus.scalar("sum(aether_redis_up)").await == 2.0);

    let rules = prometheus.rules().await;
    assert!(rules.len() >= 7, "alerting rules loaded: {rules:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        assert_eq!(rule["state"], "inactive", "fires on healthy hubs: {rule}");
    }
}

/// The dashboard shows every metric the hub exports, so nothing an SRE
/// may need is left off it.
#[tokio::test]
async fn every_exported_metric_is_on_the_dashboard() {
    let redis = RedisServer::start();
    let hub = spawn_hub(&[("AETHER_REDIS_URL", &redis.url())]).await;
    let mut a = Client::connect(&hub.ws_url("g", "a"), &[])
        .await
        .expect("a");
    let mut b = Client::connect(&hub.ws_url("g", "b"), &[])
        .await
        .expect("b");
    let _ = a.recv().await; // b's join
    b.send(msg("group", json!({ "group_id": "g" }))).await;
    let _ = a.recv().await;
    let c = Client::connect(&hub.ws_url("h", "c"), &[])
        .await
        .expect("c");
    assert_eq!(c.close().await, 1000);
    support::eventually("the close is counted", || async {
        hub.get("/metrics")
            .await
            .body
            .contains("aether_connections_closed_total")
    })
    .await;
    let metrics = hub.get("/metrics").await.body;
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("# TYPE aether_"))
        .filter_map(|l| l.split(' ').nth(2))
        .collect();
    assert!(exported.len() >= 14, "{exported:?}");
    for name in &exported {
        assert!(DASHBOARD.contains(name), "{name} is not on the dashboard");
    }
    // And the other way: no panel or alert names a metric the hub does
    // not export (a typo would show "no data", or never fire).
    for (file, text) in [("dashboard", DASHBOARD), ("alerts.yml", ALERTS)] {
        for name in metric_names(text) {
            assert!(
                exported.contains(name.as_str()),
                "{file}: {name} is not exported"
            );
        }
    }
}

/// The `aether_*` metric families a PromQL text names.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("aether_") {
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        names.insert(family.to_owned());
    }
    names
}
