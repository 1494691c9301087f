//! The Legato edge: authenticates clients, validates and stamps their writes, publishes them
//! to JetStream and answers once they are committed; serves reads from the store.
//!
//! [`Application::build`] binds the listeners (port 0 allowed) and connects;
//! [`Application::run_until_stopped`] serves until the shutdown token is cancelled.

pub mod auth;
pub mod bus;
pub mod config;
pub mod error;
pub mod http_api;
pub mod metrics;
pub mod state;
pub mod ws;

use anyhow::Context;
use config::EdgeConfig;
use hyper_util::service::TowerToHyperService;
use legato_runtime::admin::Health;
use prometheus::Registry;
use state::State;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// Binds `addr` with a listen backlog of `backlog` (the kernel caps it at
/// `net.core.somaxconn`; `TcpListener::bind` would use 1024): connections arriving faster than
/// the edge accepts them, as in a reconnect storm, wait there instead of being reset.
async fn bind(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted edge can bind while old sockets linger.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(backlog),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
    }))
}

pub struct Application {
    listener: TcpListener,
    admin_listener: TcpListener,
    state: Arc<State>,
    broker_events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
}

impl Application {
    pub async fn build(config: EdgeConfig) -> anyhow::Result<Application> {
        config.validate().map_err(anyhow::Error::msg)?;
        let listener = bind(&config.listen, config.limits.listen_backlog)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let admin_listener = TcpListener::bind(&config.admin_listen)
            .await
            .with_context(|| format!("binding {}", config.admin_listen))?;
        let store = legato_runtime::store::open(&config.store, &config.data_dir)
            .await
            .context("opening the store")?;
        let registry = Registry::new();
        let store = legato_runtime::store_metrics::instrument(store, &registry)
            .context("registering store metrics")?;
        let deployment = store
            .deployment_id()
            .await
            .context("reading the deployment id")?;
        let (events_tx, broker_events) = tokio::sync::mpsc::unbounded_channel();
        let client = legato_runtime::nats::connect_observed(&config.nats, move |event| {
            let _ = events_tx.send(event);
        })
        .await
        .context("connecting to NATS")?;
        let bus = bus::Bus::new(
            client,
            store.clone(),
            Duration::from_millis(config.sync.publish_timeout_ms),
            Duration::from_millis(config.sync.commit_wait_ms),
            config.limits.max_envelope_bytes,
            config.nats.envelopes,
            Duration::from_millis(config.sync.watermark_cache_ms),
        );
        let metrics = metrics::EdgeMetrics::register(&registry).context("registering metrics")?;
        let state = Arc::new_cyclic(|weak: &std::sync::Weak<State>| {
            let (bus_state, store_state) = (weak.clone(), weak.clone());
            let health = Health::new(registry)
                .check("nats", move || {
                    let state = bus_state.upgrade();
                    async move {
                        match state {
                            Some(s) => s.bus.ready().await,
                            None => Err("shutting down".into()),
                        }
                    }
                })
                .check("store", move || {
                    let state = store_state.upgrade();
                    async move {
                        match state {
                            Some(s) => s.store.health().await.map_err(|e| e.to_string()),
                            None => Err("shutting down".into()),
                        }
                    }
                });
            State {
                hub: ws::hub::Hub::new(
                    bus.client().clone(),
                    config.ws.outbound_queue,
                    config.ws.max_sessions_per_user,
                    config.ws.max_sessions,
                ),
                sessions: tokio_util::task::TaskTracker::new(),
                auth: auth::Authenticator::new(&config.auth),
                config,
                bus,
                store,
                deployment,
                metrics,
                health,
            }
        });
        Ok(Application {
            listener,
            admin_listener,
            state,
            broker_events,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener")
    }

    /// Serves HTTP and the admin port until `shutdown`, then drains in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let routes = http_api::routes(self.state.clone());
        let service = ws::EdgeService {
            state: self.state.clone(),
            warp: TowerToHyperService::new(warp::service(routes)),
        };
        let admin = tokio::spawn(legato_runtime::admin::serve(
            self.admin_listener,
            self.state.health.clone(),
            shutdown.clone(),
        ));
        let resync = tokio::spawn(resync_after_reconnects(
            self.state.clone(),
            self.broker_events,
            shutdown.clone(),
        ));
        tracing::info!(addr = %self.listener.local_addr()?, "edge listening");
        // Sessions close first (1012, in batches), then the listener stops and drains.
        let closer = {
            let (state, shutdown) = (self.state.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                let ws = &state.config.ws;
                state
                    .hub
                    .close_all(ws.close_batch, Duration::from_millis(ws.close_pause_ms))
                    .await;
                state.sessions.close();
                // Every session ends promptly once closed, even one blocked writing to a client
                // that stopped reading: its writes race the close (ws::session).
                state.sessions.wait().await;
            })
        };
        let limits = self.state.config.connection_limits();
        legato_runtime::http::serve_http1(self.listener, service, limits, shutdown).await;
        closer.await.context("closing sessions")?;
        resync.abort();
        admin.await.context("admin server task")?;
        legato_runtime::nats::drain(self.state.bus.client()).await;
        Ok(())
    }
}

/// Live frames published while this edge's subscriptions were gone (the broker restarted, or
/// the connection broke) never reach its sessions, and fanout counts them as delivered. When
/// the connection breaks, each session keeps its cursor; once the subscriptions are back and
/// everything that could have been published meanwhile is committed, the sessions catch up
/// from the store from that cursor. A new break while waiting starts the wait over.
async fn resync_after_reconnects(
    state: Arc<State>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    shutdown: CancellationToken,
) {
    let covered = |state: Arc<State>, shutdown: CancellationToken| async move {
        while state
            .bus
            .covered_since_resubscribe(&shutdown)
            .await
            .is_err()
        {
            if !legato_runtime::shutdown::pause(&shutdown, Duration::from_millis(250)).await {
                return false;
            }
        }
        true
    };
    let mut waiting = None;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                None => return,
                Some(async_nats::Event::Disconnected) => {
                    waiting = None;
                    state.hub.broker_lost();
                }
                Some(async_nats::Event::Connected) if state.hub.any_lost() => {
                    waiting = Some(Box::pin(covered(state.clone(), shutdown.clone())));
                }
                Some(_) => {}
            },
            done = async { waiting.as_mut().expect("guarded").await }, if waiting.is_some() => {
                waiting = None;
                if !done {
                    return;
                }
                state.hub.broker_back();
            }
        }
    }
}
