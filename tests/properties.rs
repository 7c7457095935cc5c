//! Property tests (proptest) of two invariants, through the crate's public
//! API:
//!
//! - the router's refcounts: after any sequence of joins and leaves, the
//!   routes it told the broker to subscribe, less those it told it to
//!   unsubscribe, are exactly the routes with a local socket, and each
//!   route reaches exactly those sockets;
//! - a resuming socket's merge of replay and live messages (`decide`,
//!   `Resumed::assemble`, `Dedup`): each route's messages arrive in order,
//!   none twice, none missing from where the socket resumed.
//!
//! The Redis reader's gap repair is private to the crate: its properties
//! live beside it (`src/broker/redis/reader/properties.rs`).
//!
//! Cases are bounded and the seed fixed, so runs are quick and repeat;
//! `PROPTEST_CASES` and `PROPTEST_RNG_SEED` override both.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::RngSeed;
use tokio::sync::mpsc;

use aether_hub::channels::Route;
use aether_hub::delivery::Delivery;
use aether_hub::history::{
    decide, number, position_of, Epoch, Kept, Position, Recovery, RouteKind, Since,
};
use aether_hub::outbox::Outbox;
use aether_hub::protocol::{self, Encoded, Origin, PresenceEvent, VisionId};
use aether_hub::replay::{Dedup, Resumed};
use aether_hub::router::{ClientFull, Router, SocketId};

/// 256 cases from a fixed seed, unless the environment says otherwise.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0xae7e_2026);
    }
    config
}

fn id(s: &str) -> VisionId {
    VisionId::parse(s).unwrap()
}

// ---------------------------------------------------------------------
// The router's refcounts

const GROUPS: [&str; 3] = ["g0", "g1", "g2"];
const CLIENTS: [&str; 4] = ["c0", "c1", "c2", "c3"];

#[derive(Debug, Clone)]
enum Step {
    /// A new socket of `client` in `group` joins, at most `limit` sockets
    /// per client (0: no limit), as `Hub::connect` joins it.
    Join {
        group: usize,
        client: usize,
        limit: usize,
    },
    /// One of the sockets made so far leaves, as dropping its `Membership`
    /// does: joined, left already, or refused.
    Leave { pick: Index },
}

fn step() -> impl Strategy<Value = Step> {
    let join = (
        0..GROUPS.len(),
        0..CLIENTS.len(),
        prop_oneof![Just(0), 2..4usize],
    )
        .prop_map(|(group, client, limit)| Step::Join {
            group,
            client,
            limit,
        });
    let leave = any::<Index>().prop_map(|pick| Step::Leave { pick });
    prop_oneof![3 => join, 2 => leave]
}

struct Socket {
    id: SocketId,
    client: VisionId,
    routes: [Route; 3],
    outbox: Arc<Outbox>,
    rx: mpsc::Receiver<Delivery>,
}

/// What the router should know, kept the plain way.
#[derive(Default)]
struct Model {
    /// Route -> the sockets (indexes into the sockets made) on it.
    members: HashMap<Route, BTreeSet<usize>>,
    /// The routes the router reported going 0 -> 1, less those it reported
    /// going 1 -> 0: what the broker was told to subscribe.
    subscribed: HashSet<Route>,
}

impl Model {
    fn count(&self, route: &Route) -> usize {
        self.members.get(route).map_or(0, BTreeSet::len)
    }

    /// Applies the router's reported transitions; each must be one.
    fn subscribe(&mut self, added: &[Route]) -> Result<(), TestCaseError> {
        for route in added {
            prop_assert!(
                self.subscribed.insert(route.clone()),
                "{route:?} subscribed twice"
            );
        }
        Ok(())
    }

    fn unsubscribe(&mut self, removed: &[Route]) -> Result<(), TestCaseError> {
        for route in removed {
            prop_assert!(
                self.subscribed.remove(route),
                "{route:?} unsubscribed but not subscribed"
            );
        }
        Ok(())
    }
}

