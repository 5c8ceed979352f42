//! The libp2p mesh. One [`EventLoop`] owns the `Swarm`; everyone else talks to it through a
//! cloneable [`MeshClient`] over a bounded channel (libp2p's file-sharing example pattern).
//!
//! Transport: TCP + pnet (the cluster's swarm key) + Noise + Yamux. Nothing else: libp2p's pnet
//! does not protect QUIC, so a keyed mesh never listens on QUIC (docs/security.md).
//! Behaviours: mDNS (re-queried every second), identify, ping, and one request-response
//! protocol for Raft RPCs, forwarded writes, joins and log reads ([`rpc`]).

pub mod key;
pub mod rpc;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::core::Transport;
use libp2p::core::transport::upgrade;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, mdns, noise, ping, tcp, yamux};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::Error;
use rpc::{Request, Response};

/// The gossipsub topic of resource statistics (versioned like every wire format).
const STATS_TOPIC: &str = "testmesh/stats/1";

/// Default mesh port (the HTTP API is 7070).
pub const DEFAULT_PORT: u16 = 7071;

pub struct MeshConfig {
    pub keypair: Keypair,
    pub swarm_key: PreSharedKey,
    pub listen: Vec<Multiaddr>,
    pub join: Vec<Multiaddr>,
    pub mdns: bool,
    /// Where received statistics go (the store's owner validates them); called from the event
    /// loop, so it must not block.
    pub stats: GossipSink,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    mdns: Toggle<mdns::tokio::Behaviour>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossip: gossipsub::Behaviour,
    rpc: request_response::Behaviour<rpc::Codec>,
}

/// Takes a gossiped statistics message: the node the mesh says signed it, and its bytes.
pub type GossipSink = Box<dyn Fn(Option<testmesh_consensus::NodeId>, Vec<u8>) + Send>;

/// A request from a peer, to be answered through `reply`.
pub struct Inbound {
    pub peer: PeerId,
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

enum Cmd {
    Request {
        peer: PeerId,
        // Boxed: requests carry whole registrations, far bigger than the other commands.
        request: Box<Request>,
        reply: oneshot::Sender<Result<Response, String>>,
    },
    Peers(oneshot::Sender<Vec<PeerId>>),
    AddAddresses(PeerId, Vec<Multiaddr>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Publish(Vec<u8>),
}

/// How a cluster member is reached, as stored in the Raft membership: its peer id and the
/// addresses it listens on, separated by spaces.
pub fn member_addr(peer: &PeerId, addrs: &[Multiaddr]) -> String {
    // Another host dialling our loopback address would reach itself: leave loopback out unless
    // it is all there is (a cluster on one host).
    let is_loopback = |a: &Multiaddr| {
        a.iter().any(|p| match p {
            libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
            libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        })
    };
    let routable: Vec<&Multiaddr> = addrs.iter().filter(|a| !is_loopback(a)).collect();
    let chosen: Vec<&Multiaddr> = if routable.is_empty() {
        addrs.iter().collect()
    } else {
        routable
    };
    std::iter::once(peer.to_string())
        .chain(chosen.into_iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn parse_member_addr(s: &str) -> Option<(PeerId, Vec<Multiaddr>)> {
    let mut parts = s.split_whitespace();
    let peer = parts.next()?.parse().ok()?;
    Some((peer, parts.filter_map(|a| a.parse().ok()).collect()))
}

/// Cloneable handle to the mesh.
#[derive(Clone)]
pub struct MeshClient {
    tx: mpsc::Sender<Cmd>,
    local: PeerId,
    /// Peers whose last connection just closed.
    gone: broadcast::Sender<PeerId>,
}

impl MeshClient {
    pub fn local_peer(&self) -> PeerId {
        self.local
    }

    /// Peers as their last connection closes (a killed process's sockets close at once).
    pub fn disconnects(&self) -> broadcast::Receiver<PeerId> {
        self.gone.subscribe()
    }

    /// Sends a request and waits for the answer (or `timeout`).
    pub async fn request(
        &self,
        peer: PeerId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Request {
                peer,
                request: Box::new(request),
                reply,
            })
            .await
            .map_err(|_| "the mesh is shut down".to_string())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the mesh is shut down".into()),
            Err(_) => Err(format!("no answer from {peer} within {timeout:?}")),
        }
    }

    /// Tells the swarm where a peer can be reached (from the membership).
    pub fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if !addrs.is_empty() {
            let _ = self.tx.try_send(Cmd::AddAddresses(peer, addrs));
        }
    }

    /// Resolves a member address string to its peer, remembering its addresses.
    pub fn resolve(&self, member: &str) -> Option<PeerId> {
        let (peer, addrs) = parse_member_addr(member)?;
        self.add_addresses(peer, addrs);
        Some(peer)
    }

    /// This node's member address.
    pub async fn member_addr(&self) -> String {
        member_addr(&self.local, &self.listen_addrs().await)
    }

