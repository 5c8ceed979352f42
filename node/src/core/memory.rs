//! Hands memory freed by archiving back to the operating system.
//!
//! glibc keeps freed blocks in its arenas; after retention moves thousands of tasks out of the
//! ledger the freed pages lie scattered between live ones and the resident size stays at its
//! peak. `malloc_trim(0)` releases every whole free page of every arena. It walks the arenas
//! (milliseconds), so it runs only after the archive grew.

#![allow(unsafe_code)]

/// Releases the allocator's free pages.
pub fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a plain integer and only changes the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}