fn universe() -> Vec<Route> {
    let mut all = vec![Route::Broadcast];
    all.extend(GROUPS.iter().map(|g| Route::Group(id(g))));
    all.extend(CLIENTS.iter().map(|c| Route::Client(id(c))));
    all
}

/// The router against the model: what it wants, what it was told to
/// subscribe, and who a message on each of `probed` reaches.
fn check(
    router: &Router,
    model: &Model,
    sockets: &mut [Socket],
    probed: &[Route],
) -> Result<(), TestCaseError> {
    let local: HashSet<Route> = model.members.keys().cloned().collect();
    prop_assert_eq!(&model.subscribed, &local, "subscribed vs local sockets");
    let routes = router.routes();
    let listed: HashSet<Route> = routes.iter().cloned().collect();
    prop_assert_eq!(routes.len(), listed.len(), "a route listed twice");
    prop_assert_eq!(&listed, &local, "Router::routes vs local sockets");
    for route in universe() {
        prop_assert_eq!(router.wants(&route), local.contains(&route), "{:?}", route);
    }
    // Nobody is the sender: a message reaches every socket on the route.
    let probe = Delivery::plain("{}");
    for route in probed {
        let fanout = router.dispatch(route, &probe, "svc");
        let members = model.members.get(route).cloned().unwrap_or_default();
        prop_assert_eq!(fanout.overflowed, 0);
        prop_assert_eq!(fanout.delivered, members.len(), "recipients of {:?}", route);
        // As many as the model's members, and each of them got it: so
        // exactly them.
        for i in members {
            prop_assert!(sockets[i].rx.try_recv().is_ok(), "{:?} missed", route);
            prop_assert!(sockets[i].rx.try_recv().is_err(), "{:?} twice", route);
        }
    }
    Ok(())
}

