//! The client against an in-process fake vpcd (a TCP listener speaking the vpcd framing):
//! answers, presence-driven disconnect and reconnect.

use apdu::hex::h;
use card_api::{Card, Presence};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Echo {
    presence: Presence,
    resets: usize,
}

impl Card for Echo {
    fn atr(&self) -> Vec<u8> {
        h("3B 02 14 50")
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.resets += 1;
        self.atr()
    }
    fn power_off(&mut self) {}
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        let mut r = apdu.to_vec();
        r.extend_from_slice(&[0x90, 0x00]);
        r
    }
    fn presence(&self) -> Presence {
        self.presence.clone()
    }
}

async fn ask(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    s.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    body
}

#[tokio::test]
async fn answers_follows_presence_and_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let presence = Presence::new(true);
    let card = Arc::new(Mutex::new(Echo {
        presence: presence.clone(),
        resets: 0,
    }));
    let client = vpcd::spawn(card.clone(), vpcd::ClientOptions::new(addr)).unwrap();

    let (mut s, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ask(&mut s, &[0x04]).await, h("3B 02 14 50"));
    // Power on gets no answer; the next GET ATR is answered and the card was reset once.
    s.write_all(&[0, 1, 1]).await.unwrap();
    assert_eq!(ask(&mut s, &[0x04]).await, h("3B 02 14 50"));
    assert_eq!(card.lock().unwrap().resets, 1);
    assert_eq!(ask(&mut s, &h("00 A4 04 00")).await, h("00 A4 04 00 90 00"));

    // Removal closes the connection; insertion brings a new one.
    presence.set(false);
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed on removal");
    presence.set(true);
    let (mut s2, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ask(&mut s2, &[0x04]).await, h("3B 02 14 50"));

    // vpcd going away: the client reconnects.
    drop(s2);
    let (mut s3, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ask(&mut s3, &h("80 CA 00 00 00")).await,
        h("80 CA 00 00 00 90 00")
    );

    // A zero-length message is a protocol error: the client drops that connection only.
    s3.write_all(&[0, 0]).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(20), s3.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    let (mut s4, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ask(&mut s4, &[0x04]).await, h("3B 02 14 50"));
    // Stopping closes the connection.
    client.stop();
    let n = tokio::time::timeout(Duration::from_secs(20), s4.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
}

/// Found by the fault proxy (issue #17): the backoff started over at every TCP connect, so a
/// relay that accepts and closes at once was redialled every 50 ms, a warning each. Now it
/// starts over only once vpcd has spoken: 50, 100, 200, 400, 800 ms... between dials, under
/// ten in two seconds where the old client made about forty.
#[tokio::test]
async fn a_peer_that_closes_at_once_is_redialled_with_growing_delays() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let presence = Presence::new(true);
    let card = Arc::new(Mutex::new(Echo {
        presence: presence.clone(),
        resets: 0,
    }));
    let client = vpcd::spawn(card, vpcd::ClientOptions::new(addr)).unwrap();
    let mut dials = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok((s, _))) = tokio::time::timeout_at(end, listener.accept()).await {
        drop(s);
        dials += 1;
    }
    client.stop();
    assert!((2..10).contains(&dials), "{dials} dials in 2 s");
}
