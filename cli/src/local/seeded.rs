//! [`Draws`]: the seeded generator behind the runtime's plans (crash points, event
//! copies) — splitmix64, as the emulator's fault plan and the chaos destination use,
//! so the same seed and the same order of draws give the same faults on every machine.

/// A seeded stream of chances.
#[derive(Debug, Clone)]
pub(super) struct Draws {
    state: u64,
}

impl Draws {
    /// A stream seeded with `seed`; `salt` keeps two plans of one seed apart.
    pub(super) fn new(seed: u64, salt: u64) -> Self {
        Self {
            state: seed ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93),
        }
    }

    /// Whether an event of `probability` (0..=1) happens; draws nothing when it cannot.
    pub(super) fn chance(&mut self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < probability
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_chances_and_salts_differ() {
        let draw = |seed, salt| {
            let mut draws = Draws::new(seed, salt);
            (0..200).map(|_| draws.chance(0.3)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3, 1), draw(3, 1));
        assert_ne!(draw(3, 1), draw(4, 1));
        assert_ne!(draw(3, 1), draw(3, 2));
        let hits = draw(3, 1).iter().filter(|hit| **hit).count();
        assert!((30..90).contains(&hits), "about 30% of 200: {hits}");
    }

    #[test]
    fn certain_and_impossible_chances_hold() {
        let mut draws = Draws::new(1, 0);
        assert!((0..100).all(|_| draws.chance(1.0)));
        assert!((0..100).all(|_| !draws.chance(0.0)));
    }
}
