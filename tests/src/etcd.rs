//! A real etcd cluster for the tests: members on free loopback ports, each
//! its own process and data directory, which a test can kill, freeze and
//! start again.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::{PATIENCE, Proc, free_port, http_get};

/// One etcd member.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    proc: Option<Proc>,
    starts: u32,
}

pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    /// With TLS: the server certificate and key, and the CA clients'
    /// certificates must be signed by.
    tls: Option<EtcdTls>,
}

/// TLS on etcd's client port, with client certificates required.
#[derive(Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl EtcdCluster {
    /// Starts `n` members in `dir` and waits until the cluster answers.
    pub fn start(dir: PathBuf, n: usize) -> EtcdCluster {
        EtcdCluster::start_with(dir, n, None)
    }

    /// Like [`EtcdCluster::start`], serving clients over TLS (with client
    /// certificates required) when `tls` is given.
    ///
    /// Its ports are chosen free just before etcd binds them, so another
    /// test can take one meanwhile: a cluster that does not become healthy
    /// is started again, from nothing, on other ports (three tries).
    pub fn start_with(dir: PathBuf, n: usize, tls: Option<EtcdTls>) -> EtcdCluster {
        const TRIES: usize = 3;
        for attempt in 1..=TRIES {
            std::fs::create_dir_all(&dir).expect("etcd directory");
            let members = (0..n)
                .map(|i| Member {
                    name: format!("etcd-{i}"),
                    client: free_port(),
                    peer: free_port(),
                    proc: None,
                    starts: 0,
                })
                .collect();
            let mut cluster = EtcdCluster {
                dir: dir.clone(),
                members,
                tls: tls.clone(),
            };
            for i in 0..n {
                cluster.start_member(i);
            }
            if attempt == TRIES {
                cluster.wait_healthy();
                return cluster;
            }
            if cluster.healthy_within(PATIENCE) {
                return cluster;
            }
            eprintln!("etcd did not become healthy; starting it again on other ports");
            for i in 0..n {
                cluster.kill_member(i);
                let _ = std::fs::remove_dir_all(dir.join(&cluster.members[i].name));
            }
        }
        unreachable!("the last try returns or fails")
    }

    /// Whether every running member is healthy within `patience`.
    fn healthy_within(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        loop {
            let running: Vec<usize> = (0..self.members.len())
                .filter(|i| self.members[*i].proc.is_some())
                .collect();
            if running.iter().all(|i| self.member_healthy(*i)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every member's client address.
    pub fn client_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.members
            .iter()
            .map(|m| std::net::SocketAddr::from(([127, 0, 0, 1], m.client)))
            .collect()
    }

    /// Client URLs of every member, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again: it rejoins with its data).
    pub fn start_member(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let dir = self.dir.clone();
        let scheme = self.scheme();
        let tls = self.tls.clone();
        let m = &mut self.members[i];
        assert!(m.proc.is_none(), "{} is running", m.name);
        m.starts += 1;
        let client = format!("{scheme}://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let mut command = Command::new("etcd");
        command
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", dir.join(&m.name).display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=failover-test")
            // Faster elections than the defaults, as on a LAN.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500");
        if let Some(tls) = &tls {
            command
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let log = dir.join(format!("{}-{}.log", m.name, m.starts));
        m.proc = Some(Proc::spawn(command, log));
    }

    /// `kill -9` of member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.signal(Signal::SIGKILL);
            p.wait_exit();
        }
    }

    pub fn freeze_member(&self, i: usize) {
        if let Some(p) = &self.members[i].proc {
            p.signal(Signal::SIGSTOP);
        }
    }

    pub fn thaw_member(&self, i: usize) {
        if let Some(p) = &self.members[i].proc {
            p.signal(Signal::SIGCONT);
        }
    }

    /// Whether member `i` says it is healthy (it has a quorum); with TLS,
    /// whether it accepts connections.
    pub fn member_healthy(&self, i: usize) -> bool {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.members[i].client));
        if self.tls.is_some() {
            return std::net::TcpStream::connect(addr).is_ok();
        }
        http_get(addr, "/health").is_some_and(|(code, body)| code == 200 && body.contains("true"))
    }

    /// Deletes `key` through member `i`'s JSON gateway (as an operator with
    /// etcdctl would); whether etcd said it did.
    pub fn delete_key(&self, i: usize, key: &str) -> bool {
        use std::io::{Read, Write};
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.members[i].client));
        let body = format!("{{\"key\":\"{}\"}}", base64(key.as_bytes()));
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "POST /v3/kv/deleterange HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
    }

    /// Waits until every running member is healthy.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let running: Vec<usize> = (0..self.members.len())
                .filter(|i| self.members[*i].proc.is_some())
                .collect();
            if running.iter().all(|i| self.member_healthy(*i)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Standard base64, for etcd's JSON gateway.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_as_etcd_reads_it() {
        assert_eq!(
            super::base64(b"/failover/leader"),
            "L2ZhaWxvdmVyL2xlYWRlcg=="
        );
        assert_eq!(super::base64(b"ab"), "YWI=");
    }
}
