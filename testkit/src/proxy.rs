//! A TCP proxy on loopback that tests switch between faults while clients use it.
//!
//! A *black hole* stops forwarding bytes but keeps both sockets open: the client's writes
//! succeed, its reads never return, and nothing tells it so. That is what a cut cable, a
//! dropped security-group rule, a NAT or load balancer that forgot the flow, or a failed-over
//! VIP look like to a client (docs: /work/shared/NOTES.md). A closed socket is the easy case,
//! [`FaultProxy::reset`].
//!
//! Std threads only: one accepting thread, and per connection two pumps blocked in `read`.
//! Nothing polls; [`Drop`] closes every socket and joins every thread.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the proxy waits for the upstream to accept a connection it forwards.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A loopback TCP proxy in front of `upstream`, with faults switchable at any time.
///
/// | call | connections open now | connections made later |
/// |---|---|---|
/// | [`pass`](Self::pass) (the start) | unchanged | forwarded |
/// | [`blackhole_existing`](Self::blackhole_existing) | black-holed | forwarded |
/// | [`blackhole_all`](Self::blackhole_all) | black-holed | accepted, then black-holed |
/// | [`reset`](Self::reset) | closed | as the mode says |
/// | [`delay`](Self::delay) | each chunk forwarded after the delay | same |
///
/// A black-holed connection stays black-holed until it is closed (by its client, by
/// [`reset`](Self::reset) or by dropping the proxy): bytes it swallowed are gone, so
/// forwarding again would desynchronise the protocol. [`pass`](Self::pass) therefore
/// only affects connections made afterwards, like a network that comes back while
/// the flows it forgot stay forgotten.
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::{TcpListener, TcpStream};
///
/// // An echo server to stand for the database.
/// let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
/// let addr = upstream.local_addr().unwrap().to_string();
/// std::thread::spawn(move || {
///     for mut s in upstream.incoming().flatten() {
///         std::thread::spawn(move || {
///             let mut buf = [0; 64];
///             while let Ok(n @ 1..) = s.read(&mut buf) {
///                 let _ = s.write_all(&buf[..n]);
///             }
///         });
///     }
/// });
/// let proxy = database_locks_testkit::FaultProxy::start(&addr);
/// let mut client = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
/// client.write_all(b"ping").unwrap();
/// let mut got = [0; 4];
/// client.read_exact(&mut got).unwrap();
/// assert_eq!(&got, b"ping");
/// assert_eq!(
///     proxy.url_for("postgres://u@db.example:5432/test?x=1"),
///     format!("postgres://u@127.0.0.1:{}/test?x=1", proxy.port())
/// );
/// ```
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .field("upstream", &self.shared.upstream)
            .field("open", &self.open_connections())
            .field(
                "blackhole_new",
                &self.shared.blackhole_new.load(Ordering::SeqCst),
            )
            .finish()
    }
}

struct Shared {
    upstream: SocketAddr,
    /// New connections are accepted and black-holed (`blackhole_all`).
    blackhole_new: AtomicBool,
    delay_nanos: AtomicU64,
    stopping: AtomicBool,
    conns: Mutex<Vec<Arc<Conn>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    accepted: AtomicU64,
    forwarded: AtomicU64,
    swallowed: AtomicU64,
}

/// One client connection and, unless it was black-holed from the start, its upstream.
struct Conn {
    client: TcpStream,
    upstream: Option<TcpStream>,
    /// Set once: from then on nothing is forwarded in either direction.
    holed: AtomicBool,
    /// Held across "check `holed`, then write", so that once `blackhole_*` returns no
    /// further byte is forwarded.
    gate: Mutex<()>,
}

impl Conn {
    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(upstream) = &self.upstream {
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }

    fn hole(&self) {
        let _gate = lock(&self.gate);
        self.holed.store(true, Ordering::SeqCst);
    }
}

