//! The JetStream payload decoder: any bytes either decode to an event or are refused with a
//! reason; never a panic. A decoded payload is a JSON object within the size limit whose
//! `endpoint_id` is the one decoded.
#![no_main]

use deploy_worker::events::{MAX_EVENT_BYTES, ServingEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ServingEvent::decode(data) {
        Ok(event) => {
            assert!(data.len() <= MAX_EVENT_BYTES);
            // (serde_json skips some checks inside ignored fields that a full parse makes)
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
                let id = value["endpoint_id"]
                    .as_str()
                    .expect("endpoint_id is a string");
                assert_eq!(uuid::Uuid::parse_str(id).ok(), Some(event.endpoint_id));
            }
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
