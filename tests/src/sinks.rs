//! Real receivers for the coordinator's notifications: an HTTP server
//! that checks each webhook's signature and keeps what it received, and a
//! real SMTP server (aiosmtpd, from PyPI, into a maildir) for mail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::{PATIENCE, Proc, workspace_root};

/// The Python the test tools are installed in (deploy/install-test-tools.sh).
pub fn python() -> PathBuf {
    let python = workspace_root().join("target/tools/python/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run deploy/install-test-tools.sh",
        python.display()
    );
    python
}

/// A webhook receiver on loopback: answers 200 to a correctly signed POST
/// and keeps its JSON, 401 to anything else (counted).
pub struct WebhookReceiver {
    addr: SocketAddr,
    secret: String,
    received: Arc<Mutex<Vec<Value>>>,
    forged: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebhookReceiver {
    /// Listens on a free port.
    pub fn start(secret: &str) -> WebhookReceiver {
        WebhookReceiver::serve(
            TcpListener::bind("127.0.0.1:0").expect("bind"),
            secret,
            Arc::default(),
            Arc::default(),
        )
    }

    /// Stops listening (a receiver that is down), keeping what it got.
    pub fn pause(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Listens again on the same port.
    pub fn resume(&mut self) {
        let listener = TcpListener::bind(self.addr).expect("the receiver's port again");
        let again = WebhookReceiver::serve(
            listener,
            &self.secret,
            self.received.clone(),
            self.forged.clone(),
        );
        self.pause();
        *self = again;
    }

    fn serve(
        listener: TcpListener,
        secret: &str,
        received: Arc<Mutex<Vec<Value>>>,
        forged: Arc<AtomicUsize>,
    ) -> WebhookReceiver {
        let addr = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let thread = {
            let (received, forged, stop) = (received.clone(), forged.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => answer(stream, &key, &received, &forged),
                        // Polls the stop flag between connections.
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        WebhookReceiver {
            addr,
            secret: secret.to_owned(),
            received,
            forged,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/failover", self.addr)
    }

    /// Every event received, in arrival order (duplicates included).
    pub fn events(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Requests refused for a wrong or missing signature.
    pub fn forged(&self) -> usize {
        self.forged.load(Ordering::SeqCst)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One HTTP/1.1 request on `stream`: checks the signature, keeps the body.
fn answer(
    stream: TcpStream,
    key: &ring::hmac::Key,
    received: &Mutex<Vec<Value>>,
    forged: &AtomicUsize,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    let mut signature = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "x-failover-signature" => signature = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let expected = ring::hmac::sign(key, &body);
    let hex: String = expected
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let status = if signature == format!("sha256={hex}") {
        match serde_json::from_slice(&body) {
            Ok(event) => {
                received.lock().unwrap().push(event);
                "200 OK"
            }
            Err(_) => "400 Bad Request",
        }
    } else {
        forged.fetch_add(1, Ordering::SeqCst);
        "401 Unauthorized"
    };
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// A real SMTP server (aiosmtpd) writing every mail into a maildir,
/// optionally offering STARTTLS with the given certificate.
pub struct Mailbox {
    pub addr: SocketAddr,
    maildir: PathBuf,
    _server: Proc,
}

/// One received mail.
#[derive(Debug, Clone)]
pub struct Mail {
    pub subject: String,
    pub to: String,
    pub text: String,
}

impl Mailbox {
    pub fn start(dir: &Path, starttls: Option<(&Path, &Path)>) -> Mailbox {
        let maildir = dir.join("maildir");
        let port = crate::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Command::new(python());
        command
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(addr.to_string())
            .args(["-c", "aiosmtpd.handlers.Mailbox"]);
        if let Some((cert, key)) = starttls {
            command.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
        }
        command.arg(&maildir);
        let server = Proc::spawn(command, dir.join("smtp.log"));
        let deadline = std::time::Instant::now() + PATIENCE;
        while TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the SMTP server did not listen: {}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Mailbox {
            addr,
            maildir,
            _server: server,
        }
    }

    /// Every mail delivered so far.
    pub fn mails(&self) -> Vec<Mail> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        let mut mails: Vec<(std::time::SystemTime, Mail)> = entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
                let text = std::fs::read_to_string(&path).ok()?;
                let header = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap_or_default()
                        .trim()
                        .to_owned()
                };
                Some((
                    modified,
                    Mail {
                        subject: header("Subject:"),
                        to: header("To:"),
                        text: text.clone(),
                    },
                ))
            })
            .collect();
        mails.sort_by_key(|(at, _)| *at);
        mails.into_iter().map(|(_, m)| m).collect()
    }
}
