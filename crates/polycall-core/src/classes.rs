//! How priority classes share a resource: critical first, the rest by weight.

use std::collections::VecDeque;

use crate::Priority;

/// Turn order among high (1), normal (2) and low (3): weights 4 : 2 : 1, interleaved.
const TURNS: [usize; 7] = [1, 2, 1, 3, 1, 2, 1];

/// Queues of items, one per [`Priority`] class. [`ClassQueues::pop`] serves critical
/// strictly first; high, normal and low share the rest 4 : 2 : 1 by smooth weighted
/// round robin, skipping empty classes — so no class with work ever starves.
///
/// Used by the connection writer (which call's next fragment goes out) and by servers
/// (which queued call a free handler takes).
///
/// ```
/// use polycall_core::{ClassQueues, Priority};
/// let mut q = ClassQueues::default();
/// q.push(Priority::Low, "backup");
/// q.push(Priority::Critical, "halt");
/// assert_eq!(q.pop(), Some((Priority::Critical, "halt")));
/// assert_eq!(q.pop(), Some((Priority::Low, "backup")));
/// ```
#[derive(Debug)]
pub struct ClassQueues<T> {
    queues: [VecDeque<T>; 4],
    turn: usize,
}

impl<T> Default for ClassQueues<T> {
    fn default() -> Self {
        Self {
            queues: Default::default(),
            turn: 0,
        }
    }
}

impl<T> ClassQueues<T> {
    /// Queues `item` in `class`.
    pub fn push(&mut self, class: Priority, item: T) {
        self.queues[class as usize].push_back(item);
    }

    /// The next item by class policy.
    pub fn pop(&mut self) -> Option<(Priority, T)> {
        if let Some(item) = self.queues[0].pop_front() {
            return Some((Priority::Critical, item));
        }
        for _ in 0..TURNS.len() {
            let class = TURNS[self.turn];
            self.turn = (self.turn + 1) % TURNS.len();
            if let Some(item) = self.queues[class].pop_front() {
                return Some((Priority::ALL[class], item));
            }
        }
        None
    }

    /// Removes the first item matching `f` (any class).
    pub fn remove_first(&mut self, mut f: impl FnMut(&T) -> bool) -> Option<T> {
        for q in &mut self.queues {
            if let Some(i) = q.iter().position(&mut f) {
                return q.remove(i);
            }
        }
        None
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Drops every item.
    pub fn clear(&mut self) {
        for q in &mut self.queues {
            q.clear();
        }
    }

    /// Takes every item, most urgent class first.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.queues.iter_mut().flat_map(|q| q.drain(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_is_strict_and_the_rest_share_4_2_1() {
        let mut s = ClassQueues::default();
        for class in Priority::ALL {
            s.push(class, class as u32);
        }
        for _ in 0..10 {
            let (c, id) = s.pop().unwrap();
            assert_eq!(c, Priority::Critical);
            s.push(c, id);
        }
        assert_eq!(s.pop().unwrap().0, Priority::Critical); // the critical work ends
        let mut counts = [0usize; 4];
        for _ in 0..700 {
            let (c, id) = s.pop().unwrap();
            counts[c as usize] += 1;
            s.push(c, id);
        }
        assert_eq!(counts, [0, 400, 200, 100]);
    }

    #[test]
    fn an_empty_class_gives_its_turns_away() {
        let mut s = ClassQueues::default();
        s.push(Priority::Low, 1);
        for _ in 0..5 {
            let (c, id) = s.pop().unwrap();
            assert_eq!((c, id), (Priority::Low, 1));
            s.push(c, id);
        }
        assert_eq!(s.len(), 1);
        assert_eq!(s.remove_first(|&x| x == 1), Some(1));
        assert!(s.is_empty());
    }
}
