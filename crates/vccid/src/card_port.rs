//! [`ThreadedPort`]: the card port that `vccid --usbredir/--usbip` gives THE reader
//! (`ccid::device::Ccid`), so a slow card (passthru over a network, a real card through
//! PC/SC) never blocks the USB transport. The card works on a thread of its own; while it
//! works, a ticker reports [`Progress::StillWorking`] about once a second (the reader turns it
//! into a time-extension DataBlock, CCID §6.2.7); the card's answers and the ticks wake the
//! transport, which then asks the reader for the pending IN. The threads and the clock live
//! here because the `ccid` crate has neither (DESIGN.md, "Dependency rules").

use card::{Card, Presence};
use ccid::port::{CardPort, Progress};
use ccid::reader::{CardAnswer, CardRequest};
use std::collections::VecDeque;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Called to wake whoever drives the device (the usbredir or USB/IP session).
pub type WakeSlot = Arc<Mutex<Option<Box<dyn Fn() + Send>>>>;

fn wake(slot: &WakeSlot) {
    if let Some(f) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        f();
    }
}

/// How often a working card's host is told to keep waiting.
const TIME_EXTENSION_EVERY: Duration = Duration::from_secs(1);

/// What the port, the worker and the ticker share.
#[derive(Default)]
struct State {
    /// Answers not yet collected by the reader, oldest first.
    answers: VecDeque<CardAnswer>,
    /// Requests submitted and not yet done (PowerOff included: the card is busy with it).
    outstanding: u64,
    /// Requests done: the ticker measures a second from the start of each.
    done: u64,
    /// Time-extension periods elapsed while the card worked.
    ticks: u64,
    /// The port is gone: the ticker ends.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a thread panicked between two field updates of counters
        // and a queue, none of which it can leave half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The card on a worker thread, with a ticker for time extensions.
pub struct ThreadedPort {
    jobs: Sender<CardRequest>,
    shared: Arc<Shared>,
    presence: Presence,
    /// Ticks already reported.
    seen_ticks: u64,
}

impl ThreadedPort {
    /// Starts the worker and the ticker for `card`; `wake_slot` is called when the card
    /// answers and while it works.
    pub fn spawn(card: Arc<Mutex<dyn Card>>, wake_slot: WakeSlot) -> std::io::Result<Self> {
        let presence = card.lock().unwrap_or_else(|e| e.into_inner()).presence();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (jobs, job_rx) = channel::<CardRequest>();
        let worker = shared.clone();
        let slot = wake_slot.clone();
        std::thread::Builder::new()
            .name("ccid-card".into())
            .spawn(move || {
                // Ends when the port (the only sender) is dropped.
                for job in job_rx {
                    let mut c = card.lock().unwrap_or_else(|e| e.into_inner());
                    let answer = match job {
                        CardRequest::PowerOn => Some(CardAnswer::Atr(c.power_on())),
                        CardRequest::PowerOff => {
                            c.power_off();
                            None
                        }
                        CardRequest::Transmit(apdu) => {
                            Some(CardAnswer::Response(c.transmit(&apdu)))
                        }
                    };
                    drop(c);
                    let mut s = worker.lock();
                    s.outstanding = s.outstanding.saturating_sub(1);
                    s.done += 1;
                    let news = answer.is_some();
                    s.answers.extend(answer);
                    drop(s);
                    worker.changed.notify_all();
                    if news {
                        wake(&slot);
                    }
                }
            })?;
        // The ticker sleeps on the condvar while the card is idle: nothing polls.
        let ticker = shared.clone();
        std::thread::Builder::new()
            .name("ccid-ticker".into())
            .spawn(move || {
                let mut s = ticker.lock();
                loop {
                    while s.outstanding == 0 && !s.closed {
                        s = ticker.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                    }
                    if s.closed {
                        return;
                    }
                    // A second of the request being worked on now (or until the port closes).
                    let working_on = s.done;
                    let (g, timeout) = ticker
                        .changed
                        .wait_timeout_while(s, TIME_EXTENSION_EVERY, |s| {
                            s.done == working_on && !s.closed
                        })
                        .unwrap_or_else(|e| e.into_inner());
                    s = g;
                    if timeout.timed_out() && s.outstanding > 0 && !s.closed {
                        s.ticks += 1;
                        drop(s);
                        wake(&wake_slot);
                        s = ticker.lock();
                    }
                }
            })?;
        Ok(ThreadedPort {
            jobs,
            shared,
            presence,
            seen_ticks: 0,
        })
    }
}

impl CardPort for ThreadedPort {
    fn submit(&mut self, req: CardRequest) {
        let answers = req != CardRequest::PowerOff;
        self.shared.lock().outstanding += 1;
        self.shared.changed.notify_all();
        if self.jobs.send(req).is_err() {
            // The worker is gone (the card panicked): the request fails instead of hanging.
            let mut s = self.shared.lock();
            s.outstanding = s.outstanding.saturating_sub(1);
            if answers {
                s.answers.push_back(CardAnswer::Failed);
            }
        }
    }
    fn poll(&mut self) -> Progress {
        let mut s = self.shared.lock();
        if let Some(a) = s.answers.pop_front() {
            // Periods that passed while this answer's request worked are moot now.
            self.seen_ticks = s.ticks;
            return Progress::Answer(a);
        }
        if s.ticks != self.seen_ticks {
            self.seen_ticks = s.ticks;
            return Progress::StillWorking;
        }
        Progress::Nothing
    }
    fn has_news(&self) -> bool {
        let s = self.shared.lock();
        !s.answers.is_empty() || s.ticks != self.seen_ticks
    }
    fn presence(&self) -> &Presence {
        &self.presence
    }
}

impl Drop for ThreadedPort {
    fn drop(&mut self) {
        // The worker ends with the job channel (dropped with `self`), the ticker here.
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccid::descriptors::{Identity, EP_BULK_IN, EP_BULK_OUT};
    use ccid::device::Ccid;
    use ccid::usb::{Transfer, UsbDevice};
    use std::sync::mpsc::Receiver;

    struct Slow(Presence);
    impl Card for Slow {
        fn atr(&self) -> Vec<u8> {
            vec![0x3B, 0x00]
        }
        fn power_on(&mut self) -> Vec<u8> {
            self.atr()
        }
        fn power_off(&mut self) {}
        fn transmit(&mut self, _: &[u8]) -> Vec<u8> {
            std::thread::sleep(Duration::from_millis(2500));
            vec![0x90, 0x00]
        }
        fn presence(&self) -> Presence {
            self.0.clone()
        }
    }

    fn wait_in(d: &mut Ccid<ThreadedPort>, wakes: &Receiver<()>) -> Vec<u8> {
        loop {
            if let Transfer::Done(v) = d.input(EP_BULK_IN, 65554) {
                return v;
            }
            wakes
                .recv_timeout(Duration::from_secs(10))
                .expect("a wake-up");
        }
    }

    /// THE reader (`ccid::device::Ccid`) with the port `vccid` ships.
    #[test]
    fn slow_card_gets_time_extensions_then_its_answer() {
        let (tx, wakes) = channel();
        let slot: WakeSlot = Arc::new(Mutex::new(Some(Box::new(move || {
            let _ = tx.send(());
        }))));
        let card: Arc<Mutex<dyn Card>> = Arc::new(Mutex::new(Slow(Presence::new(true))));
        let port = ThreadedPort::spawn(card, slot).unwrap();
        let mut d = Ccid::with_port(Identity::default(), port);
        d.out(EP_BULK_OUT, &[0x62, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            wait_in(&mut d, &wakes),
            vec![0x80, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0x3B, 0x00]
        );
        d.out(
            EP_BULK_OUT,
            &[0x6F, 4, 0, 0, 0, 0, 2, 0, 0, 0, 0x00, 0xA4, 0x04, 0x00],
        );
        assert_eq!(
            d.input(EP_BULK_IN, 65554),
            Transfer::Pending,
            "the card is still working"
        );
        // About a second later: time extension (bStatus 0x80), with the command's bSeq.
        let ext = wait_in(&mut d, &wakes);
        assert_eq!(&ext[..10], &[0x80, 0, 0, 0, 0, 0, 2, 0x80, 1, 0]);
        // Then the answer.
        let mut last = wait_in(&mut d, &wakes);
        while last[7] == 0x80 {
            last = wait_in(&mut d, &wakes);
        }
        assert_eq!(last, vec![0x80, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0x90, 0x00]);
        // Other commands are answered while the card works: GetSlotStatus, not blocked.
        d.out(
            EP_BULK_OUT,
            &[0x6F, 4, 0, 0, 0, 0, 3, 0, 0, 0, 0x00, 0xA4, 0x04, 0x00],
        );
        d.out(EP_BULK_OUT, &[0x65, 0, 0, 0, 0, 0, 4, 0, 0, 0]);
        let status = wait_in(&mut d, &wakes);
        assert_eq!(status, vec![0x81, 0, 0, 0, 0, 0, 4, 0, 0, 0]);
    }
}
