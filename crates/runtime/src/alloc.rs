//! The memory allocator of a process, chosen once by what the process is.
//!
//! The API server allocates and frees small objects from several threads at a high rate (a
//! create parses, defaults, validates and serialises JSON several times). Under glibc's
//! malloc, `apiserver-bench` spent a quarter of the server's CPU in malloc/free and waited on
//! its arena locks, and the memory freed after a burst stayed in the process. mimalloc does
//! the same work in less time and, told to return freed pages at once, holds less memory
//! (docs/apiserver.md, "Benchmark").
//!
//! `kubevirt-rs` is one binary for every role, and its launchers (one per VM, mostly idle)
//! are measured by how little memory they add beside QEMU: they keep the system allocator.
//! [`ByRole`] reads the process's own command line on its first allocation, before anything
//! else has been allocated, and sends every allocation of the process's life to the one
//! allocator that answer chose, so no block is ever freed by an allocator that did not
//! allocate it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_int, c_long};
use std::sync::atomic::{AtomicU8, Ordering};

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

// mimalloc's option numbers (`mi_option_e` in mimalloc.h of the v3 sources that
// libmimalloc-sys builds; the crate declares the enum only for v2). The test below reads
// their defaults back before setting them, so a renumbering fails it. Being set here, the
// `MIMALLOC_PURGE_DELAY` and `MIMALLOC_ARENA_EAGER_COMMIT` environment variables do not
// tune the server.
const MI_OPTION_ARENA_EAGER_COMMIT: c_int = 4;
const MI_OPTION_PURGE_DELAY: c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
}

/// A global allocator that is mimalloc for the processes `wants_mimalloc` picks by their
/// first argument (`argv[1]`, the subcommand), and the system allocator for all others.
pub struct ByRole {
    mode: AtomicU8,
    wants_mimalloc: fn(&[u8]) -> bool,
}

impl ByRole {
    pub const fn new(wants_mimalloc: fn(&[u8]) -> bool) -> Self {
        Self {
            mode: AtomicU8::new(UNDECIDED),
            wants_mimalloc,
        }
    }

    /// Whether this process allocates with mimalloc (deciding if nothing has been allocated).
    pub fn is_mimalloc(&self) -> bool {
        self.mode() == MIMALLOC
    }

    fn mode(&self) -> u8 {
        match self.mode.load(Ordering::Acquire) {
            UNDECIDED => self.decide(),
            m => m,
        }
    }

    /// Runs before the process's first allocation, so it allocates nothing: the command line
    /// is read with raw calls into a buffer on the stack. Threads that race here read the
    /// same command line and reach the same answer; the first one stored wins either way.
    #[cold]
    fn decide(&self) -> u8 {
        let mut buf = [0u8; 4096];
        let arg1 = read_cmdline(&mut buf)
            .split(|b| *b == 0)
            .nth(1)
            .unwrap_or_default();
        let mode = if (self.wants_mimalloc)(arg1) {
            tune_mimalloc();
            MIMALLOC
        } else {
            SYSTEM
        };
        match self
            .mode
            .compare_exchange(UNDECIDED, mode, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => mode,
            Err(decided) => decided,
        }
    }
}

/// Return freed memory to the kernel at once instead of after a second, and commit arena
/// memory as it is used: the server's resident memory then follows what it holds (measured
/// in docs/apiserver.md). Set before mimalloc's first allocation, so its first arena is
/// made with them too.
pub fn tune_mimalloc() {
    // SAFETY: plain setters of mimalloc's option table; valid option numbers (see the test).
    unsafe {
        mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

/// `/proc/self/cmdline` (NUL-separated arguments) into `buf`, without allocating; empty if it
/// cannot be read, and cut at the buffer's size.
fn read_cmdline(buf: &mut [u8]) -> &[u8] {
    // SAFETY: a NUL-terminated path, a buffer we own and its length; the descriptor is ours
    // and closed before returning.
    unsafe {
        let fd = libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return &[];
        }
        let mut len = 0;
        while len < buf.len() {
            let n = libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len);
            if n > 0 {
                len += n as usize;
            } else if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            } else {
                break;
            }
        }
        libc::close(fd);
        &buf[..len]
    }
}

// SAFETY: every call goes to the one allocator `mode` chose, which never changes once chosen,
// so each block is resized and freed by the allocator that made it.
unsafe impl GlobalAlloc for ByRole {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if self.mode() == MIMALLOC {
                mimalloc::MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if self.mode() == MIMALLOC {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe {
            if self.mode() == MIMALLOC {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if self.mode() == MIMALLOC {
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(_: &[u8]) -> bool {
        true
    }
    fn never(_: &[u8]) -> bool {
        false
    }

    /// One test, so that mimalloc's defaults are read before anything in this process tunes
    /// them: a renumbering of its options would read other options' defaults here.
    #[test]
    fn the_role_is_read_from_the_command_line_and_mimalloc_is_tuned_before_use() {
        let (eager, purge) = unsafe {
            (
                mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT),
                mi_option_get(MI_OPTION_PURGE_DELAY),
            )
        };
        assert_eq!((eager, purge), (2, 1000), "mimalloc's defaults");

        let mut buf = [0u8; 4096];
        let args: Vec<Vec<u8>> = read_cmdline(&mut buf)
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let std_args: Vec<Vec<u8>> = std::env::args_os()
            .map(|a| a.into_encoded_bytes())
            .collect();
        assert_eq!(args, std_args);

        let system = ByRole::new(never);
        assert!(!system.is_mimalloc());
        let (eager, purge) = unsafe {
            (
                mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT),
                mi_option_get(MI_OPTION_PURGE_DELAY),
            )
        };
        assert_eq!((eager, purge), (2, 1000), "tuned without mimalloc");
        let mi = ByRole::new(wants);
        assert!(mi.is_mimalloc());
        let (eager, purge) = unsafe {
            (
                mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT),
                mi_option_get(MI_OPTION_PURGE_DELAY),
            )
        };
        assert_eq!((eager, purge), (0, 0));

        // Blocks come from the chosen allocator and go back to it.
        for alloc in [&mi, &system] {
            let layout = Layout::from_size_align(100, 16).expect("layout");
            unsafe {
                let p = alloc.alloc_zeroed(layout);
                assert!(!p.is_null() && *p == 0);
                p.write(7);
                let p = alloc.realloc(p, layout, 5000);
                assert!(!p.is_null() && *p == 7);
                alloc.dealloc(p, Layout::from_size_align(5000, 16).expect("layout"));
            }
        }
    }
}
