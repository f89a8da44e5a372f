//! Version vectors: which change of a path each device has seen, so that two versions can be told
//! apart as newer, older, or concurrent (a conflict) without trusting anyone's clock.
//!
//! As in Syncthing: a vector maps a device to the counter of the latest change that device made to
//! the path. A device recording a change sets its own counter to `max(counter + 1, now_hint)`,
//! where `now_hint` is a caller-supplied, roughly monotonic value (Unix seconds): a device that lost
//! its index and starts again from an empty vector still issues counters above the ones it issued
//! before, so its new changes are not mistaken for old ones.

use std::fmt;

/// A device's short id in version vectors: the first 8 bytes (big-endian) of its 32-byte node id.
/// Eight bytes keep vectors small; a collision needs 2^32 devices sharing one namespace.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct DeviceId(pub u64);

impl DeviceId {
    pub fn from_node_id(bytes: &[u8; 32]) -> DeviceId {
        let [a, b, c, d, e, f, g, h, ..] = *bytes;
        DeviceId(u64::from_be_bytes([a, b, c, d, e, f, g, h]))
    }
}

/// 16 lowercase hex digits: the same width for every id, so logs line up.
impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How one version relates to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ordering {
    Equal,
    /// It has seen everything the other has, and more: it supersedes it.
    Greater,
    Less,
    /// Each has a change the other has not seen: a conflict.
    Concurrent,
}

/// A version vector. Kept sorted by device, with no duplicate devices and no zero counters (a zero
/// counter means the same as an absent one), so that equal versions are equal values, hash alike and
/// serialize alike.
///
/// Serialized as a sequence of `(device, counter)` pairs; deserializing checks that invariant and
/// rejects input that breaks it rather than repairing it, as such input was not written by shoal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "Vec<(DeviceId, u64)>")]
pub struct VersionVector {
    counters: Vec<(DeviceId, u64)>,
}

/// Why a list of counters is not a version vector.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionVectorError {
    #[error("version vector is not sorted by device: {0} after {1}")]
    Unsorted(DeviceId, DeviceId),
    #[error("version vector lists device {0} twice")]
    Duplicate(DeviceId),
    #[error("version vector has a zero counter for device {0}")]
    ZeroCounter(DeviceId),
}

impl TryFrom<Vec<(DeviceId, u64)>> for VersionVector {
    type Error = VersionVectorError;

    fn try_from(counters: Vec<(DeviceId, u64)>) -> Result<Self, Self::Error> {
        if let Some(&(device, _)) = counters.iter().find(|(_, c)| *c == 0) {
            return Err(VersionVectorError::ZeroCounter(device));
        }
        for pair in counters.windows(2) {
            if let [(before, _), (after, _)] = *pair {
                match after.cmp(&before) {
                    std::cmp::Ordering::Greater => {}
                    std::cmp::Ordering::Equal => return Err(VersionVectorError::Duplicate(after)),
                    std::cmp::Ordering::Less => {
                        return Err(VersionVectorError::Unsorted(after, before));
                    }
                }
            }
        }
        Ok(VersionVector { counters })
    }
}

/// The same shape [`TryFrom`] reads back: a sequence of pairs.
impl serde::Serialize for VersionVector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.counters.serialize(serializer)
    }
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `d`; 0 when it never changed the path.
    pub fn get(&self, d: DeviceId) -> u64 {
        match self
            .counters
            .binary_search_by_key(&d, |&(device, _)| device)
        {
            Ok(i) => self.counters[i].1,
            Err(_) => 0,
        }
    }

    /// Records a new change by `d`: its counter becomes `max(counter + 1, now_hint)`, so the
    /// vector becomes strictly greater than before. (A counter at `u64::MAX` stays there; only a
    /// hostile peer could have put it there.)
    pub fn bump(&mut self, d: DeviceId, now_hint: u64) {
        match self
            .counters
            .binary_search_by_key(&d, |&(device, _)| device)
        {
            Ok(i) => {
                let counter = &mut self.counters[i].1;
                *counter = counter.saturating_add(1).max(now_hint);
            }
            Err(i) => self.counters.insert(i, (d, now_hint.max(1))),
        }
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Self) -> Ordering {
        let (mut greater, mut less) = (false, false);
        let (mut mine, mut theirs) = (
            self.counters.iter().peekable(),
            other.counters.iter().peekable(),
        );
        loop {
            match (mine.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => {
                    greater = true;
                    break;
                }
                (None, Some(_)) => {
                    less = true;
                    break;
                }
                (Some(&&(d1, c1)), Some(&&(d2, c2))) => match d1.cmp(&d2) {
                    // Present in one vector only: a nonzero counter against zero.
                    std::cmp::Ordering::Less => {
                        greater = true;
                        mine.next();
                    }
                    std::cmp::Ordering::Greater => {
                        less = true;
                        theirs.next();
                    }
                    std::cmp::Ordering::Equal => {
                        greater |= c1 > c2;
                        less |= c1 < c2;
                        mine.next();
                        theirs.next();
                    }
                },
            }
            if greater && less {
                break;
            }
        }
        match (greater, less) {
            (false, false) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (true, true) => Ordering::Concurrent,
        }
    }

    /// Takes in everything `other` has seen: element-wise maximum.
    pub fn merge(&mut self, other: &Self) {
        if other.counters.is_empty() {
            return;
        }
        *self = self.merged(other);
    }

    /// The element-wise maximum: a version that has seen everything both have.
    pub fn merged(&self, other: &Self) -> Self {
        let mut counters = Vec::with_capacity(self.counters.len().max(other.counters.len()));
        let (mut mine, mut theirs) = (
            self.counters.iter().peekable(),
            other.counters.iter().peekable(),
        );
        loop {
            let next = match (mine.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => mine.next(),
                (None, Some(_)) => theirs.next(),
                (Some(&&(d1, c1)), Some(&&(d2, c2))) => match d1.cmp(&d2) {
                    std::cmp::Ordering::Less => mine.next(),
                    std::cmp::Ordering::Greater => theirs.next(),
                    std::cmp::Ordering::Equal => {
                        mine.next();
                        theirs.next();
                        Some(&(d1, c1.max(c2)))
                    }
                },
            };
            counters.extend(next.copied());
        }
        VersionVector { counters }
    }

    /// True when `self` has seen everything `other` has (Greater or Equal).
    pub fn dominates(&self, other: &Self) -> bool {
        matches!(self.compare(other), Ordering::Greater | Ordering::Equal)
    }

    /// True when neither has seen all of the other: the two versions conflict.
    pub fn concurrent_with(&self, other: &Self) -> bool {
        self.compare(other) == Ordering::Concurrent
    }

    /// True for the version of a path nobody has changed.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// The `(device, counter)` pairs, by device.
    pub fn iter(&self) -> impl Iterator<Item = (DeviceId, u64)> {
        self.counters.iter().copied()
    }

    /// The device with the highest counter (who made the latest change); None when empty. Two
    /// devices can reach the same counter (changes in the same second); the higher id wins then, so
    /// that every node names the same device.
    pub fn last_modifier(&self) -> Option<DeviceId> {
        self.counters
            .iter()
            .max_by_key(|&&(device, counter)| (counter, device))
            .map(|&(device, _)| device)
    }
}

/// `{device:counter, …}`, for logs.
impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (device, counter)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{device}:{counter}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
#[path = "version_tests.rs"]
mod tests;
