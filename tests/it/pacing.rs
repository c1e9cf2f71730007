//! Pacing against the emulator's buckets (issue 15 item 7): the limiter settles on Graph's
//! `x-ms-throttle-limit-percentage` before the write bucket runs out, so no request draws a 429.
//! The emulator's clock is manual: buckets never refill, and nothing depends on timing.

use std::collections::HashMap;

use b2b_convert::emulator::{self, Clock, EmulatorConfig, Tenant};
use b2b_convert::graph::{Credentials, GraphClient, GraphConfig, GraphError, Limiter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_settles_on_the_first_pressure_signal_before_any_429() {
    let mut config = EmulatorConfig::new(Tenant::sample());
    config.clock = Clock::manual();
    config.writes_per_150s = 100;
    config.invitations_per_5s = 0;
    let emu = emulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let env: HashMap<String, String> = emu.client_env().into_iter().collect();
    let credentials = Credentials::from_lookup(|k| env.get(k).cloned()).unwrap();
    let base = emu.base_url();
    let limiter = Limiter::pacing(1_000.0, 5.0);
    let client =
        GraphClient::new(GraphConfig::new(&base, &base, credentials), limiter.clone()).unwrap();

    // Each PATCH of an absent user costs a write (throttling is decided before the 404).
    let change = serde_json::json!({"department": "pacing"});
    let mut writes = 0;
    while limiter.current_rate() > limiter.settle_rate() && writes < 100 {
        match client
            .patch_user("00000000-0000-0000-0000-0000000000d0", &change)
            .await
        {
            Err(GraphError::Api { status: 404, .. }) => writes += 1,
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    assert_eq!(limiter.current_rate(), 5.0, "settled");
    // Graph sends the header above 80% of the bucket: the 81st write is the first.
    assert_eq!(writes, 81);
    assert_eq!(emu.stats()["throttled"], 0, "no 429 before settling");
    emu.shutdown().await;
}
