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
use support::cluster::Cluster;
use support::process::{spawn_hub, Running};
use support::prometheus::Prometheus;
use support::redis::RedisServer;
use support::{eventually, msg, Client, Event};

const DASHBOARD: &str = include_str!("../grafana/dashboards/aether-hub.json");
const ALERTS: &str = include_str!("../deploy/alerts.yml");

/// The collapsed row whose panels only a Redis Cluster feeds.
const CLUSTER_ROW: &str = "Redis Cluster shards";

/// One query target of a panel, with the row the panel sits in.
struct Query {
    row: String,
    title: String,
    expr: String,
}

/// Every panel, those inside collapsed rows included, with its row's title.
fn panels(dashboard: &Value) -> Vec<(String, &Value)> {
    let mut found = Vec::new();
    let mut row = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            row = panel["title"].as_str().unwrap_or("?").to_owned();
            for nested in panel["panels"].as_array().into_iter().flatten() {
                found.push((row.clone(), nested));
            }
            continue;
        }
        found.push((row.clone(), panel));
    }
    found
}

/// Every query target of every panel.
fn panel_queries(dashboard: &Value) -> Vec<Query> {
    let mut found = Vec::new();
    for (row, panel) in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            found.push(Query {
                row: row.clone(),
                title: panel["title"].as_str().unwrap_or("?").to_owned(),
                expr: target["expr"].as_str().expect("a PromQL expr").to_owned(),
            });
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
    let top = dashboard["panels"].as_array().expect("panels");
    let nested = top
        .iter()
        .flat_map(|row| row["panels"].as_array().into_iter().flatten());
    for panel in top.iter().chain(nested) {
        assert!(ids.insert(panel["id"].as_i64()), "panel ids are unique");
    }
    for (_, panel) in panels(&dashboard) {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}: uses the datasource variable",
            panel["title"]
        );
    }
    for Query { title, expr, .. } in panel_queries(&dashboard) {
        assert!(
            expr.contains(r#"instance=~"$instance""#),
            "{title}: {expr} ignores the instance variable"
        );
    }
    let cluster_row = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"] == CLUSTER_ROW)
        .expect("the cluster row");
    assert_eq!(
        cluster_row["collapsed"], true,
        "the cluster row stays out of the way of single-Redis users"
    );
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
                // Reads until the hub closes the socket, then stops (a
                // closed socket answers at once: looping on would spin).
                while let Some(Event::Text(_)) = client.next_event(Duration::from_secs(70)).await {}
            }));
        }
        let mut controller = Client::connect(&a.ws_url("ops", "ctl"), &[])
            .await
            .expect("controller connects");
        let urls = [a.ws_url("ops", "visitor"), b.ws_url("ops", "visitor")];
        let addrs = [a.addr, b.addr];
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
                if round % 50 == 0 {
                    // An operator looking at the fleet.
                    support::http_request(addrs[round / 50 % 2], "GET", "/v3/info", &[], "").await;
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

/// Two hubs on one Redis backend, scraped by a real Prometheus (which
/// also evaluates `deploy/alerts.yml`) while the driver keeps them busy.
/// Fields drop in order: the driver stops before the hubs go.
struct Scraped {
    _driver: Driver,
    prometheus: Prometheus,
    hubs: [Running; 2],
}

impl Scraped {
    /// `backend` is the Redis setting the hubs get (`AETHER_REDIS_URL` or
    /// `AETHER_REDIS_CLUSTER`).
    async fn start(backend: (&str, &str)) -> Scraped {
        let a = spawn_hub(&[backend, ("AETHER_INSTANCE_ID", "hub-a")]).await;
        let b = spawn_hub(&[backend, ("AETHER_INSTANCE_ID", "hub-b")]).await;
        let targets: [SocketAddr; 2] = [a.addr, b.addr];
        let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts.yml");
        let prometheus = Prometheus::start(&targets, &[&rules]).await;
        let driver = Driver::start(&a, &b).await;
        prometheus.wait_for_scrapes(2, 5).await;
        Scraped {
            _driver: driver,
            prometheus,
            hubs: [a, b],
        }
    }

    /// Every query of the panels in the rows `shown` accepts returns at
    /// least one finite number, as Grafana would draw it.
    async fn assert_panels_have_data(&self, shown: impl Fn(&str) -> bool) {
        let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
        let queries: Vec<Query> = panel_queries(&dashboard)
            .into_iter()
            .filter(|q| shown(&q.row))
            .collect();
        let mut failures = Vec::new();
        for Query { title, expr, .. } in &queries {
            let sent = as_grafana_sends(expr);
            match self.prometheus.query(&sent).await {
                Err(e) => failures.push(format!("{title}: {sent}: query error {e}")),
                Ok(series) if series.is_empty() => {
                    failures.push(format!("{title}: {sent}: no series"))
                }
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
    }

    /// The driver's traffic shows on both instances, both say Redis is up,
    /// and every alerting rule is healthy and silent.
    async fn assert_healthy_and_quiet(&self) {
        let prometheus = &self.prometheus;
        let per_instance = prometheus
            .query("sum by (instance) (rate(aether_messages_delivered_total[1m])) > 0")
            .await
            .expect("query");
        assert_eq!(per_instance.len(), 2, "deliveries on both hubs");
        assert_eq!(prometheus.scalar("sum(aether_redis_up)").await, 2.0);
        let rules = prometheus.rules().await;
        assert!(rules.len() >= 7, "alerting rules loaded: {rules:?}");
        for rule in &rules {
            assert_eq!(rule["health"], "ok", "{rule}");
            assert_eq!(rule["state"], "inactive", "fires on healthy hubs: {rule}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_from_real_prometheus() {
    let redis = RedisServer::start();
    let scraped = Scraped::start(("AETHER_REDIS_URL", &redis.url())).await;
    scraped
        .assert_panels_have_data(|row| row != CLUSTER_ROW)
        .await;
    scraped.assert_healthy_and_quiet().await;
}

/// On a real Redis Cluster every panel, the shard row's included, has
/// data; the shard panels name the cluster's masters, and the channels
/// they count per shard add up to each instance's total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_on_a_redis_cluster() {
    let cluster = Cluster::start();
    let scraped = Scraped::start(("AETHER_REDIS_CLUSTER", &cluster.seeds())).await;
    scraped.assert_panels_have_data(|_| true).await;
    scraped.assert_healthy_and_quiet().await;

    let masters: BTreeSet<String> = cluster
        .masters()
        .await
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let shards = scraped
        .prometheus
        .query("sum by (shard) (aether_redis_shard_up) > 0")
        .await
        .expect("query");
    assert!(!shards.is_empty(), "no shard connection up");
    for shard in &shards {
        let name = shard["metric"]["shard"].as_str().unwrap_or("?");
        assert!(
            masters.contains(name),
            "{name} is not a master: {masters:?}"
        );
    }
    let prometheus = &scraped.prometheus;
    eventually(
        "channels per shard add up to each instance's total",
        || async {
            let apart = prometheus
                .query(
                    "sum by (instance) (aether_redis_shard_channels_subscribed) \
                 != on (instance) sum by (instance) (aether_redis_channels_subscribed)",
                )
                .await
                .expect("query");
            apart.is_empty()
        },
    )
    .await;

    let exported = exported_metrics(&scraped.hubs[0]).await;
    assert_dashboard_matches(&exported, None);
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
    assert_eq!(hub.get("/v3/info").await.status, 200);
    eventually("the close is counted", || async {
        hub.get("/metrics")
            .await
            .body
            .contains("aether_connections_closed_total")
    })
    .await;
    let exported = exported_metrics(&hub).await;
    assert!(exported.len() >= 14, "{exported:?}");
    // The shard metrics only a cluster exports are checked by
    // `every_panel_query_returns_data_on_a_redis_cluster`.
    assert_dashboard_matches(&exported, Some("aether_redis_shard_"));
}

/// The metric families a hub's `/metrics` declares.
async fn exported_metrics(hub: &Running) -> BTreeSet<String> {
    hub.get("/metrics")
        .await
        .body
        .lines()
        .filter(|l| l.starts_with("# TYPE aether_"))
        .filter_map(|l| Some(l.split(' ').nth(2)?.to_owned()))
        .collect()
}

/// Every exported family is on the dashboard and, the other way, no panel
/// or alert names a family the hub does not export (a typo would show "no
/// data", or never fire), bar those starting with `elsewhere`, which
/// another mode exports.
fn assert_dashboard_matches(exported: &BTreeSet<String>, elsewhere: Option<&str>) {
    for name in exported {
        assert!(
            DASHBOARD.contains(name.as_str()),
            "{name} is not on the dashboard"
        );
    }
    for (file, text) in [("dashboard", DASHBOARD), ("alerts.yml", ALERTS)] {
        for name in metric_names(text) {
            if elsewhere.is_some_and(|prefix| name.starts_with(prefix)) {
                continue;
            }
            assert!(exported.contains(&name), "{file}: {name} is not exported");
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