fn run_router(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let router = Router::new();
    let mut model = Model::default();
    let mut sockets: Vec<Socket> = Vec::new();
    for step in steps {
        let probed = match step {
            Step::Join {
                group,
                client,
                limit,
            } => {
                let (group, client) = (id(GROUPS[group]), id(CLIENTS[client]));
                let (outbox, rx) = Outbox::new(64);
                let socket = Socket {
                    id: SocketId::next(),
                    routes: Route::for_socket(&group, &client),
                    client,
                    outbox,
                    rx,
                };
                let joined = router.join(
                    socket.id,
                    &socket.client,
                    &socket.outbox,
                    &socket.routes,
                    limit,
                );
                let i = sockets.len();
                let full = limit > 0 && model.count(&socket.routes[0]) >= limit;
                if full {
                    prop_assert_eq!(joined, Err(ClientFull(limit)));
                } else {
                    let expected: Vec<Route> = socket
                        .routes
                        .iter()
                        .filter(|r| model.count(r) == 0)
                        .cloned()
                        .collect();
                    let added = joined.map_err(|e| TestCaseError::fail(format!("{e}")))?;
                    prop_assert_eq!(&added, &expected, "routes reported new");
                    model.subscribe(&added)?;
                    for route in &socket.routes {
                        model.members.entry(route.clone()).or_default().insert(i);
                    }
                }
                let probed = socket.routes.to_vec();
                sockets.push(socket);
                probed
            }
            Step::Leave { pick } => {
                if sockets.is_empty() {
                    continue;
                }
                let i = pick.index(sockets.len());
                let socket = &sockets[i];
                let expected: Vec<Route> = socket
                    .routes
                    .iter()
                    .filter(|r| model.members.get(r) == Some(&BTreeSet::from([i])))
                    .cloned()
                    .collect();
                let removed = router.leave(socket.id, &socket.routes);
                prop_assert_eq!(&removed, &expected, "routes reported empty");
                model.unsubscribe(&removed)?;
                for route in &socket.routes {
                    if let Some(members) = model.members.get_mut(route) {
                        members.remove(&i);
                        if members.is_empty() {
                            model.members.remove(route);
                        }
                    }
                }
                socket.routes.to_vec()
            }
        };
        check(&router, &model, &mut sockets, &probed)?;
    }
    // Everybody leaves: nothing is wanted any more.
    for socket in &sockets {
        let removed = router.leave(socket.id, &socket.routes);
        model.unsubscribe(&removed)?;
    }
    prop_assert!(model.subscribed.is_empty(), "{:?}", model.subscribed);
    prop_assert!(router.routes().is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any joins and leaves: the subscriptions the router asked for are the
    /// routes with local sockets, and every route reaches exactly those.
    #[test]
    fn router_refcounts_match_a_plain_model(steps in prop::collection::vec(step(), 0..200)) {
        run_router(steps)?;
    }
}

// ---------------------------------------------------------------------
// The recovery merge

const EPOCH: &str = "e1";

/// What the socket asked for one route.
#[derive(Debug, Clone, Copy)]
enum Asked {
    New,
    /// The last offset seen, in the route's epoch.
    At(u64),
    /// A position in an epoch the route no longer has.
    OtherEpoch(u64),
}

/// One route's story, offsets 1..=`numbered` (at most 20 per route).
#[derive(Debug, Clone)]
struct RouteCase {
    /// Messages numbered by the end.
    numbered: u64,
    /// The last offset numbered when the socket's routes went live: later
    /// ones are in its queue.
    live_after: u64,
    /// The position recovery read (after the routes went live).
    position: u64,
    /// History keeps the offsets after this one (older ones trimmed or
    /// expired).
    trimmed: u64,
    /// `None`: the socket did not ask to resume this route.
    asked: Option<Asked>,
    /// Which messages (offset - 1) the socket's own client sent.
    own: Vec<bool>,
}

fn route_case() -> impl Strategy<Value = RouteCase> {
    (0..=20u64).prop_flat_map(|n| {
        let asked = prop_oneof![
            1 => Just(None),
            1 => Just(Some(Asked::New)),
            4 => (0..=n + 1).prop_map(|s| Some(Asked::At(s))),
            1 => (0..=n).prop_map(|s| Some(Asked::OtherEpoch(s))),
        ];
        (
            0..=n,
            0..=n,
            0..=n,
            asked,
            prop::collection::vec(prop::bool::weighted(0.2), n as usize),
        )
            .prop_map(move |(a, b, trimmed, asked, own)| RouteCase {
                numbered: n,
                live_after: a.min(b),
                position: a.max(b),
                trimmed,
                asked,
                own,
            })
    })
}

const GROUP: &str = "g";
const CLIENT: &str = "me";

/// The hub's encoding of message `offset` of a route, numbered as history
/// numbers it; the payload carries decoy `offset` and `epoch` fields.
fn message(kind: RouteKind, offset: u64, own: bool) -> Encoded {
    let from = if own { CLIENT } else { "svc" };
    let address = match kind {
        RouteKind::Client => format!(r#""target":"direct","to_id":"{CLIENT}""#),
        RouteKind::Group => format!(r#""target":"group","group_id":"{GROUP}""#),
        RouteKind::Broadcast => r#""target":"broadcast""#.to_owned(),
    };
    let frame = format!(
        r#"{{"msg_type":"msg",{address},"from_id":"{from}","payload":{{"offset":0,"epoch":"x","n":{offset}}}}}"#
    );
    let msg = protocol::parse(&frame, Origin::Service).unwrap().encode();
    Encoded::from_text(number(msg.as_str(), offset, &Epoch::parse(EPOCH).unwrap()))
}

/// What the socket hears: a route's message (its kind and offset), the
/// recovery summary, or the `n`th message without a position (a presence
/// event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    Numbered(RouteKind, u64),
    Summary,
    Unnumbered(usize),
}

struct Merge {
    cases: [RouteCase; 3],
    /// Which queue each live message comes from, in arrival order: a route
    /// kind's index, or 3 for a presence event.
    arrivals: Vec<usize>,
}

impl std::fmt::Debug for Merge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (kind, case) in RouteKind::ALL.iter().zip(&self.cases) {
            writeln!(f, "{kind:?}: {case:?}")?;
        }
        write!(f, "arrivals: {:?}", self.arrivals)
    }
}