/// A poisoned lock only means a test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream` (`host:port`).
    ///
    /// # Panics
    ///
    /// When `upstream` does not resolve or no loopback port can be bound: the test
    /// cannot run.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("proxy upstream {upstream:?}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("proxy upstream {upstream:?} resolves to nothing"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let shared = Arc::new(Shared {
            upstream,
            blackhole_new: AtomicBool::new(false),
            delay_nanos: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            swallowed: AtomicU64::new(0),
        });
        let for_accept = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(&listener, &for_accept))
            .expect("start the proxy thread");
        FaultProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `db_url` with its `host[:port]` replaced by `127.0.0.1:<port()>`; user, password,
    /// path and query are kept.
    pub fn url_for(&self, db_url: &str) -> String {
        replace_host_port(db_url, &format!("127.0.0.1:{}", self.port))
    }

    /// Forwards connections made from now on. Black-holed connections stay so.
    pub fn pass(&self) {
        self.shared.blackhole_new.store(false, Ordering::SeqCst);
    }

    /// Stops forwarding, in both directions, on every connection open now, keeping its
    /// sockets open; connections made later are forwarded. Once this returns, no byte
    /// more is forwarded on those connections.
    pub fn blackhole_existing(&self) {
        for conn in lock(&self.shared.conns).iter() {
            conn.hole();
        }
    }

    /// [`blackhole_existing`](Self::blackhole_existing), and connections made later are
    /// accepted and then black-holed (nothing reaches the upstream), until
    /// [`pass`](Self::pass).
    pub fn blackhole_all(&self) {
        self.shared.blackhole_new.store(true, Ordering::SeqCst);
        self.blackhole_existing();
    }

    /// Closes every open connection at once (both sockets), black-holed or not.
    pub fn reset(&self) {
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for conn in conns {
            conn.close();
        }
    }

    /// Forwards each chunk read after `delay` (`Duration::ZERO`: at once).
    pub fn delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Ordering::SeqCst);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Connections open now that are black-holed.
    pub fn blackholed_connections(&self) -> usize {
        lock(&self.shared.conns)
            .iter()
            .filter(|c| c.holed.load(Ordering::SeqCst))
            .count()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes forwarded since the start, both directions.
    pub fn forwarded_bytes(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Bytes read from either side of a black-holed connection and dropped: what its
    /// client (or the upstream) sent into the void.
    pub fn swallowed_bytes(&self) -> u64 {
        self.shared.swallowed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees `stopping`.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.reset();
        // Every pump is blocked in a read of a socket just shut down, or about to exit.
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else {
            // Out of descriptors, say: do not spin on the error.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let for_conn = Arc::clone(shared);
        // Connecting upstream happens off this thread, so a slow upstream delays nobody else.
        spawn(shared, "fault-proxy-conn", move || open(client, &for_conn));
    }
}

fn spawn(shared: &Shared, name: &str, f: impl FnOnce() + Send + 'static) {
    let mut threads = lock(&shared.threads);
    threads.retain(|t| !t.is_finished());
    match std::thread::Builder::new().name(name.into()).spawn(f) {
        Ok(handle) => threads.push(handle),
        Err(e) => eprintln!("fault proxy: cannot start a thread: {e}"),
    }
}

fn open(client: TcpStream, shared: &Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let upstream = if shared.blackhole_new.load(Ordering::SeqCst) {
        None
    } else {
        match TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT) {
            Ok(upstream) => {
                let _ = upstream.set_nodelay(true);
                Some(upstream)
            }
            Err(_) => {
                // The client sees the connection closed, as it would see a refusal.
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
        }
    };
    let conn = Arc::new(Conn {
        holed: AtomicBool::new(upstream.is_none()),
        client,
        upstream,
        gate: Mutex::new(()),
    });
    {
        let mut conns = lock(&shared.conns);
        if shared.stopping.load(Ordering::SeqCst) {
            conn.close();
            return;
        }
        // `blackhole_all` may have run while this connection was being made.
        if shared.blackhole_new.load(Ordering::SeqCst) {
            conn.hole();
        }
        conns.push(Arc::clone(&conn));
    }
    if conn.upstream.is_some() {
        let (c, s) = (Arc::clone(&conn), Arc::clone(shared));
        spawn(shared, "fault-proxy-up", move || pump(&c, &s, Side::Client));
    }
    pump(&conn, shared, Side::Upstream);
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// Reads the client, writes the upstream.
    Client,
    /// Reads the upstream, writes the client; on a connection black-holed from the
    /// start, only reads (and drops) what the client sends.
    Upstream,
}

fn pump(conn: &Conn, shared: &Shared, side: Side) {
    let (mut from, mut to) = match (side, &conn.upstream) {
        (Side::Client, Some(up)) => (&conn.client, Some(up)),
        (Side::Upstream, Some(up)) => (up, Some(&conn.client)),
        (_, None) => (&conn.client, None),
    };
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = Duration::from_nanos(shared.delay_nanos.load(Ordering::SeqCst));
        if !delay.is_zero() && !conn.holed.load(Ordering::SeqCst) {
            std::thread::sleep(delay);
        }
        let gate = lock(&conn.gate);
        match to.as_mut() {
            Some(to) if !conn.holed.load(Ordering::SeqCst) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                shared.forwarded.fetch_add(n as u64, Ordering::SeqCst);
            }
            _ => {
                shared.swallowed.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
        drop(gate);
    }
    let from_client = side == Side::Client || conn.upstream.is_none();
    // The upstream closing a black-holed connection is not seen by the client: it stays
    // silent. Any other end closes the whole connection.
    if from_client || !conn.holed.load(Ordering::SeqCst) {
        conn.close();
        lock(&shared.conns).retain(|c| !std::ptr::eq(Arc::as_ptr(c), conn));
    }
}

/// `url` with the `host[:port]` of its authority replaced by `host_port`.
fn replace_host_port(url: &str, host_port: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{scheme}{userinfo}{host_port}{tail}")
}

/// The `host:port` a database URL points at, with the scheme's default port when it
/// names none (`postgres`/`postgresql` 5432, `mysql`/`mariadb` 3306); `None` for a URL
/// without a host (a SQLite file).
pub fn host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rfind('@')
        .map_or(authority, |at| &authority[at + 1..]);
    if host.is_empty() {
        return None;
    }
    let has_port = match host.rfind(']') {
        Some(close) => host[close..].contains(':'),
        None => host.contains(':'),
    };
    if has_port {
        return Some(host.to_owned());
    }
    let port = match scheme {
        "postgres" | "postgresql" => 5432,
        "mysql" | "mariadb" => 3306,
        _ => return None,
    };
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    /// An upstream that echoes and counts the bytes it received.
    struct Echo {
        addr: String,
        received: Arc<AtomicU64>,
    }

    fn echo() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let received = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&received);
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let counted = Arc::clone(&counted);
                std::thread::spawn(move || {
                    let mut buf = [0; 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        counted.fetch_add(n as u64, Ordering::SeqCst);
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Echo { addr, received }
    }

    fn connect(proxy: &FaultProxy) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn round_trip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).unwrap();
        let mut got = vec![0; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }

    /// A read that must not return: `WouldBlock`/`TimedOut` after `wait`.
    fn assert_silent(s: &mut TcpStream, wait: Duration) {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0; 16];
        match s.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("a black-holed read returned {other:?}"),
        }
    }

    /// `cond` within 5 s, polled every 5 ms.
    fn soon(mut cond: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        cond()
    }

    #[test]
    fn bytes_pass_both_ways() {
        let up = echo();
        let proxy = FaultProxy::start(&up.addr);
        let mut a = connect(&proxy);
        let mut b = connect(&proxy);
        round_trip(&mut a, b"hello");
        round_trip(&mut b, &[7u8; 100_000]);
        assert!(soon(|| proxy.open_connections() == 2));
        // A pump counts a chunk after writing it, so the echo can reach the client before
        // its last chunk is counted (seen once under load: 190,122 of 200,010).
        let expected = 2 * (5 + 100_000);
        assert!(
            soon(|| proxy.forwarded_bytes() == expected),
            "{} bytes counted, {expected} sent",
            proxy.forwarded_bytes()
        );
        assert_eq!(proxy.swallowed_bytes(), 0);
    }

    #[test]
    fn blackhole_existing_swallows_old_and_passes_new() {
        let up = echo();
        let proxy = FaultProxy::start(&up.addr);
        let mut old = connect(&proxy);
        round_trip(&mut old, b"before");
        assert!(soon(|| proxy.open_connections() == 1));
        proxy.blackhole_existing();
        assert_eq!(proxy.blackholed_connections(), 1);
        let before = up.received.load(Ordering::SeqCst);
        old.write_all(b"into the void").unwrap();
        assert_silent(&mut old, Duration::from_millis(500));
        // The proxy read the bytes and dropped them: they never reached the upstream.
        assert!(soon(|| proxy.swallowed_bytes() == 13));
        assert_eq!(up.received.load(Ordering::SeqCst), before);
        // The socket is still open: writes succeed, reads still never return.
        old.write_all(b"more").unwrap();
        assert_silent(&mut old, Duration::from_millis(200));
        // New connections pass, and pass() does not revive the old one.
        let mut new = connect(&proxy);
        round_trip(&mut new, b"after");
        proxy.pass();
        assert_silent(&mut old, Duration::from_millis(200));
        assert_eq!(proxy.blackholed_connections(), 1);
    }

    #[test]
    fn blackhole_all_accepts_new_connections_and_forwards_nothing() {
        let up = echo();
        let proxy = FaultProxy::start(&up.addr);
        proxy.blackhole_all();
        let mut s = connect(&proxy);
        s.write_all(b"hello?").unwrap();
        assert_silent(&mut s, Duration::from_millis(500));
        assert!(soon(|| proxy.swallowed_bytes() == 6));
        assert_eq!(up.received.load(Ordering::SeqCst), 0);
        assert_eq!(proxy.blackholed_connections(), 1);
        proxy.pass();
        let mut t = connect(&proxy);
        round_trip(&mut t, b"back");
        assert_silent(&mut s, Duration::from_millis(200));
    }

    #[test]
    fn reset_closes_every_connection() {
        let up = echo();
        let proxy = FaultProxy::start(&up.addr);
        let mut live = connect(&proxy);
        round_trip(&mut live, b"x");
        let mut holed = connect(&proxy);
        round_trip(&mut holed, b"y");
        assert!(soon(|| proxy.open_connections() == 2));
        proxy.blackhole_existing();
        let started = Instant::now();
        proxy.reset();
        for s in [&mut live, &mut holed] {
            let mut buf = [0; 4];
            match s.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {}
                other => panic!("after reset a read returned {other:?}"),
            }
        }
        println!("reset: both reads ended after {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(soon(|| proxy.open_connections() == 0));
        // Still serving afterwards.
        round_trip(&mut connect(&proxy), b"z");
    }

    #[test]
    fn delay_holds_each_chunk_back() {
        let up = echo();
        let proxy = FaultProxy::start(&up.addr);
        let mut s = connect(&proxy);
        round_trip(&mut s, b"warm");
        proxy.delay(Duration::from_millis(200));
        let started = Instant::now();
        round_trip(&mut s, b"slow");
        let took = started.elapsed();
        println!("delay 200 ms each way: round trip {took:?}");
        assert!(took >= Duration::from_millis(400), "{took:?}");
        proxy.delay(Duration::ZERO);
    }

    #[test]
    fn drop_stops_threads_and_closes_sockets() {
        let up = echo();
        let proxy = FaultProxy::start(&up.addr);
        let port = proxy.port();
        let mut a = connect(&proxy);
        round_trip(&mut a, b"a");
        proxy.blackhole_all();
        let mut b = connect(&proxy);
        b.write_all(b"b").unwrap();
        assert!(soon(|| proxy.open_connections() == 2));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(proxy);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("dropping the proxy returns");
        let mut buf = [0; 1];
        assert!(matches!(a.read(&mut buf), Ok(0) | Err(_)));
        assert!(matches!(b.read(&mut buf), Ok(0) | Err(_)));
        assert!(
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(1)
            )
            .is_err(),
            "nothing listens after drop"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            replace_host_port("postgres://postgres@127.0.0.1:5432/test", "127.0.0.1:9"),
            "postgres://postgres@127.0.0.1:9/test"
        );
        assert_eq!(
            replace_host_port("mysql://root:p%40ss@db/test?ssl_mode=DISABLED", "h:1"),
            "mysql://root:p%40ss@h:1/test?ssl_mode=DISABLED"
        );
        assert_eq!(replace_host_port("postgres://db", "h:1"), "postgres://h:1");
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/test").as_deref(),
            Some("127.0.0.1:5432")
        );
        assert_eq!(
            host_port("mysql://root@localhost/test").as_deref(),
            Some("localhost:3306")
        );
        assert_eq!(
            host_port("postgres://u@[::1]/x").as_deref(),
            Some("[::1]:5432")
        );
        assert_eq!(host_port("/tmp/locks.sqlite3"), None);
    }
}
