//! What the servers allow: each server's item size limit (`-I`), read with
//! `stats settings`, so a write the server would refuse is refused by the
//! store first. Memcached 1.6 deletes the item a too-large store command
//! was replacing: a write it refused would destroy the previous record, or
//! a user's whole index.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room kept in every item for its key and the server's item header: the
/// largest record is the server's `item_size_max` minus this.
pub(crate) const ITEM_OVERHEAD: usize = 1024;

/// The longest `stats settings` answer read (a 1.6 server sends ~3 KiB).
const MAX_ANSWER: usize = 64 * 1024;

/// `server`'s (`host:port`) `item_size_max`, in bytes.
pub(crate) async fn item_size_max(
    server: &str,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> std::io::Result<usize> {
    let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(server))
        .await
        .map_err(|_| timed_out())??;
    let exchange = async {
        stream.write_all(b"stats settings\r\n").await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"END\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || answer.len() + n > MAX_ANSWER {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "unexpected answer to `stats settings`",
                ));
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok(answer)
    };
    let answer = tokio::time::timeout(io_timeout, exchange)
        .await
        .map_err(|_| timed_out())??;
    parse_item_size_max(&answer).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "`stats settings` names no item_size_max",
        )
    })
}

fn parse_item_size_max(answer: &[u8]) -> Option<usize> {
    std::str::from_utf8(answer)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("STAT item_size_max "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_item_size_max_from_stats_settings() {
        let answer = b"STAT maxbytes 67108864\r\nSTAT item_size_max 65536\r\nSTAT x y\r\nEND\r\n";
        assert_eq!(parse_item_size_max(answer), Some(65_536));
        assert_eq!(parse_item_size_max(b"STAT maxbytes 1\r\nEND\r\n"), None);
        assert_eq!(
            parse_item_size_max(b"STAT item_size_max lots\r\nEND\r\n"),
            None
        );
        assert_eq!(parse_item_size_max(&[0xff, 0xfe]), None);
    }
}
