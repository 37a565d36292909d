//! `__relay LISTEN BACKEND`: the floor target — the least any user-space proxy can
//! do per exchange. A thread per direction copies bytes with blocking
//! `read`/`write` (no event loop, no parsing, no policy, no metrics), so a
//! request costs two reads, two writes and the wake-ups between them.
//!
//! It is a reference, not a proxy: it shows how close the proxies come to
//! what the kernel alone costs on this machine. Only the one-connection
//! scenarios (`*-c1`, `*-c1m1`) run it; with many connections a thread per
//! direction is not a floor. Runs in its own process on the serving core,
//! like the proxies; started by `targets.rs`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

/// Listens on LISTEN and relays every connection to BACKEND until killed.
pub fn main(args: &[String]) -> Result<(), String> {
    let [listen, backend] = args else {
        return Err(format!("usage: __relay LISTEN BACKEND, got {args:?}"));
    };
    let addr = |s: &String| s.parse::<SocketAddr>().map_err(|e| format!("{s}: {e}"));
    let backend = addr(backend)?;
    let listener = TcpListener::bind(addr(listen)?).map_err(|e| format!("bind {listen}: {e}"))?;
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(app) = TcpStream::connect(backend) else {
            continue;
        };
        if let Err(e) = start(client, app) {
            eprintln!("relay: {e}");
        }
    }
    Ok(())
}

fn start(client: TcpStream, app: TcpStream) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    app.set_nodelay(true)?;
    let (client2, app2) = (client.try_clone()?, app.try_clone()?);
    std::thread::spawn(move || pump(client, app));
    std::thread::spawn(move || pump(app2, client2));
    Ok(())
}

/// Copies `from` to `to` until EOF or an error, then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
