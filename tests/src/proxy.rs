//! A TCP proxy between one agent and the coordinator, for network faults on
//! loopback: pass, delay (with jitter, order kept), blackhole (a partition:
//! connections stay open, nothing passes either way until it heals), and
//! reset (open connections are closed, new ones closed at once).

use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk is held `base ± jitter` before it passes; order is kept.
    Delay {
        base: Duration,
        jitter: Duration,
    },
    /// Nothing passes in either direction; connections stay open.
    Blackhole,
    /// Open connections are closed; new ones are closed at once.
    Reset,
}

pub struct Proxy {
    /// Where the first upstream is reached through the proxy.
    pub addr: SocketAddr,
    /// Where each upstream is reached, in the order given.
    pub addrs: Vec<SocketAddr>,
    mode: watch::Sender<Mode>,
    /// Dropping the runtime stops the proxy and closes its connections.
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    /// Starts a proxy on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: SocketAddr, seed: u64) -> Proxy {
        Proxy::start_many(&[upstream], seed)
    }

    /// One proxy in front of several upstreams (a port for each), all in
    /// the same mode: one node's links to every coordinator replica, or
    /// one replica's to every etcd member.
    pub fn start_many(upstreams: &[SocketAddr], seed: u64) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let (mode, rx) = watch::channel(Mode::Pass);
        let mut addrs = Vec::new();
        for (i, upstream) in upstreams.iter().enumerate() {
            let listener = runtime
                .block_on(TcpListener::bind("127.0.0.1:0"))
                .expect("proxy listens");
            addrs.push(listener.local_addr().expect("proxy address"));
            let seed = seed.wrapping_add((i as u64) << 32);
            runtime.spawn(accept(listener, *upstream, rx.clone(), seed));
        }
        Proxy {
            addr: addrs[0],
            addrs,
            mode,
            _runtime: runtime,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    seed: u64,
) {
    let mut n = 0;
    while let Ok((inbound, _)) = listener.accept().await {
        if *mode.borrow() == Mode::Reset {
            continue; // dropped: closed at once
        }
        n += 1;
        tokio::spawn(connection(
            inbound,
            upstream,
            mode.clone(),
            seed.wrapping_add(n),
        ));
    }
}

async fn connection(
    inbound: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    seed: u64,
) {
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return; // the coordinator is down: the agent sees the close
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (from_agent, to_agent) = inbound.into_split();
    let (from_coordinator, to_coordinator) = outbound.into_split();
    tokio::select! {
        _ = pump(from_agent, to_coordinator, mode.clone(), seed) => {}
        _ = pump(from_coordinator, to_agent, mode.clone(), seed ^ 0x5eed) => {}
        _ = mode.wait_for(|m| *m == Mode::Reset) => {}
    }
    // All four halves drop here: both connections close.
}

/// Copies one direction, applying the current mode to every chunk.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
    seed: u64,
) {
    let (queue, mut released) = mpsc::channel::<(Instant, Vec<u8>)>(4096);
    let mut read_mode = mode.clone();
    let reader = async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut last_release = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = match *read_mode.borrow_and_update() {
                Mode::Delay { base, jitter } => {
                    let offset = jitter.as_secs_f64() * rng.random_range(-1.0..=1.0);
                    Duration::from_secs_f64((base.as_secs_f64() + offset).max(0.0))
                }
                _ => Duration::ZERO,
            };
            // Order is kept: a chunk never overtakes the one before it.
            let release = (Instant::now() + delay).max(last_release);
            last_release = release;
            if queue.send((release, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let mut write_mode = mode;
    let writer = async move {
        while let Some((release, data)) = released.recv().await {
            tokio::time::sleep_until(release).await;
            // Hold everything while partitioned.
            if write_mode
                .wait_for(|m| *m != Mode::Blackhole)
                .await
                .is_err()
            {
                return;
            }
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(stream: &mut std::net::TcpStream) -> std::io::Result<()> {
        stream.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf)?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    #[test]
    fn pass_blackhole_heal_and_reset() {
        let proxy = Proxy::start(echo_server(), 1);
        let mut stream = std::net::TcpStream::connect(proxy.addr).unwrap();
        round_trip(&mut stream).unwrap();

        proxy.set(Mode::Blackhole);
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        stream.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        assert!(
            stream.read_exact(&mut buf).is_err(),
            "data crossed a partition"
        );

        // Healing releases what was held, in order.
        proxy.set(Mode::Pass);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");

        proxy.set(Mode::Reset);
        let mut buf = [0u8; 1];
        let closed = matches!(stream.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "reset left the connection open");
    }
}
