//! The engine clock. Everything time-based follows it; tests and
//! `--test-clock` drive a [`ManualClock`].

use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to, and never backwards.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
    started: Timestamp,
}

/// Time was asked to move backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backwards;

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock { now: Mutex::new(start), started: start }
    }

    /// Where the clock started.
    pub fn started(&self) -> Timestamp {
        self.started
    }

    pub fn set(&self, to: Timestamp) -> Result<Timestamp, Backwards> {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        if to < *now {
            return Err(Backwards);
        }
        *now = to;
        Ok(to)
    }

    pub fn advance(&self, seconds: i64) -> Result<Timestamp, Backwards> {
        if seconds < 0 {
            return Err(Backwards);
        }
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = now.checked_add(SignedDuration::from_secs(seconds)).map_err(|_| Backwards)?;
        Ok(*now)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}
