//! Faults a test makes in the lab's router, in the middle of the path:
//! a [`Cut`] between two hosts (iptables `DROP`, both ways) and an
//! [`Impairment`] of one host's link (random loss with iptables'
//! `statistic` match, delay through the [`delay`](super::delay) queue).
//! Each is undone when its guard is dropped.

use std::time::Duration;

use super::{delay, run, Host, Lab};

impl Lab {
    /// Drops every packet between `a` and `b`, both ways, in the router:
    /// neither side is told (no reset, no ICMP). Healed when the [`Cut`]
    /// is healed or dropped.
    pub fn cut(&self, a: Host, b: Host) -> Cut<'_> {
        let (a, b) = (self.ip(a).to_string(), self.ip(b).to_string());
        let rules = vec![
            svec(&["FORWARD", "-s", &a, "-d", &b, "-j", "DROP"]),
            svec(&["FORWARD", "-s", &b, "-d", &a, "-j", "DROP"]),
        ];
        for rule in &rules {
            self.iptables("-I", rule).expect("cut");
        }
        Cut { lab: self, rules }
    }

    /// Every packet crossing `host`'s link, either way, is lost with
    /// probability `loss` (0 to 1) and otherwise held for `delay` (so a
    /// round trip through the link takes 2 × `delay` more). Undone when
    /// the [`Impairment`] is dropped. An error says why it cannot be done
    /// here (the test then skips).
    pub fn impair(&self, host: Host, delay: Duration, loss: f64) -> Result<Impairment<'_>, String> {
        let queue = u16::from(host.index());
        let delayer = delay::Delayer::start(&self.router(), queue, delay)?;
        let dev = format!("h{}", host.index());
        let (probability, queue) = (format!("{loss}"), queue.to_string());
        let mut impairment = Impairment {
            lab: self,
            rules: Vec::new(),
            delayer: Some(delayer),
        };
        for way in ["-i", "-o"] {
            let drop = ["FORWARD", way, &dev, "-m", "statistic", "--mode", "random"];
            let rule = svec(&[&drop[..], &["--probability", &probability, "-j", "DROP"]].concat());
            impairment.add(rule)?;
        }
        for way in ["-i", "-o"] {
            impairment.add(svec(&[
                "FORWARD",
                way,
                &dev,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
            ]))?;
        }
        Ok(impairment)
    }

    fn iptables(&self, action: &str, rule: &[String]) -> Result<(), String> {
        let router = self.router();
        let mut args = vec![
            "ip", "netns", "exec", &router, "iptables", "-w", "5", action,
        ];
        args.extend(rule.iter().map(String::as_str));
        run(&args)
    }
}

/// Two hosts that cannot reach each other, until healed.
pub struct Cut<'a> {
    lab: &'a Lab,
    rules: Vec<Vec<String>>,
}

impl Cut<'_> {
    pub fn heal(mut self) {
        for rule in std::mem::take(&mut self.rules) {
            self.lab.iptables("-D", &rule).expect("heal");
        }
    }
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        for rule in std::mem::take(&mut self.rules) {
            let _ = self.lab.iptables("-D", &rule);
        }
    }
}

/// A slow, lossy link, until dropped.
pub struct Impairment<'a> {
    lab: &'a Lab,
    rules: Vec<Vec<String>>,
    delayer: Option<delay::Delayer>,
}

impl Impairment<'_> {
    fn add(&mut self, rule: Vec<String>) -> Result<(), String> {
        self.lab.iptables("-A", &rule)?;
        self.rules.push(rule);
        Ok(())
    }
}

impl Drop for Impairment<'_> {
    fn drop(&mut self) {
        // Rules first, so nothing is queued after the delayer lets go.
        for rule in std::mem::take(&mut self.rules) {
            let _ = self.lab.iptables("-D", &rule);
        }
        self.delayer.take();
    }
}

fn svec(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}
