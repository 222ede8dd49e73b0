//! Linux lib/ratelimit.c: at most `burst` messages per `interval`; the first message of a new
//! interval reports how many were suppressed in the last one. Time is passed in (timer ticks in
//! the kernel, anything monotonic in tests).

/// Linux `struct ratelimit_state`.
pub struct RateLimit {
    interval: u64,
    burst: u32,
    state: spin::Mutex<State>,
}

struct State {
    begin: Option<u64>,
    printed: u32,
    missed: u32,
}

/// What `check` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Print this message.
    pub allow: bool,
    /// Messages suppressed in the interval that just ended (print "N callbacks suppressed").
    pub suppressed: u32,
}

impl RateLimit {
    pub const fn new(interval: u64, burst: u32) -> Self {
        RateLimit {
            interval,
            burst,
            state: spin::Mutex::new(State { begin: None, printed: 0, missed: 0 }),
        }
    }

    /// Linux `___ratelimit` at time `now`. A contended state suppresses (Linux: trylock).
    pub fn check(&self, now: u64) -> Verdict {
        let Some(mut s) = self.state.try_lock() else {
            return Verdict { allow: false, suppressed: 0 };
        };
        let mut suppressed = 0;
        let begin = *s.begin.get_or_insert(now);
        if now.wrapping_sub(begin) >= self.interval {
            suppressed = core::mem::take(&mut s.missed);
            s.begin = Some(now);
            s.printed = 0;
        }
        let allow = s.printed < self.burst;
        if allow {
            s.printed += 1;
        } else {
            s.missed += 1;
        }
        Verdict { allow, suppressed }
    }

    /// Linux `ratelimit_state_exit`: the messages suppressed since the last one printed, which
    /// no later message will report; the count starts again from 0.
    pub fn exit(&self) -> u32 {
        core::mem::take(&mut self.state.lock().missed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_like_warn_alloc() {
        // warn_alloc's nopage_rs: 10 s, burst 1.
        let rl = RateLimit::new(10, 1);
        assert_eq!(rl.check(100), Verdict { allow: true, suppressed: 0 });
        for t in 101..110 {
            assert_eq!(rl.check(t), Verdict { allow: false, suppressed: 0 });
        }
        assert_eq!(rl.check(110), Verdict { allow: true, suppressed: 9 });
        assert_eq!(rl.check(111), Verdict { allow: false, suppressed: 0 });
        assert_eq!(rl.check(500), Verdict { allow: true, suppressed: 1 });
        assert_eq!(rl.check(501), Verdict { allow: false, suppressed: 0 });
        assert_eq!(rl.exit(), 1);
        assert_eq!(rl.exit(), 0);
    }

    #[test]
    fn burst_within_an_interval() {
        let rl = RateLimit::new(5, 3);
        let allowed: usize = (0..10).filter(|&t| rl.check(t / 2).allow).count();
        // t/2 = 0..4 is the first interval: 3 allowed, then 5.. would start the next.
        assert_eq!(allowed, 3);
        assert_eq!(rl.check(5), Verdict { allow: true, suppressed: 7 });
    }
}
