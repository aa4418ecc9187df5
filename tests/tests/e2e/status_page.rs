//! The live status page in a real headless Chromium: a failover shows up
//! on the page without a reload.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use tests::sinks::python;
use tests::{Cluster, FAST, PATIENCE, workspace_root};

/// The browser driver (tests/browser/status_page.py): lines in, lines out.
struct Browser {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Browser {
    fn open(url: &str, group: &str, screenshot: &std::path::Path) -> Browser {
        let mut child = Command::new(python())
            .arg(workspace_root().join("tests/browser/status_page.py"))
            .args([url, group])
            .arg(screenshot)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the browser driver starts");
        let lines = tests::lines_of(child.stdout.take().unwrap());
        Browser { child, lines }
    }

    fn said(&self, c: &Cluster) -> String {
        match self.lines.recv_timeout(PATIENCE * 3) {
            Ok(line) => line,
            Err(_) => panic!("the browser driver said nothing{}", c.logs()),
        }
    }

    fn tell(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_status_page_shows_a_failover_live_without_a_reload() {
    let mut c = Cluster::start();
    c.add_group_with("db", &["rec-1", "rec-2"], &FAST);
    c.start_agent("rec-1");
    c.wait_primary("db", "rec-1");
    c.start_agent("rec-2");
    c.wait_connected("db", &["rec-2"]);

    let shot = c.path("status-page.png");
    let mut browser = Browser::open(&format!("http://{}/", c.http_addr()), "db", &shot);
    assert_eq!(browser.said(&c), "primary rec-1");

    c.kill_agent("rec-1");
    c.wait_primary("db", "rec-2");
    browser.tell("expect rec-2");
    assert_eq!(browser.said(&c), "primary rec-2", "shown live, no reload");
    browser.tell("text");
    let text = browser.said(&c);
    assert!(
        text.contains("promoted"),
        "the event list shows the promotion: {text}"
    );
    assert!(
        text.contains("disconnected"),
        "the dead member shows as disconnected: {text}"
    );

    browser.tell("shot");
    assert_eq!(browser.said(&c), "saved");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot");
    if let Ok(dir) = std::env::var("FAILOVER_SCREENSHOT_DIR") {
        std::fs::copy(&shot, std::path::Path::new(&dir).join("status-page.png")).unwrap();
    }
}
