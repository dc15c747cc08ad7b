//! kcat (librdkafka 2.0.2 on Debian) as a producer, consumer and metadata client.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Server;

fn kcat_produce(bootstrap: &str, args: &[&str], input: &str) {
    let mut child = Command::new("kcat")
        .args(["-P", "-b", bootstrap])
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "kcat producer failed");
}

fn kcat_consume(bootstrap: &str, args: &[&str]) -> String {
    let out = Command::new("kcat")
        .args(["-C", "-b", bootstrap, "-o", "beginning", "-e", "-q"])
        .args(args)
        .output()
        .expect("kcat is installed");
    assert!(
        out.status.success(),
        "kcat consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn keyed_messages_round_trip_with_every_codec() {
    let server = Server::start();
    let b = server.bootstrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        let input: String = (0..500)
            .map(|i| format!("k{i}:value {i} {codec}\n"))
            .collect();
        kcat_produce(&b, &["-t", &topic, "-K:", "-z", codec], &input);
        let output = kcat_consume(&b, &["-t", &topic, "-f", "%k:%s\n"]);
        assert_eq!(output, input, "codec {codec}");
    }
}

#[test]
fn metadata_listing_shows_brokers_topics_and_partitions() {
    let server = Server::start();
    let out = server.cli(&["create", "listed", "--partitions", "4"]);
    assert!(out.status.success());
    let out = Command::new("kcat")
        .args(["-L", "-b", &server.bootstrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 brokers:"), "{text}");
    assert!(
        text.contains(&format!("broker 1 at 127.0.0.1:{}", server.port)),
        "{text}"
    );
    assert!(
        text.contains("topic \"listed\" with 4 partitions"),
        "{text}"
    );
}

#[test]
fn consume_from_offsets_and_end() {
    let server = Server::start();
    let b = server.bootstrap();
    let input: String = (0..100).map(|i| format!("line {i}\n")).collect();
    kcat_produce(&b, &["-t", "offsets", "-p", "0"], &input);
    let from_90 = Command::new("kcat")
        .args([
            "-C", "-b", &b, "-t", "offsets", "-p", "0", "-o", "90", "-e", "-q", "-f", "%o:%s\n",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&from_90.stdout);
    assert_eq!(text.lines().count(), 10);
    assert!(text.starts_with("90:line 90"), "{text}");
    let last_two = Command::new("kcat")
        .args([
            "-C", "-b", &b, "-t", "offsets", "-p", "0", "-o", "-2", "-e", "-q",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&last_two.stdout),
        "line 98\nline 99\n"
    );
}
