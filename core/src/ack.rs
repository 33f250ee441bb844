//! The ack stage: MQTT acknowledgements in arrival order (MQTT-4.6.0-2), each sent only once
//! every Kafka write its message caused has been acknowledged by Kafka.
//!
//! Kafka completes writes out of order (different partitions, retries), so acks wait behind
//! a watermark: message N is acknowledged only after messages 1..N-1 were.

use std::collections::VecDeque;

/// In-order acknowledgement tracker. `T` is whatever is needed to send the ack.
#[derive(Debug)]
pub struct AckQueue<T> {
    /// Sequence number of `slots[0]`.
    head: u64,
    slots: VecDeque<Slot<T>>,
}

#[derive(Debug)]
struct Slot<T> {
    token: T,
    done: bool,
}

impl<T> Default for AckQueue<T> {
    fn default() -> Self {
        AckQueue {
            head: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> AckQueue<T> {
    /// Record an arrival; returns its sequence number.
    pub fn arrived(&mut self, token: T) -> u64 {
        self.slots.push_back(Slot { token, done: false });
        self.head + self.slots.len() as u64 - 1
    }

    /// Mark `seq` fully written; appends the tokens now ready to ack to `ready`, in
    /// arrival order.
    pub fn done(&mut self, seq: u64, ready: &mut Vec<T>) {
        if let Some(i) = seq.checked_sub(self.head)
            && let Some(slot) = self.slots.get_mut(i as usize)
        {
            slot.done = true;
        }
        while self.slots.front().is_some_and(|s| s.done) {
            ready.push(self.slots.pop_front().expect("front exists").token);
            self.head += 1;
        }
    }

    /// The oldest message not yet acknowledged.
    pub fn oldest(&self) -> Option<&T> {
        self.slots.front().map(|s| &s.token)
    }

    /// Messages received and not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_leave_in_arrival_order_whatever_order_kafka_completes() {
        let mut q = AckQueue::default();
        let done = |q: &mut AckQueue<i32>, seq| {
            let mut ready = Vec::new();
            q.done(seq, &mut ready);
            ready
        };
        let seqs: Vec<u64> = (0..5).map(|i| q.arrived(i)).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        assert!(done(&mut q, 2).is_empty());
        assert!(done(&mut q, 1).is_empty());
        assert_eq!(done(&mut q, 0), [0, 1, 2]);
        assert_eq!(q.pending(), 2);
        assert!(done(&mut q, 4).is_empty());
        assert_eq!(done(&mut q, 3), [3, 4]);
        assert_eq!(q.arrived(9), 5);
        assert_eq!(done(&mut q, 5), [9]);
        assert!(
            done(&mut q, 99).is_empty(),
            "unknown sequence numbers are ignored"
        );
    }
}
