//! Hands memory freed by archiving back to the operating system.
//!
//! glibc keeps freed blocks in its arenas; after retention moves thousands of tasks out of the
//! ledger the freed pages lie scattered between live ones and the resident size stays at its
//! peak. `malloc_trim(0)` releases every whole free page of every arena. It walks the arenas
//! (milliseconds), so it runs only when there is likely something to give: after the archive
//! grew, or when the resident size grew (a snapshot build, a model's training or a burst of
//! submits touches tens of MB and frees them again).

#![allow(unsafe_code)]

/// Growth of the resident size worth a trim.
pub const TRIM_ABOVE: u64 = 8 << 20;

/// When to trim, sampled now and then: after archiving, or once the resident size grew by
/// [`TRIM_ABOVE`] over the lowest seen since the last trim and has stopped growing. (The
/// allocator's own count of free bytes does not show it: pages given back and touched again
/// count as free all along. And not while it grows: a trim holds the allocator's locks while it
/// walks the heap, which slowed a burst of tasks by several per cent.)
#[derive(Debug, Default)]
pub struct TrimRule {
    low: Option<u64>,
    last: Option<u64>,
}

/// Growth between two samples that still counts as settled.
const SETTLED_WITHIN: u64 = 1 << 20;

impl TrimRule {
    /// Whether to trim now, `rss` bytes resident and `archived` whether the archive took
    /// tasks out of the ledger since the last sample.
    pub fn due(&mut self, rss: u64, archived: bool) -> bool {
        let low = self.low.map_or(rss, |l| l.min(rss));
        let settled = self.last.is_some_and(|l| rss <= l + SETTLED_WITHIN);
        self.low = Some(low);
        self.last = Some(rss);
        archived || (settled && rss > low + TRIM_ABOVE)
    }

    /// After a trim, with the resident size then.
    pub fn trimmed(&mut self, rss: u64) {
        self.low = Some(rss);
        self.last = Some(rss);
    }
}

/// This process's resident size in bytes (0 where it cannot be read).
pub fn resident_bytes() -> u64 {
    // VmRSS is in kB whatever the page size.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let kb = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Releases the allocator's free pages.
pub fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a plain integer and only changes the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_archiving_or_once_the_resident_size_grew_by_the_threshold_and_settled() {
        let mut r = TrimRule::default();
        assert!(!r.due(50 << 20, false), "the first sample sets the level");
        assert!(!r.due(50 << 20, false), "no growth, no trim");
        assert!(r.due(50 << 20, true), "archiving trims");
        r.trimmed(40 << 20);
        assert!(!r.due(47 << 20, false));
        assert!(
            !r.due(60 << 20, false),
            "still growing: a burst is under way"
        );
        assert!(
            r.due(60 << 20, false),
            "grew past the threshold and settled"
        );
        // A trim that gave nothing back (the growth was live data) sets the new level.
        r.trimmed(60 << 20);
        assert!(!r.due(60 << 20, false));
        assert!(resident_bytes() > 0);
    }
}
