//! One pipeline's commands, and what each answer means for the messages
//! it carries: a plain message is one `PUBLISH` (`SPUBLISH` on a cluster);
//! a run of consecutive kept messages is one `NUMBER` call
//! (`numbering.rs`), which numbers, keeps and publishes them in order.
//!
//! On a cluster a call's keys must share a slot, so each run of kept
//! messages is first put in slot order ([`by_slot`]): messages of one slot
//! (so of one route) keep their order, and only messages of different
//! slots, whose order a cluster never promised (they may live on
//! different masters), trade places.

use redis::Value;

use super::{Kept, Outgoing};
use crate::broker::redis::link::Publish;
use crate::broker::redis::numbering::{self, Message, Numbering};
use crate::broker::redis::scripts::Invoke;
use crate::broker::redis::slots::Slot;
use crate::broker::{BrokerError, Confirm};
use crate::history::{Epoch, Position, Retention};

/// One command of a pipeline: the next `len` messages, plain or kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub len: usize,
    pub kept: bool,
}

/// Puts each run of kept messages in slot order (stable: one slot's
/// messages keep theirs), so that a run makes few `NUMBER` calls on a
/// cluster. Plain messages stay where they are.
pub fn by_slot(items: &mut [Outgoing]) {
    for run in items.split_mut(|i| i.kept.is_none()) {
        run.sort_by_cached_key(|i| Slot::of(&i.channel));
    }
}

/// Builds the pipeline, and says which messages each command carries.
pub fn pipeline(
    items: &[Outgoing],
    retention: Retention,
    publish: Publish,
    invoke: Invoke,
    lineage: &str,
) -> (redis::Pipeline, Vec<Command>) {
    let mut pipe = redis::Pipeline::with_capacity(items.len());
    let mut commands = Vec::new();
    // Only used by a route that has no epoch yet; one per pipeline is
    // enough (an epoch must differ from the route's earlier ones, not from
    // other routes').
    let fresh = items.iter().any(|i| i.kept.is_some()).then(Epoch::random);
    let mut run: Vec<Message<'_>> = Vec::new();
    let mut bytes = 0;
    let how = |fresh| Numbering {
        invoke,
        publish,
        fresh,
        lineage,
    };
    for item in items {
        let text = item.msg.as_str();
        match (&item.kept, &fresh) {
            (Some(Kept { keys, sender }), Some(fresh)) => {
                let message = Message {
                    keys,
                    channel: &item.channel,
                    text,
                    sender,
                };
                let same_slot = run.first().is_none_or(|first| {
                    publish == Publish::Classic
                        || Slot::of(first.channel) == Slot::of(&item.channel)
                });
                if !same_slot || !numbering::fits(run.len(), bytes, &message) {
                    flush(&mut pipe, &mut commands, &mut run, retention, how(fresh));
                    bytes = 0;
                }
                bytes += text.len();
                run.push(message);
            }
            _ => {
                if let Some(fresh) = &fresh {
                    flush(&mut pipe, &mut commands, &mut run, retention, how(fresh));
                    bytes = 0;
                }
                pipe.cmd(publish.command())
                    .arg(&item.channel)
                    .arg(text.as_bytes());
                commands.push(Command {
                    len: 1,
                    kept: false,
                });
            }
        }
    }
    if let Some(fresh) = &fresh {
        flush(&mut pipe, &mut commands, &mut run, retention, how(fresh));
    }
    (pipe, commands)
}

/// Ends a run of kept messages: one `NUMBER` call for all of them.
fn flush(
    pipe: &mut redis::Pipeline,
    commands: &mut Vec<Command>,
    run: &mut Vec<Message<'_>>,
    retention: Retention,
    how: Numbering<'_>,
) {
    if run.is_empty() {
        return;
    }
    pipe.add_command(numbering::number_cmd(run, retention, how));
    commands.push(Command {
        len: run.len(),
        kept: true,
    });
    run.clear();
}

/// Tells the messages of one command what became of them; returns how
/// many went out and how many did not.
pub fn settle(command: Command, items: Vec<Outgoing>, reply: &Value) -> (u64, u64) {
    let n = items.len() as u64;
    if let Value::ServerError(e) = reply {
        super::refused(e.code(), e.details().unwrap_or(""));
        if command.kept && command.len > 1 && !before_any_publish(e.code()) {
            // A script stops at its first error; the messages before it
            // went out. Which ones is not said: unknown, not "failed".
            unconfirmed(items);
        }
        return (0, n);
    }
    if !command.kept {
        for confirm in items.into_iter().filter_map(|i| i.confirm) {
            confirm.tell(Ok(None));
        }
        return (n, 0);
    }
    let routes = items
        .iter()
        .map(|i| i.kept.as_ref().map_or("", |k| k.keys.position.as_str()));
    match numbering::numbered(reply, routes) {
        Some(positions) => {
            for (item, position) in items.into_iter().zip(positions) {
                tell(item.confirm, position);
            }
            (n, 0)
        }
        // Redis ran the call and answered something else.
        None => {
            unconfirmed(items);
            (0, n)
        }
    }
}

fn tell(confirm: Option<Confirm>, position: Position) {
    if let Some(confirm) = confirm {
        confirm.tell(Ok(Some(position)));
    }
}

/// Errors a `NUMBER` call meets before it publishes anything: refusals of
/// the call itself, and of its first write (the positions are written
/// before any message is published), so nothing of the batch went out.
fn before_any_publish(code: &str) -> bool {
    matches!(
        code,
        "NOSCRIPT"
            | "READONLY"
            | "OOM"
            | "NOPERM"
            | "BUSY"
            | "LOADING"
            | "MASTERDOWN"
            | "CLUSTERDOWN"
            | "TRYAGAIN"
            | "CROSSSLOT"
            | "MOVED"
            | "ASK"
            | "NOAUTH"
            | "WRONGPASS"
    )
}

/// Tells the messages' confirmations that their fate is unknown (rather
/// than dropping them, which says "not published").
pub fn unconfirmed(items: Vec<Outgoing>) {
    for confirm in items.into_iter().filter_map(|i| i.confirm) {
        confirm.tell(Err(BrokerError::Unconfirmed));
    }
}
