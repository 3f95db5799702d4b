//! A CCID reader whose card works on a thread of its own, so a slow card (passthru over a
//! network, a real card through PC/SC) never blocks the USB transport: the reader keeps
//! answering, the host's bulk IN stays pending, a time-extension DataBlock goes out about once
//! a second while the card works (CCID §6.2.7), and the card's answer wakes the transport.

use card::{Card, Presence};
use ccid::descriptors::{self, Identity, EP_BULK_OUT};
use ccid::reader::{CardAnswer, CardRequest, Reader};
use ccid::usb::{Setup, Transfer, UsbDevice};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Called to wake whoever drives the device (the usbredir session).
pub type WakeSlot = Arc<Mutex<Option<Box<dyn Fn() + Send>>>>;

fn wake(slot: &WakeSlot) {
    if let Some(f) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        f();
    }
}

/// How often a working card's host is told to keep waiting.
const TIME_EXTENSION_EVERY: Duration = Duration::from_secs(1);

/// The reader with its card on a worker thread.
pub struct AsyncCcid {
    reader: Reader,
    presence: Presence,
    seen: u64,
    jobs: Sender<CardRequest>,
    answers: Receiver<CardAnswer>,
    busy: Arc<(Mutex<bool>, Condvar)>,
    busy_since: Option<Instant>,
    last_extension: Option<Instant>,
}

impl AsyncCcid {
    /// A reader holding `card`; `wake` is called when the card answers and while it works.
    pub fn new(
        id: Identity,
        card: Arc<Mutex<dyn Card>>,
        wake_slot: WakeSlot,
    ) -> std::io::Result<AsyncCcid> {
        let presence = card.lock().unwrap_or_else(|e| e.into_inner()).presence();
        let (present, seen) = presence.snapshot();
        let (jobs, job_rx) = channel::<CardRequest>();
        let (answer_tx, answers) = channel::<CardAnswer>();
        let busy = Arc::new((Mutex::new(false), Condvar::new()));
        let slot = wake_slot.clone();
        let worker_busy = busy.clone();
        std::thread::Builder::new()
            .name("ccid-card".into())
            .spawn(move || {
                for job in job_rx {
                    let mut c = card.lock().unwrap_or_else(|e| e.into_inner());
                    let answer = match job {
                        CardRequest::PowerOn => CardAnswer::Atr(c.power_on()),
                        CardRequest::PowerOff => {
                            c.power_off();
                            continue;
                        }
                        CardRequest::Transmit(apdu) => CardAnswer::Response(c.transmit(&apdu)),
                    };
                    drop(c);
                    *worker_busy.0.lock().unwrap_or_else(|e| e.into_inner()) = false;
                    if answer_tx.send(answer).is_err() {
                        return;
                    }
                    wake(&slot);
                }
            })?;
        // The ticker sleeps on the condvar while the card is idle: nothing polls.
        let ticker_busy = busy.clone();
        std::thread::Builder::new()
            .name("ccid-ticker".into())
            .spawn(move || loop {
                let (lock, cv) = &*ticker_busy;
                let mut b = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !*b {
                    b = cv.wait(b).unwrap_or_else(|e| e.into_inner());
                }
                let (b, timeout) = cv
                    .wait_timeout_while(b, TIME_EXTENSION_EVERY, |b| *b)
                    .unwrap_or_else(|e| e.into_inner());
                let still = *b;
                drop(b);
                if still && timeout.timed_out() {
                    wake(&wake_slot);
                }
            })?;
        Ok(AsyncCcid {
            reader: Reader::new(id, present),
            presence,
            seen,
            jobs,
            answers,
            busy,
            busy_since: None,
            last_extension: None,
        })
    }

    fn drain(&mut self) {
        while let Ok(a) = self.answers.try_recv() {
            self.busy_since = None;
            self.last_extension = None;
            self.reader.card_answer(a);
        }
        self.reader.sync_presence(&self.presence, &mut self.seen);
        if let Some(since) = self.busy_since {
            let last = self.last_extension.unwrap_or(since);
            if self.reader.is_busy() && last.elapsed() >= TIME_EXTENSION_EVERY {
                self.reader.time_extension();
                self.last_extension = Some(Instant::now());
            }
        }
    }
}

impl UsbDevice for AsyncCcid {
    fn device_descriptor(&self) -> Vec<u8> {
        descriptors::device(self.reader.identity())
    }
    fn config_descriptor(&self) -> Vec<u8> {
        descriptors::configuration()
    }
    fn control(&mut self, setup: &Setup, data: &[u8]) -> Transfer {
        self.reader.control(setup, data)
    }
    fn out(&mut self, ep: u8, data: &[u8]) -> Transfer {
        if ep != EP_BULK_OUT {
            return Transfer::Stall;
        }
        self.drain();
        match self.reader.bulk_out(data) {
            Ok(Some(req)) => {
                if req != CardRequest::PowerOff {
                    self.busy_since = Some(Instant::now());
                    let (lock, cv) = &*self.busy;
                    *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
                    cv.notify_all();
                }
                if self.jobs.send(req).is_err() {
                    self.reader.card_answer(CardAnswer::Failed);
                }
                Transfer::Done(vec![])
            }
            Ok(None) => Transfer::Done(vec![]),
            Err(_) => Transfer::Stall,
        }
    }
    fn input(&mut self, ep: u8, max_len: usize) -> Transfer {
        self.drain();
        self.reader.endpoint_in(ep, max_len)
    }
    fn ready(&self, ep: u8) -> bool {
        self.reader.endpoint_ready(ep)
    }
    fn reset(&mut self) {
        self.reader.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccid::descriptors::EP_BULK_IN;

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

    fn wait_in(d: &mut AsyncCcid, wakes: &Receiver<()>) -> Vec<u8> {
        loop {
            if let Transfer::Done(v) = d.input(EP_BULK_IN, 65554) {
                return v;
            }
            wakes
                .recv_timeout(Duration::from_secs(10))
                .expect("a wake-up");
        }
    }

    #[test]
    fn slow_card_gets_time_extensions_then_its_answer() {
        let (tx, wakes) = channel();
        let slot: WakeSlot = Arc::new(Mutex::new(Some(Box::new(move || {
            let _ = tx.send(());
        }))));
        let card: Arc<Mutex<dyn Card>> = Arc::new(Mutex::new(Slow(Presence::new(true))));
        let mut d = AsyncCcid::new(Identity::default(), card, slot).unwrap();
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
