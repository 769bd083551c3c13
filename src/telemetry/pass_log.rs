//! What a log line inside a pass names when the pass has no span of its own.
//!
//! When spans are not exported (see [`spans_exported`](super::spans_exported)) a `pass` span
//! would exist only to give log lines their context: the endpoint, the trace, the spec
//! generation. Made, entered at every poll, recorded into and closed for every pass, that span
//! cost several per cent of the worker's CPU at thousands of passes a second, although a pass
//! that goes well logs nothing. Instead the pass runs with a small [`PassLog`] in a thread-local
//! while it is polled ([`Entered`]), and the log layer adds its fields to every line logged
//! meanwhile, as if the line sat in a `pass` span: the same names, the same values.

use std::cell::Cell;

use uuid::Uuid;

/// The log context of one pass: the fields its `pass` span would carry.
#[derive(Debug, Clone, Copy)]
pub(super) struct PassLog {
    /// The endpoint.
    pub(super) endpoint_id: Uuid,
    /// The pass's trace id, as the history row stores it (32 hex digits).
    pub(super) trace_id: Option<[u8; 32]>,
    /// Events the pass covers.
    pub(super) events: usize,
    /// The spec generation, once the row is read.
    pub(super) generation: Option<i64>,
}

impl PassLog {
    pub(super) fn new(endpoint_id: Uuid, trace_id: Option<&str>, events: usize) -> Self {
        Self {
            endpoint_id,
            trace_id: trace_id.and_then(|id| id.as_bytes().try_into().ok()),
            events,
            generation: None,
        }
    }

    /// The trace id as text.
    pub(super) fn trace_id(&self) -> Option<&str> {
        self.trace_id
            .as_ref()
            .and_then(|id| std::str::from_utf8(id).ok())
    }
}

thread_local! {
    /// The pass being polled on this thread, if it has no span of its own.
    static CURRENT: Cell<Option<PassLog>> = const { Cell::new(None) };
}

/// The log context of the pass being polled on this thread (none inside a pass with a span).
pub(super) fn current() -> Option<PassLog> {
    CURRENT.with(Cell::get)
}

/// Records the spec generation of the pass being polled on this thread, for its log lines;
/// true when there was such a pass.
pub(super) fn record_generation(generation: i64) -> bool {
    CURRENT.with(|current| match current.get() {
        Some(mut log) => {
            log.generation = Some(generation);
            current.set(Some(log));
            true
        }
        None => false,
    })
}

/// A pass context made current for one poll of the pass (see
/// [`InPass`](super::InPass)); what was current before comes back when it is dropped (also
/// when the poll panics), and what the poll recorded is kept for the next.
pub(super) struct Entered<'a> {
    log: &'a mut PassLog,
    outer: Option<PassLog>,
}

impl<'a> Entered<'a> {
    pub(super) fn enter(log: &'a mut PassLog) -> Self {
        let outer = CURRENT.with(|current| current.replace(Some(*log)));
        Self { log, outer }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if let Some(recorded) = CURRENT.with(|current| current.replace(self.outer)) {
            *self.log = recorded;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_is_current_only_while_entered_and_keeps_what_was_recorded() {
        let id = Uuid::new_v4();
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let mut log = PassLog::new(id, Some(trace), 3);
        {
            let _poll = Entered::enter(&mut log);
            let first = current().expect("inside the pass");
            assert_eq!(first.endpoint_id, id);
            assert_eq!(first.trace_id(), Some(trace));
            assert_eq!((first.events, first.generation), (3, None));
            assert!(record_generation(7));
        }
        assert!(current().is_none(), "nothing is current between polls");
        assert!(!record_generation(8), "no pass to record into");
        // the next poll sees what the last one recorded
        let _poll = Entered::enter(&mut log);
        assert_eq!(current().map(|log| log.generation), Some(Some(7)));
    }

    #[test]
    fn a_trace_id_that_is_not_32_characters_is_left_out() {
        let log = PassLog::new(Uuid::nil(), Some("short"), 1);
        assert_eq!(log.trace_id(), None);
    }
}
