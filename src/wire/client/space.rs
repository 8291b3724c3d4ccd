//! Whether a planned transfer fits on the robot: judged from the free space its hello reported,
//! before any content is sent, so a deploy that cannot fit is refused with the numbers instead
//! of failing half-way with the card full (where the robot's logs and ROS bags live too).

use tokio::io::{AsyncRead, AsyncWrite};

use super::super::WireError;
use super::super::split;
use super::Connection;
use super::plan::{Objects, TransferPlan};
use crate::store::Store;

/// What a deploy leaves free on the robot's card whatever it needs: journald, the agent's logs
/// and a student's ROS bag must still fit after a deploy.
pub const SPACE_RESERVE: u64 = 128 << 20;

/// A whole layer is estimated from its compressed size times this first; only when that
/// estimate comes near the free space is the layer read to count its files exactly.
const ROUGH_RATIO: u64 = 10;

/// Files take whole blocks; 4 KiB is ext4's on every Duckiebot card.
const BLOCK: u64 = 4096;

fn on_disk(size: u64) -> u64 {
    size.div_ceil(BLOCK).max(1) * BLOCK
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Connection<IO> {
    /// Refuses `plan` when what it stores on the robot would leave less than
    /// [`SPACE_RESERVE`] of the free space the robot reported. A plan that stores nothing
    /// always passes.
    pub fn check_space(&self, store: &Store, plan: &TransferPlan) -> Result<(), WireError> {
        let free = self.hello.free_bytes;
        let room = free.saturating_sub(SPACE_RESERVE);
        let documents: u64 = plan.documents.iter().map(|d| on_disk(d.size)).sum();
        let listed: u64 = plan
            .layers
            .iter()
            .filter_map(|l| match &l.objects {
                Objects::Listed { objects, .. } => {
                    Some(objects.iter().map(|o| on_disk(o.size)).sum::<u64>())
                }
                Objects::Streamed => None,
            })
            .sum();
        let streamed: Vec<_> = plan
            .layers
            .iter()
            .filter(|l| matches!(l.objects, Objects::Streamed))
            .collect();
        let rough: u64 = streamed
            .iter()
            .map(|l| l.blob.size.saturating_mul(ROUGH_RATIO))
            .sum();
        if documents + listed + rough <= room {
            return Ok(());
        }
        // Near the limit: count the streamed layers' files (cached for the send that follows).
        let mut seen = std::collections::HashSet::new();
        let mut exact = 0u64;
        for l in streamed {
            let info = split::layer_info(&self.cache, store, &l.blob, &l.diff_id)?;
            for f in info.files {
                if seen.insert(f.object.digest.clone()) {
                    exact += on_disk(f.object.size);
                }
            }
        }
        let needed = documents + listed + exact;
        if needed == 0 || needed <= room {
            return Ok(());
        }
        Err(WireError::NoSpace {
            needed,
            free,
            reserve: SPACE_RESERVE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_take_whole_blocks() {
        assert_eq!(on_disk(0), BLOCK);
        assert_eq!(on_disk(1), BLOCK);
        assert_eq!(on_disk(BLOCK), BLOCK);
        assert_eq!(on_disk(BLOCK + 1), 2 * BLOCK);
    }
}