/// Whether the socket hears `own` live and in replays on this route
/// (group and broadcast messages skip their sender).
fn hears(kind: RouteKind, own: bool) -> bool {
    !own || kind == RouteKind::Client
}

fn merge() -> impl Strategy<Value = Merge> {
    ([route_case(), route_case(), route_case()], 0..4usize).prop_flat_map(|(cases, presence)| {
        let mut arrivals = Vec::new();
        for (k, (kind, case)) in RouteKind::ALL.iter().zip(&cases).enumerate() {
            let live = (case.live_after + 1..=case.numbered)
                .filter(|&o| hears(*kind, case.own[o as usize - 1]))
                .count();
            arrivals.extend(std::iter::repeat_n(k, live));
        }
        arrivals.extend(std::iter::repeat_n(3, presence));
        // Any interleaving of the queues, each in its own order.
        Just(arrivals)
            .prop_shuffle()
            .prop_map(move |arrivals| Merge {
                cases: cases.clone(),
                arrivals,
            })
    })
}

fn run_merge(merge: Merge) -> Result<(), TestCaseError> {
    let epoch = Epoch::parse(EPOCH).unwrap();
    let (group, client) = (id(GROUP), id(CLIENT));
    let mut texts: HashMap<String, Heard> = HashMap::new();
    let mut answers = Vec::new();
    let mut live: [VecDeque<Delivery>; 4] = Default::default();
    let mut expected: [Vec<u64>; 3] = Default::default();
    let mut recovered = [false; 3];
    for (k, (&kind, case)) in RouteKind::ALL.iter().zip(&merge.cases).enumerate() {
        let msgs: Vec<Encoded> = (1..=case.numbered)
            .map(|o| message(kind, o, case.own[o as usize - 1]))
            .collect();
        for (i, m) in msgs.iter().enumerate() {
            texts.insert(m.as_str().to_owned(), Heard::Numbered(kind, i as u64 + 1));
        }
        let hears_offset = |o: u64| hears(kind, case.own[o as usize - 1]);
        // The socket's queue: what the router handed it since going live.
        live[k].extend(
            (case.live_after + 1..=case.numbered)
                .filter(|&o| hears_offset(o))
                .map(|offset| {
                    let text = msgs[offset as usize - 1].as_str();
                    Delivery::numbered(text, kind)
                }),
        );
        // The plain model: a route resumes from where the socket asked if
        // history still holds everything after it, else not at all.
        let p = case.position;
        let from = match case.asked {
            Some(Asked::New) => Some(p),
            Some(Asked::At(s)) if s <= p && (case.trimmed <= s || s == p) => Some(s),
            _ => None,
        };
        recovered[k] = from.is_some();
        let first = from.unwrap_or(case.live_after);
        expected[k] = (first + 1..=case.numbered)
            .filter(|&o| hears_offset(o))
            .collect();
        // What the broker answers.
        let Some(asked) = case.asked else { continue };
        let since = match asked {
            Asked::New => Since::New,
            Asked::At(s) => Since::At(Position {
                epoch: epoch.clone(),
                offset: s,
            }),
            Asked::OtherEpoch(s) => Since::At(Position {
                epoch: Epoch::parse("e0").unwrap(),
                offset: s,
            }),
        };
        let position = Position {
            epoch: epoch.clone(),
            offset: p,
        };
        let kept = (case.trimmed + 1..=case.numbered)
            .map(|o| Kept {
                offset: o,
                text: msgs[o as usize - 1].clone(),
                sender: if case.own[o as usize - 1] {
                    CLIENT
                } else {
                    "svc"
                }
                .into(),
            })
            .collect();
        let outcome = decide(&since, &position, kept);
        answers.push((
            kind,
            Recovery {
                outcome,
                position: Some(position),
            },
        ));
    }
    for n in 0..live_presence(&merge) {
        let who = id(&format!("p{n}"));
        let event = protocol::presence_event(PresenceEvent::Join, &group, &who);
        texts.insert(event.as_str().to_owned(), Heard::Unnumbered(n));
        live[3].push_back(Delivery::plain(event.as_str()));
    }

    // The session: the replay and summary first, then the queue, less what
    // the replay carried.
    let Resumed { batch, mut dedup } = Resumed::assemble(&group, &client, answers);
    let mut heard: Vec<Heard> = Vec::new();
    let summary = batch.last().cloned();
    for msg in &batch {
        heard.push(match texts.get(msg.as_str()) {
            Some(h) => *h,
            None => Heard::Summary,
        });
    }
    let replayed = heard.len();
    for &q in &merge.arrivals {
        let msg = live[q].pop_front().expect("one message per arrival");
        if !replayed_already(&mut dedup, &msg) {
            heard.push(texts[msg.text()]);
        }
    }

    // The summary ends the replay, and says what was recovered.
    prop_assert_eq!(heard.get(replayed - 1), Some(&Heard::Summary));
    prop_assert_eq!(heard.iter().filter(|h| **h == Heard::Summary).count(), 1);
    let summary: serde_json::Value = serde_json::from_str(summary.unwrap().as_str()).unwrap();
    prop_assert_eq!(summary["msg_type"].as_str(), Some("recovery"));
    for (k, (kind, case)) in RouteKind::ALL.iter().zip(&merge.cases).enumerate() {
        let said = &summary["payload"][kind.as_str()];
        if case.asked.is_none() {
            prop_assert!(said.is_null());
            continue;
        }
        prop_assert_eq!(
            said["recovered"].as_bool(),
            Some(recovered[k]),
            "{:?}",
            kind
        );
        prop_assert_eq!(said["offset"].as_u64(), Some(case.position), "{:?}", kind);
    }
    // Each route: in order, none twice, none missing from where it resumed.
    for (k, kind) in RouteKind::ALL.iter().enumerate() {
        let got: Vec<u64> = heard
            .iter()
            .filter_map(|h| match h {
                Heard::Numbered(kd, o) if kd == kind => Some(*o),
                _ => None,
            })
            .collect();
        prop_assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{:?} out of order or twice: {:?}",
            kind,
            got
        );
        prop_assert_eq!(&got, &expected[k], "{:?} heard vs expected", kind);
    }
    // Unnumbered messages pass through, in order.
    let unnumbered: Vec<usize> = heard
        .iter()
        .filter_map(|h| match h {
            Heard::Unnumbered(n) => Some(*n),
            _ => None,
        })
        .collect();
    prop_assert_eq!(unnumbered, (0..live_presence(&merge)).collect::<Vec<_>>());
    Ok(())
}