    /// Publishes this node's statistics (best effort: dropped if the mesh is busy).
    pub fn publish_stats(&self, bytes: Vec<u8>) {
        let _ = self.tx.try_send(Cmd::Publish(bytes));
    }

    /// Peers with an open connection.
    pub async fn peers(&self) -> Vec<PeerId> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Peers(reply)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The addresses this node listens on; empty until every listener has reported at least
    /// one (a wildcard listener then keeps adding the other interfaces for a moment).
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::ListenAddrs(reply)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

fn transport(
    keypair: &Keypair,
    psk: PreSharedKey,
) -> Result<libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>, Error> {
    let noise = noise::Config::new(keypair).map_err(|e| Error::Config(format!("noise: {e}")))?;
    Ok(tcp::tokio::Transport::new(tcp::Config::new().nodelay(true))
        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(10))
        .boxed())
}

/// Builds the swarm and starts its event loop. Inbound requests arrive on the returned channel.
/// Builds the swarm; the caller runs the returned [`EventLoop`] (until shutdown, or until
/// every [`MeshClient`] is gone).
pub fn start(cfg: MeshConfig) -> Result<(MeshClient, mpsc::Receiver<Inbound>, EventLoop), Error> {
    for a in cfg.listen.iter().chain(&cfg.join) {
        if a.iter().any(|p| {
            matches!(
                p,
                libp2p::multiaddr::Protocol::QuicV1 | libp2p::multiaddr::Protocol::Quic
            )
        }) {
            return Err(Error::Config(format!(
                "{a}: QUIC is not supported: the swarm key (libp2p pnet) cannot protect QUIC, so testmesh uses TCP only; use /ip4/…/tcp/PORT"
            )));
        }
    }
    let local = cfg.keypair.public().to_peer_id();
    let mdns = if cfg.mdns {
        let c = mdns::Config {
            query_interval: Duration::from_secs(1),
            ..Default::default()
        };
        Some(
            mdns::tokio::Behaviour::new(c, local)
                .map_err(|e| Error::Config(format!("mDNS: {e}")))?,
        )
    } else {
        None
    };
    let gossip_config = gossipsub::ConfigBuilder::default()
        // The default first heartbeat comes after 5 s; stats should flow at once.
        .heartbeat_initial_delay(Duration::from_millis(100))
        .heartbeat_interval(Duration::from_secs(1))
        .max_transmit_size(crate::stats::MAX_MESSAGE)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .build()
        .map_err(|e| Error::Config(format!("gossipsub: {e}")))?;
    let mut gossip = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(cfg.keypair.clone()),
        gossip_config,
    )
    .map_err(|e| Error::Config(format!("gossipsub: {e}")))?;
    let topic = gossipsub::IdentTopic::new(STATS_TOPIC);
    gossip
        .subscribe(&topic)
        .map_err(|e| Error::Config(format!("gossipsub: {e}")))?;
    let behaviour = Behaviour {
        gossip,
        mdns: Toggle::from(mdns),
        identify: identify::Behaviour::new(
            identify::Config::new("/testmesh/id/1".into(), cfg.keypair.public())
                .with_agent_version(format!("testmesh/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: ping::Behaviour::default(),
        rpc: request_response::Behaviour::new(
            [(rpc::PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
        ),
    };
    let mut swarm = Swarm::new(
        transport(&cfg.keypair, cfg.swarm_key)?,
        behaviour,
        local,
        libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(60)),
    );
    let mut unannounced = HashSet::new();
    for a in &cfg.listen {
        let id = swarm
            .listen_on(a.clone())
            .map_err(|e| Error::Config(format!("cannot listen on {a}: {e}")))?;
        unannounced.insert(id);
    }
    let (tx, cmds) = mpsc::channel(1024);
    let (inbound_tx, inbound) = mpsc::channel(1024);
    let (gone, _) = broadcast::channel(64);
    let event_loop = EventLoop {
        gone: gone.clone(),
        swarm,
        cmds,
        inbound: inbound_tx,
        join: cfg.join,
        join_peers: HashMap::new(),
        outbound: HashMap::new(),
        replies: FuturesUnordered::new(),
        connected: HashSet::new(),
        listen: Vec::new(),
        unannounced,
        topic,
        stats: cfg.stats,
    };
    Ok((MeshClient { tx, local, gone }, inbound, event_loop))
}

type PendingReply = BoxFuture<'static, (Option<Response>, ResponseChannel<Response>)>;

/// The one owner of the swarm.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    cmds: mpsc::Receiver<Cmd>,
    inbound: mpsc::Sender<Inbound>,
    join: Vec<Multiaddr>,
    /// The peer found behind each `--join` address given without its `/p2p/` id.
    join_peers: HashMap<Multiaddr, PeerId>,
    outbound: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, String>>>,
    replies: FuturesUnordered<PendingReply>,
    connected: HashSet<PeerId>,
    listen: Vec<Multiaddr>,
    /// Listeners that have not reported an address yet: until they all have, the addresses
    /// are incomplete (a worker told to join only the first one, loopback, never arrives).
    unannounced: HashSet<libp2p::core::transport::ListenerId>,
    topic: gossipsub::IdentTopic,
    stats: GossipSink,
    gone: broadcast::Sender<PeerId>,
}

impl EventLoop {
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut redial = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                ev = self.swarm.select_next_some() => self.on_event(ev),
                cmd = self.cmds.recv() => match cmd {
                    Some(c) => self.on_cmd(c),
                    None => return,
                },
                Some((resp, channel)) = self.replies.next(), if !self.replies.is_empty() => {
                    if let Some(resp) = resp {
                        let _ = self.swarm.behaviour_mut().rpc.send_response(channel, resp);
                    }
                }
                _ = redial.tick() => self.redial(),
            }
        }
    }

