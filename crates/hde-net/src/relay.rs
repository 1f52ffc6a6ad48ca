//! A TCP relay that adds latency: what tests and benchmarks put between a sender and a
//! receiver, since this machine's kernel has no `netem`.
//!
//! Each byte is held for `one_way` before it is forwarded, in each direction, so a
//! request-reply exchange costs twice `one_way` more than without the relay. Rate is not
//! modelled here (shape the link with `tbf` for that), nor loss, reordering or jitter. It
//! listens on loopback only and stops accepting after its deadline.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running relay.
#[derive(Debug)]
pub struct DelayRelay {
    addr: SocketAddr,
}

impl DelayRelay {
    /// Starts a relay on `127.0.0.1` (an ephemeral port) to `to`, delaying each direction by
    /// `one_way`; it accepts connections until `lifetime` has passed.
    pub fn start(to: SocketAddr, one_way: Duration, lifetime: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + lifetime;
        std::thread::spawn(move || {
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(to) {
                            spawn_pair(client, server, one_way);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(DelayRelay { addr })
    }

    /// Where senders connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn spawn_pair(client: TcpStream, server: TcpStream, one_way: Duration) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    for (from, to) in [(client.try_clone(), server.try_clone()), (Ok(server), Ok(client))] {
        if let (Ok(from), Ok(to)) = (from, to) {
            delayed_pipe(from, to, one_way);
        }
    }
}

/// Reads a direction holds at most (and bytes a read takes at most): at most 4 MiB in
/// flight, more than a 1 Gbit/s link carries in 25 ms.
const IN_FLIGHT: usize = 64;
const READ: usize = 64 << 10;

/// Forwards `from` to `to`, each read held until `one_way` after it arrived. What it holds
/// is bounded, so a slow receiver pushes back on the sender as a real path does (a relay
/// that buffered without bound would let a sender write a whole image at once and see a
/// fast link where there is a slow one).
fn delayed_pipe(mut from: TcpStream, mut to: TcpStream, one_way: Duration) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; READ];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + one_way, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_through_the_relay_takes_a_round_trip() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = echo.accept() {
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).is_ok() {
                    let _ = s.write_all(&b);
                }
            }
        });
        let relay = DelayRelay::start(to, Duration::from_millis(40), Duration::from_secs(5)).unwrap();
        let mut c = TcpStream::connect(relay.addr()).unwrap();
        let t = Instant::now();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(80), "{rtt:?}");
    }
}
