//! Stabilisation windows, with the Kubernetes HPA's semantics: the engine remembers each
//! raw recommendation (what the targets and the forecast asked for, before bounds, step
//! and cooldown) with its time, and
//!
//! - scales **down** only to the *highest* recommendation within the scale-down window, so
//!   a dip shorter than the window never removes nodes;
//! - scales **up** only to the *lowest* recommendation within the scale-up window, so a
//!   spike must last the window before nodes are added (0: no window, up at once).
//!
//! The memory is bounded by the longer window and by [`MAX_ENTRIES`] (validation keeps the
//! windows to an hour; at one observation a second that is 3,600 entries).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// Most recommendations remembered, whatever the windows.
pub const MAX_ENTRIES: usize = 4_096;

/// What the windows made of a raw recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stabilised {
    /// The raw recommendation stands.
    AsIs(u32),
    /// A scale-up held by the up window to its `lowest` recommendation (or to current,
    /// when that is lower still).
    HeldUp {
        to: u32,
        lowest: u32,
        window: Duration,
    },
    /// A scale-down held by the down window to its `highest` recommendation (or to
    /// current, when that is higher still).
    HeldDown {
        to: u32,
        highest: u32,
        window: Duration,
    },
}

impl Stabilised {
    pub fn nodes(self) -> u32 {
        match self {
            Stabilised::AsIs(n)
            | Stabilised::HeldUp { to: n, .. }
            | Stabilised::HeldDown { to: n, .. } => n,
        }
    }
}

/// Past raw recommendations, oldest first.
#[derive(Debug, Clone, Default)]
pub struct RecommendationMemory {
    entries: VecDeque<(SystemTime, u32)>,
}

impl RecommendationMemory {
    /// Adds a past recommendation without deciding anything (a new leader seeding the
    /// windows from stored decisions). Kept in time order; the next [`Self::stabilise`]
    /// drops what its windows no longer cover.
    pub fn remember(&mut self, at: SystemTime, nodes: u32) {
        let position = self.entries.partition_point(|(t, _)| *t <= at);
        self.entries.insert(position, (at, nodes));
        if self.entries.len() > MAX_ENTRIES {
            self.entries.pop_front();
        }
    }

    /// Remembers `raw` at `at` and returns what the windows allow, from `current`.
    pub fn stabilise(
        &mut self,
        at: SystemTime,
        current: u32,
        raw: u32,
        up_window: Duration,
        down_window: Duration,
    ) -> Stabilised {
        // A clock that stepped back: forget what now lies in the future.
        while self.entries.back().is_some_and(|(t, _)| *t > at) {
            self.entries.pop_back();
        }
        self.entries.push_back((at, raw));
        let keep = up_window.max(down_window);
        while self.entries.len() > MAX_ENTRIES
            || self
                .entries
                .front()
                .is_some_and(|(t, _)| at.duration_since(*t).unwrap_or_default() > keep)
        {
            self.entries.pop_front();
        }
        let within = |window: Duration| {
            self.entries
                .iter()
                .filter(move |(t, _)| at.duration_since(*t).unwrap_or_default() <= window)
                .map(|(_, n)| *n)
        };
        let up = within(up_window).min().unwrap_or(raw);
        let down = within(down_window).max().unwrap_or(raw);
        if raw > current {
            if up < raw {
                return Stabilised::HeldUp {
                    to: up.max(current),
                    lowest: up,
                    window: up_window,
                };
            }
        } else if raw < current && down > raw {
            return Stabilised::HeldDown {
                to: down.min(current),
                highest: down,
                window: down_window,
            };
        }
        Stabilised::AsIs(raw)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_996_800 + secs)
    }

    const UP: Duration = Duration::from_secs(60);
    const DOWN: Duration = Duration::from_secs(300);

    #[test]
    fn a_dip_shorter_than_the_down_window_does_not_scale_down() {
        let mut m = RecommendationMemory::default();
        assert_eq!(m.stabilise(at(0), 5, 5, UP, DOWN), Stabilised::AsIs(5));
        // Two minutes of "2 would do": held at 5.
        for s in (10..=120).step_by(10) {
            assert_eq!(
                m.stabilise(at(s), 5, 2, UP, DOWN),
                Stabilised::HeldDown {
                    to: 5,
                    highest: 5,
                    window: DOWN
                },
                "at {s} s"
            );
        }
        // Back to 5: nothing happened.
        assert_eq!(m.stabilise(at(130), 5, 5, UP, DOWN), Stabilised::AsIs(5));
    }

    #[test]
    fn a_sustained_drop_scales_down_after_the_window() {
        let mut m = RecommendationMemory::default();
        m.stabilise(at(0), 5, 5, UP, DOWN);
        let mut last = None;
        for s in (10..=300).step_by(10) {
            last = Some(m.stabilise(at(s), 5, 2, UP, DOWN));
        }
        // At 300 s the 5 of t = 0 is still inside the window (inclusive edge).
        assert_eq!(last.unwrap().nodes(), 5);
        assert_eq!(m.stabilise(at(301), 5, 2, UP, DOWN), Stabilised::AsIs(2));
    }

    #[test]
    fn the_down_window_scales_to_the_highest_recent_recommendation() {
        let mut m = RecommendationMemory::default();
        m.stabilise(at(0), 8, 4, UP, DOWN);
        m.stabilise(at(10), 8, 6, UP, DOWN);
        assert_eq!(
            m.stabilise(at(20), 8, 3, UP, DOWN),
            Stabilised::HeldDown {
                to: 6,
                highest: 6,
                window: DOWN
            }
        );
    }

    #[test]
    fn the_up_window_delays_a_scale_up() {
        let mut m = RecommendationMemory::default();
        m.stabilise(at(0), 3, 3, UP, DOWN);
        assert_eq!(
            m.stabilise(at(10), 3, 6, UP, DOWN),
            Stabilised::HeldUp {
                to: 3,
                lowest: 3,
                window: UP
            }
        );
        assert_eq!(m.stabilise(at(60), 3, 6, UP, DOWN).nodes(), 3);
        // The 3 of t = 0 has left the window: the lowest within it is 6.
        assert_eq!(m.stabilise(at(61), 3, 6, UP, DOWN), Stabilised::AsIs(6));
    }

    #[test]
    fn a_hold_never_goes_past_the_current_count() {
        let mut m = RecommendationMemory::default();
        m.stabilise(at(0), 4, 6, UP, DOWN);
        // Current is 4, the window remembers a 6: the scale-down to 1 is held at 4, not 6.
        assert_eq!(
            m.stabilise(at(10), 4, 1, UP, DOWN),
            Stabilised::HeldDown {
                to: 4,
                highest: 6,
                window: DOWN
            }
        );
    }

    #[test]
    fn without_an_up_window_a_scale_up_is_immediate() {
        let mut m = RecommendationMemory::default();
        m.stabilise(at(0), 3, 3, Duration::ZERO, DOWN);
        assert_eq!(
            m.stabilise(at(5), 3, 7, Duration::ZERO, DOWN),
            Stabilised::AsIs(7)
        );
    }

    #[test]
    fn memory_is_bounded_by_the_longest_window() {
        let mut m = RecommendationMemory::default();
        for s in 0..1_000 {
            m.stabilise(at(s), 3, 3, UP, DOWN);
        }
        assert_eq!(m.entries.len(), 301);
    }
}
