//! Which peers said they hold which chunks of files they are still assembling (`Have`), so that
//! a chunk can be asked of them and not only of the nodes whose index lists it.
//!
//! Hints are short-lived and used once: they are aged out after two ages (the peer manager ages
//! them every ping interval; a file being assembled is asked for within seconds of an
//! announcement, and once complete it is in the peer's index anyway), a peer's go when it
//! disconnects, and each is dropped when a request is sent on it — an answer that is unavailable
//! or does not verify then sends the retry elsewhere. Bounded per namespace.

use std::collections::HashMap;

use shoal_core::chunk::Hash;

/// Chunks hinted at most per namespace; announcements past it are ignored until the next age.
pub const MAX_HINTS: usize = 65_536;

#[derive(Debug, Default)]
pub(crate) struct Hints {
    current: HashMap<Hash, Vec<u64>>,
    older: HashMap<Hash, Vec<u64>>,
}

impl Hints {
    /// Session `session`'s peer holds `hashes`.
    pub fn add(&mut self, session: u64, hashes: impl IntoIterator<Item = Hash>) {
        for h in hashes {
            if self.current.len() >= MAX_HINTS && !self.current.contains_key(&h) {
                return;
            }
            let sessions = self.current.entry(h).or_default();
            if !sessions.contains(&session) {
                sessions.push(session);
            }
        }
    }

    /// The sessions said to hold `hash`.
    pub fn holders(&self, hash: &Hash) -> impl Iterator<Item = u64> + '_ {
        let a = self.current.get(hash).into_iter().flatten();
        let b = self.older.get(hash).into_iter().flatten();
        a.chain(b).copied()
    }

    /// A request for `hash` was sent on `session`'s hint: it is not used again.
    pub fn used(&mut self, hash: &Hash, session: u64) {
        for map in [&mut self.current, &mut self.older] {
            if let Some(v) = map.get_mut(hash) {
                v.retain(|s| *s != session);
                if v.is_empty() {
                    map.remove(hash);
                }
            }
        }
    }

    /// `session` ended: its hints go.
    pub fn forget_session(&mut self, session: u64) {
        for map in [&mut self.current, &mut self.older] {
            map.retain(|_, v| {
                v.retain(|s| *s != session);
                !v.is_empty()
            });
        }
    }

    /// Drops the hints of two ages ago.
    pub fn age(&mut self) {
        self.older = std::mem::take(&mut self.current);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.older.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u64) -> Hash {
        let mut b = [0; 32];
        b[..8].copy_from_slice(&i.to_le_bytes());
        Hash(b)
    }

    #[test]
    fn hints_are_used_once_forgotten_with_their_session_and_aged_out() {
        let mut hints = Hints::default();
        hints.add(1, [h(1), h(2)]);
        hints.add(2, [h(1)]);
        hints.add(2, [h(1)]);
        assert_eq!(hints.holders(&h(1)).collect::<Vec<_>>(), vec![1, 2]);
        hints.used(&h(1), 1);
        assert_eq!(hints.holders(&h(1)).collect::<Vec<_>>(), vec![2]);
        hints.forget_session(2);
        assert_eq!(hints.holders(&h(1)).count(), 0);
        assert_eq!(hints.holders(&h(2)).collect::<Vec<_>>(), vec![1]);
        // Still there one age later, gone two ages later.
        hints.age();
        assert_eq!(hints.holders(&h(2)).collect::<Vec<_>>(), vec![1]);
        hints.age();
        assert_eq!(hints.holders(&h(2)).count(), 0);
        assert_eq!(hints.len(), 0);
    }

    #[test]
    fn hints_are_bounded() {
        let mut hints = Hints::default();
        hints.add(1, (0..MAX_HINTS as u64 + 10).map(h));
        assert_eq!(hints.len(), MAX_HINTS);
        // A chunk already hinted still takes another holder.
        hints.add(2, [h(0)]);
        assert_eq!(hints.holders(&h(0)).count(), 2);
        hints.age();
        hints.add(1, [h(MAX_HINTS as u64 + 5)]);
        assert_eq!(hints.holders(&h(MAX_HINTS as u64 + 5)).count(), 1);
    }
}
