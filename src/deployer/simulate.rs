//! Simulate mode: no Kubernetes; Ready after a delay at `http://<name>.example.local`.
//!
//! The delay (default 0) stands in for the time KServe takes to become Ready, so the demo and
//! load tests can show what many slow deploys in flight look like.

use std::time::Duration;

use tracing::Instrument;
use uuid::Uuid;

use super::{
    DeleteOutcome, DeployError, DeployOutcome, DeployRequest, DeployStep, deploy_step_span,
};
use crate::telemetry;

/// Deployer for `DEPLOY_MODE=simulate`.
#[derive(Debug, Clone)]
pub struct SimulateDeployer {
    delay: Duration,
}

impl SimulateDeployer {
    /// A simulated deployer that takes `delay` to become Ready.
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }

    /// The URL an endpoint gets in simulate mode.
    pub fn url(name: &str) -> String {
        format!("http://{name}.example.local")
    }

    pub(super) async fn deploy(
        &self,
        request: DeployRequest<'_>,
    ) -> Result<DeployOutcome, DeployError> {
        // Nothing to send: the apply step is instantaneous, but traced like a real one.
        let apply = deploy_step_span(DeployStep::Apply, &request);
        telemetry::record_outcome(&apply, "applied");
        drop(apply);
        let wait = deploy_step_span(DeployStep::WaitReady, &request);
        if !self.delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.delay).instrument(wait.clone()) => {}
                () = request.interrupt.fired() => {
                    telemetry::record_outcome(&wait, "interrupted");
                    return Ok(DeployOutcome::Interrupted);
                }
            }
        }
        telemetry::record_outcome(&wait, "ready");
        Ok(DeployOutcome::Ready {
            url: Self::url(request.name),
        })
    }

    pub(super) async fn delete(
        &self,
        _endpoint_id: Uuid,
        _name: &str,
    ) -> Result<DeleteOutcome, DeployError> {
        Ok(DeleteOutcome::Deleted)
    }
}