    /// `--join` peers are dialled until connected, and again whenever the connection drops.
    fn redial(&mut self) {
        for a in self.join.clone() {
            // A bare address names no peer: remember who answered there, or each tick opened
            // one more connection to it (the soak counted 50 per follower in 100 s).
            let peer = a
                .iter()
                .find_map(|p| match p {
                    libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                    _ => None,
                })
                .or_else(|| self.join_peers.get(&a).copied());
            if peer.is_some_and(|p| self.connected.contains(&p)) {
                continue;
            }
            if let Err(e) = self.swarm.dial(a.clone()) {
                tracing::debug!("dial {a}: {e}");
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request {
                peer,
                request,
                reply,
            } => {
                let id = self.swarm.behaviour_mut().rpc.send_request(&peer, *request);
                self.outbound.insert(id, reply);
            }
            Cmd::AddAddresses(peer, addrs) => {
                for a in addrs {
                    self.swarm.add_peer_address(peer, a);
                }
            }
            Cmd::Peers(reply) => {
                let _ = reply.send(self.connected.iter().copied().collect());
            }
            Cmd::ListenAddrs(reply) => {
                let complete = self.unannounced.is_empty();
                let _ = reply.send(if complete {
                    self.listen.clone()
                } else {
                    Vec::new()
                });
            }
            Cmd::Publish(bytes) => {
                // Alone, or before peers have subscribed, there is nobody to send to: fine.
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .publish(self.topic.clone(), bytes)
                {
                    tracing::trace!("stats not published: {e}");
                }
            }
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                tracing::info!(
                    "mesh listening on {address}/p2p/{}",
                    self.swarm.local_peer_id()
                );
                self.listen.push(address);
                self.unannounced.remove(&listener_id);
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.unannounced.remove(&listener_id);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint {
                    let bare = without_peer_id(address);
                    if let Some(j) = self.join.iter().find(|j| without_peer_id(j) == bare) {
                        self.join_peers.insert(j.clone(), peer_id);
                    }
                }
                if self.connected.insert(peer_id) {
                    tracing::info!(
                        "connected to {peer_id} at {}",
                        endpoint.get_remote_address()
                    );
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected.remove(&peer_id);
                tracing::info!("disconnected from {peer_id}");
                // Nobody listening is fine.
                let _ = self.gone.send(peer_id);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::warn!(
                    "refused a connection from {send_back_addr}: {error} (a peer without this cluster's swarm key cannot connect)"
                );
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::warn!(
                    "cannot connect to {}: {error} (does it use this cluster's swarm key?)",
                    peer_id
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "peer".into())
                );
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if peer == *self.swarm.local_peer_id() {
                        continue;
                    }
                    self.swarm.add_peer_address(peer, addr.clone());
                    if !self.connected.contains(&peer) {
                        tracing::debug!("mDNS found {peer} at {addr}");
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for a in info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, a);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(ev)) => self.on_rpc(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                message,
                ..
            })) => {
                let sender = message.source.map(|p| key::node_id_of(&p));
                (self.stats)(sender, message.data);
            }
            _ => {}
        }
    }

    fn on_rpc(&mut self, ev: request_response::Event<Request, Response>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let (reply, rx) = oneshot::channel();
                    match self.inbound.try_send(Inbound {
                        peer,
                        request,
                        reply,
                    }) {
                        Ok(()) => self
                            .replies
                            .push(Box::pin(async move { (rx.await.ok(), channel) })),
                        Err(_) => {
                            tracing::warn!("dropped a request from {peer}: the node is overloaded")
                        }
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(tx) = self.outbound.remove(&request_id) {
                        let _ = tx.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if let Some(tx) = self.outbound.remove(&request_id) {
                    let _ = tx.send(Err(format!("request to {peer} failed: {error}")));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!("request from {peer} failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

/// `addr` without a trailing `/p2p/ID`.
fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}