/// Presence events among the live messages.
fn live_presence(merge: &Merge) -> usize {
    merge.arrivals.iter().filter(|&&q| q == 3).count()
}

/// `Session::push`: a live message is dropped when the replay carried it.
fn replayed_already(dedup: &mut Dedup, msg: &Delivery) -> bool {
    // Once every route has moved on the session stops asking.
    !dedup.is_done() && dedup.replayed(msg)
}

proptest! {
    #![proptest_config(config())]

    /// Replay plus live queue, any window of history, any overlap and any
    /// interleaving of routes: each route in order, no duplicate, no gap.
    #[test]
    fn recovery_merge_is_in_order_without_duplicate_or_gap(merge in merge()) {
        run_merge(merge)?;
    }

    /// `number` and `position_of` agree, whatever the text before.
    #[test]
    fn position_of_reads_back_what_number_wrote(
        offset in any::<u64>(),
        epoch in "[A-Za-z0-9_-]{1,64}",
        n in 0..100u64,
    ) {
        let msg = message(RouteKind::Group, n, false);
        let epoch = Epoch::parse(&epoch).unwrap();
        let renumbered = number(msg.as_str(), offset, &epoch);
        prop_assert_eq!(position_of(renumbered.as_str()), Some((offset, epoch.as_str())));
    }
}
