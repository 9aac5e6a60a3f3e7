//! Giving back the code a burst of work paged in, once the daemon is idle again.
//!
//! Most of the daemon's resident memory is its own executable, not its heap: a re-issue runs
//! TLS, ACME, X.509 and the server drivers, and the kernel maps that code in 64 KiB at a time
//! (fault-around), so after five heals some 11 MiB of the 15 MiB binary stay resident against
//! about 1.3 MiB of heap. After [`AFTER`] without work the daemon tells the kernel it no longer
//! needs those pages (`madvise(MADV_PAGEOUT)` on the executable's read-only mappings). They are
//! clean copies of the file: nothing is lost, and what the next job runs is read back (from the
//! page cache while it still holds them). What an idle daemon runs — the event loop, timers,
//! inotify — pages back in within a few wake-ups: about 3.5 MiB resident in all.
//!
//! Linux 5.4 or later; on an older kernel the advice is refused and nothing changes.

use std::time::Duration;

use nix::sys::mman::{MmapAdvise, madvise};

/// How long the daemon has been without work before it pages its code out.
pub(super) const AFTER: Duration = Duration::from_secs(10);

/// The largest `/proc/self/maps` read (a few hundred lines for this process).
const MAPS_CAP: usize = 1 << 20;

/// Page out the executable's read-only mappings; the number of bytes advised.
// The crate's one `unsafe`: madvise has no safe form, and this use cannot change memory the
// program sees (see SAFETY below).
#[allow(unsafe_code)]
pub(super) fn page_out_code() -> usize {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let Ok(Some(maps)) =
        crate::files::read_capped(std::path::Path::new("/proc/self/maps"), MAPS_CAP)
    else {
        return 0;
    };
    let exe = exe.to_string_lossy();
    let mut advised = 0;
    for (start, len) in code_mappings(&String::from_utf8_lossy(&maps), &exe) {
        let Some(addr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: the range is a whole mapping of this process, read from /proc/self/maps, and
        // not writable: paging it out only drops clean copies of the file, which the kernel
        // reads back on the next access. The contents seen by the program never change.
        match unsafe { madvise(addr, len, MmapAdvise::MADV_PAGEOUT) } {
            Ok(()) => advised += len,
            Err(e) => {
                log::debug!("cannot page out idle code: {e}");
                break;
            }
        }
    }
    advised
}

/// The read-only mappings of `exe` in a `/proc/PID/maps` text: (start address, length).
fn code_mappings<'a>(maps: &'a str, exe: &'a str) -> impl Iterator<Item = (usize, usize)> + 'a {
    maps.lines().filter_map(move |line| {
        // "start-end perms offset dev inode path"; the path may contain spaces.
        let mut fields = line.splitn(6, ' ');
        let range = fields.next()?;
        let perms = fields.next()?;
        let path = fields.nth(3)?.trim_start();
        if path != exe || perms.as_bytes().get(1) != Some(&b'-') {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        (end > start).then(|| (start, end - start))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_read_only_mappings_are_taken() {
        let maps = "\
55954d58b000-55954d8e7000 r--p 00000000 fe:01 1234   /usr/sbin/certagent
55954d8e7000-55954e422000 r-xp 0035c000 fe:01 1234   /usr/sbin/certagent
55954e471000-55954e475000 rw-p 00ee6000 fe:01 1234   /usr/sbin/certagent
55954e475000-55954e476000 rw-p 00000000 00:00 0
7f0000000000-7f0000010000 r-xp 00000000 fe:01 99     /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000020000-7f0000030000 r-xp 00000000 fe:01 77     /usr/sbin/certagent-other
7f0000040000-7f0000050000 r-xp 00000000 fe:01 78     /opt/my dir/certagent (deleted)
";
        let got: Vec<_> = code_mappings(maps, "/usr/sbin/certagent").collect();
        assert_eq!(
            got,
            [(0x55954d58b000, 0x35c000), (0x55954d8e7000, 0xb3b000)]
        );
        // A path with spaces, and a binary replaced on disk by an upgrade.
        let got: Vec<_> = code_mappings(maps, "/opt/my dir/certagent (deleted)").collect();
        assert_eq!(got, [(0x7f0000040000, 0x10000)]);
    }

    #[test]
    fn paging_out_keeps_the_code_working_and_lowers_what_is_resident() {
        fn resident_exe_kib() -> u64 {
            let exe = std::fs::read_link("/proc/self/exe").unwrap();
            let exe = exe.to_string_lossy().into_owned();
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let (mut ours, mut total) = (false, 0);
            for line in smaps.lines() {
                if let Some(rss) = line.strip_prefix("Rss:") {
                    if ours {
                        total += rss.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
                    }
                } else if line.contains('-') && line.split_whitespace().count() >= 5 {
                    ours = line.ends_with(&*exe)
                        && line
                            .split_whitespace()
                            .nth(1)
                            .is_some_and(|p| !p.contains('w'));
                }
            }
            total
        }
        let before = resident_exe_kib();
        assert!(before > 0, "the test binary's code is resident");
        let advised = page_out_code();
        assert!(
            advised > 0,
            "the executable's read-only mappings were advised"
        );
        let after = resident_exe_kib();
        assert!(
            after < before,
            "resident code {before} KiB before, {after} KiB after paging out"
        );
        // The code still runs: this assertion, the formatting and the allocator page back in.
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
