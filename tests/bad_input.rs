//! Malformed frames, hostile sizes, unknown APIs and a corrupt segment: each
//! gets an error answer or a closed connection, and the server keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Server;

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.bootstrap()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// A request frame: header v1 (api key, version, correlation id, client id) and a body.
fn frame(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let client = b"bad-input-test";
    let mut payload = Vec::new();
    payload.extend_from_slice(&api_key.to_be_bytes());
    payload.extend_from_slice(&version.to_be_bytes());
    payload.extend_from_slice(&correlation_id.to_be_bytes());
    payload.extend_from_slice(&(client.len() as i16).to_be_bytes());
    payload.extend_from_slice(client);
    payload.extend_from_slice(body);
    let mut out = (payload.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

/// Reads one response frame; `None` when the server closed the connection.
fn read_response(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
}

/// The server still answers a well-formed ApiVersions v0 on a new connection.
fn assert_serving(server: &Server) {
    let mut stream = connect(server);
    stream.write_all(&frame(18, 0, 42, &[])).unwrap();
    let body = read_response(&mut stream).expect("ApiVersions answer");
    assert_eq!(
        i32::from_be_bytes(body[0..4].try_into().unwrap()),
        42,
        "correlation id"
    );
    assert_eq!(
        i16::from_be_bytes(body[4..6].try_into().unwrap()),
        0,
        "error code"
    );
}

#[test]
fn hostile_frames_close_the_connection_and_the_server_keeps_serving() {
    let mut server = Server::start();
    assert_serving(&server);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("2 GiB length prefix", i32::MAX.to_be_bytes().to_vec()),
        ("negative length", (-5i32).to_be_bytes().to_vec()),
        ("too short for a header", {
            let mut f = 3i32.to_be_bytes().to_vec();
            f.extend_from_slice(&[0, 18, 0]);
            f
        }),
        ("unknown api key", frame(9999, 0, 1, &[])),
        ("unsupported produce version", frame(0, 99, 1, &[])),
        (
            "produce v0 (before record batch v2)",
            frame(0, 0, 1, &[0, 1, 0, 0, 0, 0]),
        ),
        (
            "garbage metadata body",
            frame(3, 4, 1, &[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]),
        ),
        (
            "garbage produce body",
            frame(0, 7, 1, &[0, 0, 0, 1, 0xde, 0xad]),
        ),
        // Codecs pre-allocate from the claimed count: two billion topics in 6 bytes.
        (
            "array claiming two billion topics",
            frame(3, 0, 1, &[0x7f, 0xff, 0xff, 0x00, 0, 1]),
        ),
        ("compact array claiming four billion topics", {
            let mut body = vec![0u8]; // tagged fields of header v2 come first
            body.extend_from_slice(&[0x00; 16]); // topic id
            frame(3, 12, 1, &[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 1])
        }),
    ];
    for (name, bytes) in cases {
        let mut stream = connect(&server);
        stream.write_all(&bytes).unwrap();
        assert_closed(&mut stream);
        assert_serving(&server);
        assert!(server.is_running(), "server died after: {name}");
    }

    // A frame cut off mid-way by the client going away.
    {
        let mut stream = connect(&server);
        stream.write_all(&100i32.to_be_bytes()).unwrap();
        stream.write_all(&[0, 18, 0, 0]).unwrap();
    }
    assert_serving(&server);

    // A request larger than socket.request.max.bytes is refused by size alone.
    let mut stream = connect(&server);
    stream
        .write_all(&(200 * 1024 * 1024i32).to_be_bytes())
        .unwrap();
    assert_closed(&mut stream);
    assert_serving(&server);
    assert!(server.is_running());
    let log = server.log();
    assert!(
        log.contains("closing connection"),
        "the server logs why it closed connections"
    );
}

#[test]
fn api_versions_of_an_unknown_version_answers_unsupported_version_with_the_ranges() {
    let server = Server::start();
    let mut stream = connect(&server);
    // ApiVersions v99: header v2 would be flexible, but the answer is a v0 body.
    stream.write_all(&frame(18, 99, 7, &[0])).unwrap();
    let body = read_response(&mut stream).expect("an answer");
    assert_eq!(i32::from_be_bytes(body[0..4].try_into().unwrap()), 7);
    assert_eq!(
        i16::from_be_bytes(body[4..6].try_into().unwrap()),
        35,
        "UNSUPPORTED_VERSION"
    );
    let count = i32::from_be_bytes(body[6..10].try_into().unwrap());
    assert!(count >= 10, "the api key ranges come along ({count})");
    // The connection stays usable for the retry at a version we speak.
    stream.write_all(&frame(18, 0, 8, &[])).unwrap();
    let body = read_response(&mut stream).expect("answer to the retry");
    assert_eq!(i16::from_be_bytes(body[4..6].try_into().unwrap()), 0);
}

#[test]
fn corrupt_segment_tail_is_truncated_on_start_and_the_log_stays_usable() {
    let mut server = Server::start();
    let out = server.cli(&["create", "damaged", "--partitions", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bootstrap = server.bootstrap();
    let produced = std::process::Command::new("kcat")
        .args(["-P", "-b", &bootstrap, "-t", "damaged", "-p", "0"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            let mut stdin = child.stdin.take().unwrap();
            for i in 0..100 {
                writeln!(stdin, "message-{i}")?;
            }
            drop(stdin);
            child.wait()
        })
        .expect("kcat produce");
    assert!(produced.success());
    server.kill9();

    // Garbage after the last batch, as a torn write would leave.
    let segment = std::fs::read_dir(server.data.join("damaged-0"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment file");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    file.write_all(&[0u8, 0, 0, 0, 0, 0, 0, 100, 0, 0, 1, 0])
        .unwrap();
    file.write_all(&[0xab; 3000]).unwrap();
    drop(file);

    server.restart();
    assert!(
        server.log().contains("truncat"),
        "recovery says what it dropped"
    );
    let consumed = std::process::Command::new("kcat")
        .args([
            "-C",
            "-b",
            &bootstrap,
            "-t",
            "damaged",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .output()
        .expect("kcat consume");
    let text = String::from_utf8_lossy(&consumed.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        100,
        "all acknowledged messages are still there"
    );
    assert_eq!(lines[99], "message-99");

    // Appends continue at the next offset.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("echo after | kcat -P -b {bootstrap} -t damaged -p 0 && kcat -C -b {bootstrap} -t damaged -p 0 -o 100 -e -q -f '%o %s\\n'"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100 after");
}
