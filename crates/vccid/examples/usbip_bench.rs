//! USB/IP APDU exchanges against `vccid --usbip` over loopback, as the kernel's vhci-hcd
//! makes them for libccid (testkit's vhci side): a bulk OUT with an XfrBlock, then a bulk IN
//! for the DataBlock, each answered before the next is sent. What vccid's USB/IP path costs
//! per APDU, without a guest. usage: usbip_bench VCCID_BINARY [N]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::vhci;

fn main() {
    let mut args = std::env::args().skip(1);
    let vccid = args.next().expect("usage: usbip_bench VCCID_BINARY [N]");
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20000);
    let port = testkit::free_port().expect("port");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let data = std::env::temp_dir().join("vccid-bench-ids");
    std::fs::create_dir_all(&data).expect("data directory");
    let mut child = Command::new(vccid)
        .args(["--usbip", &addr.to_string(), "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vccid starts");
    testkit::wait_for("vccid --usbip", Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .expect("listening");
    let (_, mut imp) = vhci::import(addr, "1-1").unwrap().expect("imported");
    let recv =
        |imp: &mut vhci::Importer| imp.recv(Duration::from_secs(10)).unwrap().expect("reply");
    imp.control([0, 9, 1, 0, 0, 0, 0, 0], &[]).unwrap();
    recv(&mut imp);
    let mut seq = 0u8;
    let mut exchange = |imp: &mut vhci::Importer, ty: u8, body: &[u8]| {
        seq = seq.wrapping_add(1);
        let mut msg = vec![ty];
        msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        msg.extend_from_slice(&[0, seq, 0, 0, 0]);
        msg.extend_from_slice(body);
        imp.submit(3, false, [0; 8], &msg, 0).unwrap();
        recv(imp);
        imp.submit(2, true, [0; 8], &[], 65546).unwrap();
        recv(imp)
    };
    exchange(&mut imp, 0x62, &[]);
    // VERIFY status on the CAC card: answered without a key.
    let apdu = [0x00, 0x20, 0x00, 0x00];
    for _ in 0..1000 {
        exchange(&mut imp, 0x6F, &apdu);
    }
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            let r = exchange(&mut imp, 0x6F, &apdu);
            assert_eq!(r.data[0], 0x80);
        }
        runs.push(t.elapsed().as_secs_f64() / n as f64 * 1e6);
    }
    runs.sort_by(f64::total_cmp);
    println!(
        "usbip: {:.0} APDU exchanges/s ({:.1} µs each: bulk OUT + bulk IN, median of 5 × {n})",
        1e6 / runs[2],
        runs[2]
    );
    let _ = child.kill();
    let _ = child.wait();
}
