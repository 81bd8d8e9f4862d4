//! Live connections by client address, so one address cannot take every
//! connection slot of the node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::ApiError;

/// Connection counts by IP address.
#[derive(Debug)]
pub(crate) struct Peers {
    /// Never held across an await.
    counts: Mutex<HashMap<IpAddr, usize>>,
    per_ip_max: usize,
}

/// One counted connection; dropping it releases the count.
#[derive(Debug)]
pub(crate) struct PeerTicket {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    pub(crate) fn new(per_ip_max: usize) -> Self {
        Self {
            counts: Mutex::default(),
            per_ip_max,
        }
    }

    /// Counts a connection from `ip`, unless it already holds the most.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PeerTicket, ApiError> {
        let mut counts = self.counts.lock().expect("peers lock");
        let count = counts.entry(ip).or_default();
        if *count >= self.per_ip_max {
            return Err(ApiError {
                retry_after: Some(5),
                ..ApiError::new(
                    switchboard_protocol::ErrorCode::RateLimited,
                    "too many connections from this address",
                )
            });
        }
        *count += 1;
        Ok(PeerTicket {
            peers: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PeerTicket {
    fn drop(&mut self) {
        let mut counts = self.peers.counts.lock().expect("peers lock");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back() {
        let peers = Arc::new(Peers::new(2));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = peers.admit(ip).unwrap();
        let _b = peers.admit(ip).unwrap();
        let refused = peers.admit(ip).unwrap_err();
        assert_eq!(refused.retry_after, Some(5));
        assert!(peers.admit([10, 0, 0, 2].into()).is_ok());
        drop(a);
        assert!(peers.admit(ip).is_ok());
        drop(peers.admit(ip));
    }
}
