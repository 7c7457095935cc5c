//! Delay without `sch_netem`: a thread in the router's namespace binds an
//! nfnetlink queue (iptables `-j NFQUEUE`), notes when each packet came,
//! and accepts the packets in order once each has waited the delay. A
//! batch verdict accepts every packet up to an id, so packets whose
//! notice the socket missed are not stranded.
//!
//! Used by [`Lab::impair`](super::Lab::impair), which sends a link's
//! packets to the queue.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// linux/netfilter/nfnetlink.h, nfnetlink_queue.h
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NF_ACCEPT: u32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NETLINK_NETFILTER: i32 = 12;
const NETLINK_NO_ENOBUFS: i32 = 5;
/// Packets the kernel holds for us at most (its default is 1024).
const QUEUE_MAX: u32 = 1 << 16;
/// How often the thread looks at its stop flag when nothing is held.
const IDLE_POLL_MS: i32 = 20;

pub struct Delayer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Delayer {
    /// Binds queue `queue` in namespace `netns`; returns once bound,
    /// so rules sending packets to it can go in.
    pub fn start(netns: &str, queue: u16, delay: Duration) -> Result<Delayer, String> {
        let path = format!("/run/netns/{netns}");
        let stop = Arc::new(AtomicBool::new(false));
        let (bound, bound_rx) = std::sync::mpsc::channel();
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("delay-{netns}-{queue}"))
            .spawn(move || match Queue::bind(&path, queue) {
                Ok(q) => {
                    let _ = bound.send(Ok(()));
                    q.run(delay, &stopping);
                }
                Err(e) => {
                    let _ = bound.send(Err(e));
                }
            })
            .map_err(|e| format!("delay thread: {e}"))?;
        let delayer = Delayer {
            stop,
            thread: Some(thread),
        };
        match bound_rx.recv_timeout(super::super::TIMEOUT) {
            Ok(Ok(())) => Ok(delayer),
            Ok(Err(e)) => Err(format!("NFQUEUE: {e}")),
            Err(_) => Err("NFQUEUE: the delay thread did not start".into()),
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Queue {
    fd: OwnedFd,
    queue: u16,
}

impl Queue {
    /// Enters `netns` (this thread only) and binds the queue there.
    fn bind(netns: &str, queue: u16) -> Result<Queue, String> {
        let ns = std::fs::File::open(netns).map_err(|e| format!("{netns}: {e}"))?;
        // SAFETY: a valid namespace descriptor; CLONE_NEWNET moves only
        // the calling thread, which does nothing else.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: plain socket creation; the descriptor is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A big buffer (root may force it): notices pile up when the
        // test's threads are busy.
        set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20);
        set_int(&fd, libc::SOL_NETLINK, NETLINK_NO_ENOBUFS, 1);
        // SAFETY: sockaddr_nl is plain data; zero is "kernel assigns".
        let mut local: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        local.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `local` is a valid sockaddr_nl of the size given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&local as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if bound != 0 {
            return Err(format!("bind: {}", std::io::Error::last_os_error()));
        }
        let q = Queue { fd, queue };
        q.configure()?;
        Ok(q)
    }

    /// Bind the queue, metadata only (we never look at payloads), and
    /// room for many packets; waits for the kernel's answer.
    fn configure(&self) -> Result<(), String> {
        let mut params = 0u32.to_be_bytes().to_vec(); // copy_range
        params.push(NFQNL_COPY_META);
        let attrs = [
            (NFQA_CFG_CMD, vec![NFQNL_CFG_CMD_BIND, 0, 0, 0]),
            (NFQA_CFG_PARAMS, params),
            (NFQA_CFG_QUEUE_MAXLEN, QUEUE_MAX.to_be_bytes().to_vec()),
        ];
        self.send(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, &attrs)?;
        let mut buf = vec![0u8; 8192];
        let n = self.recv(&mut buf, 0).map_err(|e| format!("recv: {e}"))?;
        for (kind, body) in messages(&buf[..n]) {
            if kind == NLMSG_ERROR && body.len() >= 4 {
                let code = i32::from_ne_bytes(body[..4].try_into().expect("4 bytes"));
                if code != 0 {
                    let e = std::io::Error::from_raw_os_error(-code);
                    return Err(format!("binding queue {}: {e}", self.queue));
                }
                return Ok(());
            }
        }
        Err("no answer to the queue's configuration".into())
    }

    fn run(self, delay: Duration, stop: &AtomicBool) {
        let mut held: VecDeque<(Instant, u32)> = VecDeque::new();
        let mut last = None;
        let mut buf = vec![0u8; 256 * 1024];
        while !stop.load(Ordering::SeqCst) {
            let wait = held.front().map_or(IDLE_POLL_MS, |(due, _)| {
                let left = due.saturating_duration_since(Instant::now());
                (left.as_micros().div_ceil(1000) as i32).min(IDLE_POLL_MS)
            });
            self.poll(wait);
            // Everything readable now, without blocking.
            while let Ok(n) = self.recv(&mut buf, libc::MSG_DONTWAIT) {
                let came = Instant::now();
                for id in packet_ids(&buf[..n]) {
                    held.push_back((came + delay, id));
                    last = Some(id);
                }
            }
            let now = Instant::now();
            let mut due = None;
            while held.front().is_some_and(|(at, _)| *at <= now) {
                due = held.pop_front().map(|(_, id)| id);
            }
            if let Some(id) = due {
                self.accept_up_to(id);
            }
        }
        // Stopping (the rules are gone): let everything held go.
        if let Some(id) = last {
            self.accept_up_to(id);
        }
    }

    fn accept_up_to(&self, id: u32) {
        let mut verdict = NF_ACCEPT.to_be_bytes().to_vec();
        verdict.extend(id.to_be_bytes());
        if let Err(e) = self.send(
            NFQNL_MSG_VERDICT_BATCH,
            NLM_F_REQUEST,
            &[(NFQA_VERDICT_HDR, verdict)],
        ) {
            eprintln!("delay queue {}: verdict: {e}", self.queue);
        }
    }

    /// One nfnetlink message of the queue subsystem for our queue.
    fn send(&self, kind: u16, flags: u16, attrs: &[(u16, Vec<u8>)]) -> Result<(), String> {
        let mut body = vec![libc::AF_UNSPEC as u8, 0]; // nfgenmsg: family, version
        body.extend(self.queue.to_be_bytes()); // res_id
        for (kind, value) in attrs {
            body.extend((4 + value.len() as u16).to_ne_bytes());
            body.extend(kind.to_ne_bytes());
            body.extend(value);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend(((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
        msg.extend(flags.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes()); // sequence
        msg.extend(0u32.to_ne_bytes()); // port id: the kernel
        msg.extend(body);
        // SAFETY: sends `msg.len()` bytes from a live buffer.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8], flags: i32) -> std::io::Result<usize> {
        // SAFETY: receives into a live buffer of the length given.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn poll(&self, timeout_ms: i32) {
        let mut fds = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut fds, 1, timeout_ms) };
    }
}

fn set_int(fd: &OwnedFd, level: i32, name: i32, value: i32) {
    // SAFETY: an int option of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
}

/// The netlink messages in `buf`: (type, body after the header).
fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        out.push((kind, &buf[16..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// The ids of the queued packets announced in `buf`.
fn packet_ids(buf: &[u8]) -> Vec<u32> {
    let packet = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
    let mut ids = Vec::new();
    for (kind, body) in messages(buf) {
        if kind != packet || body.len() < 4 {
            continue;
        }
        let mut attrs = &body[4..]; // past nfgenmsg
        while attrs.len() >= 4 {
            let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
            let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
            if len < 4 || len > attrs.len() {
                break;
            }
            if kind == NFQA_PACKET_HDR && len >= 8 {
                ids.push(u32::from_be_bytes(attrs[4..8].try_into().expect("4 bytes")));
                break;
            }
            attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
        }
    }
    ids
}
