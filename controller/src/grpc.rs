//! The gRPC side of `portcullis-controller serve`: Linkerd's
//! `io.linkerd.proxy.inbound.InboundServerPolicies` (`GetPort`, `WatchPort`)
//! over the compiled policies of every pod.
//!
//! Owns: reading a `PortSpec` as Linkerd's controller does (workload as JSON
//! `{"ns","pod"}` or legacy `NS:POD`; bad workload or port is
//! `InvalidArgument`, an unknown pod `NotFound`, an unknown port of a known
//! pod gets the pod's default policy), and one stream per watch that sends the
//! port's policy first and then again only when that port's policy changed.
//! Must not: read files or compile (see `serve`), or convert policy itself
//! (`portcullis_policy::proto` does).
//! Called by: `serve::run`, and tests that serve policies they build.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use portcullis_policy::client::Workload;
use portcullis_policy::proto::{invalid_policy, pb};
use portcullis_policy::{PortPolicy, WorkloadPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// What the controller serves: every pod's compiled policy. Replaced whole
/// (through a `watch` channel) when the resource files change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policies {
    pub workloads: HashMap<Workload, Arc<WorkloadPolicy>>,
}

/// The `InboundServerPolicies` service.
#[derive(Clone, Debug)]
pub struct PolicyService {
    policies: watch::Receiver<Arc<Policies>>,
    shutdown: watch::Receiver<bool>,
}

impl PolicyService {
    /// Serves `policies` (the latest value is always used); every open watch
    /// ends when `shutdown` turns true, so a graceful shutdown can finish.
    pub fn new(policies: watch::Receiver<Arc<Policies>>, shutdown: watch::Receiver<bool>) -> Self {
        PolicyService { policies, shutdown }
    }

    /// Checks a `PortSpec`, as Linkerd's policy controller does.
    fn target(&self, spec: pb::PortSpec) -> Result<(Workload, u16), Status> {
        let pb::PortSpec { workload, port } = spec;
        let workload =
            Workload::from_spec(&workload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Status::invalid_argument(format!("invalid port: {port}")))?;
        Ok((workload, port))
    }

    fn lookup(&self, workload: &Workload) -> Result<Arc<WorkloadPolicy>, Status> {
        self.policies
            .borrow()
            .workloads
            .get(workload)
            .cloned()
            .ok_or_else(|| unknown_pod(workload))
    }
}

fn unknown_pod(workload: &Workload) -> Status {
    Status::not_found(format!("unknown pod {workload}"))
}

/// Our policy as Linkerd's message. A policy the API cannot express is logged
/// and served as a deny (`default/invalid`): fail closed.
pub fn encode(policy: &PortPolicy) -> pb::Server {
    match pb::Server::try_from(policy) {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "cannot express this policy in the API; serving a deny instead");
            pb::Server::try_from(&invalid_policy(policy.port)).unwrap_or_default()
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Server, Status>> + Send>>;

#[tonic::async_trait]
impl pb::server::InboundServerPolicies for PolicyService {
    async fn get_port(&self, req: Request<pb::PortSpec>) -> Result<Response<pb::Server>, Status> {
        let (workload, port) = self.target(req.into_inner())?;
        let policy = self.lookup(&workload)?.port(port);
        Ok(Response::new(encode(&policy)))
    }

    type WatchPortStream = WatchStream;

    async fn watch_port(
        &self,
        req: Request<pb::PortSpec>,
    ) -> Result<Response<WatchStream>, Status> {
        let peer = req.remote_addr();
        let (workload, port) = self.target(req.into_inner())?;
        self.lookup(&workload)?;
        tracing::debug!(%workload, port, ?peer, "watch started");
        let watch = PortWatch {
            workload,
            port,
            policies: self.policies.clone(),
            shutdown: self.shutdown.clone(),
            last: None,
            done: false,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            watch,
            PortWatch::next,
        ))))
    }
}

/// One `WatchPort` stream.
struct PortWatch {
    workload: Workload,
    port: u16,
    policies: watch::Receiver<Arc<Policies>>,
    shutdown: watch::Receiver<bool>,
    /// The policy last sent: only a different one is sent again.
    last: Option<PortPolicy>,
    done: bool,
}

impl PortWatch {
    async fn next(mut self) -> Option<(Result<pb::Server, Status>, Self)> {
        if self.done {
            return None;
        }
        loop {
            let current = self.policies.borrow_and_update().clone();
            match current.workloads.get(&self.workload) {
                // The pod was removed from the resources: end the watch the
                // way a new one would be answered.
                None => {
                    tracing::info!(workload = %self.workload, port = self.port, "pod removed; ending its watch");
                    self.done = true;
                    let status = unknown_pod(&self.workload);
                    return Some((Err(status), self));
                }
                Some(w) => {
                    let policy = w.port(self.port);
                    if self.last.as_ref() != Some(&policy) {
                        tracing::debug!(workload = %self.workload, port = self.port, server = %policy.server, "sending policy");
                        let message = encode(&policy);
                        self.last = Some(policy);
                        return Some((Ok(message), self));
                    }
                }
            }
            tokio::select! {
                changed = self.policies.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = self.shutdown.wait_for(|s| *s) => return None,
            }
        }
    }
}

/// Serves the API on `listener` until `shutdown` turns true (open watches
/// end first, so the shutdown is graceful).
pub async fn serve(
    listener: TcpListener,
    policies: watch::Receiver<Arc<Policies>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let service = PolicyService::new(policies, shutdown.clone());
    let mut until = shutdown;
    tonic::transport::Server::builder()
        .add_service(pb::server::InboundServerPoliciesServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = until.wait_for(|s| *s).await;
            },
        )
        .await
}

/// Binds `addr` and serves on it in a task: for tests and embedding. Returns
/// the bound address (useful with port 0).
pub async fn spawn(
    addr: SocketAddr,
    policies: watch::Receiver<Arc<Policies>>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(
    SocketAddr,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(serve(listener, policies, shutdown))))
}
