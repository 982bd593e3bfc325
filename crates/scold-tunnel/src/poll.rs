//! The packet engine's own readiness loop: a level-triggered epoll set and an eventfd
//! that wakes it.
//!
//! Why not the tokio reactor: the engine is one thread's worth of work that must react to
//! a packet as fast as the kernel can wake a thread. Under tokio every packet costs a
//! wake-up of a runtime worker, a task poll that re-polls every branch of the loop, an
//! extra `epoll_wait` for the write-readiness edge that each send raises, and a final
//! read that meets `EAGAIN` (edge triggering needs it). A dedicated thread blocked in a
//! level-triggered `epoll_wait` does none of that: the kernel wakes it, it reads what is
//! there, sends it, and sleeps again. mio, tokio's poller, offers edge triggering only.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A level-triggered epoll set; each registered descriptor carries a caller token.
pub struct Poller {
    epfd: OwnedFd,
}

/// One ready descriptor: its token, and whether it reported an error or hang-up.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub token: u64,
    pub error: bool,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call; a non-negative result is a fresh descriptor we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for input (level-triggered) under `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event; the kernel copies it.
        let r = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: EPOLL_CTL_DEL ignores the event argument (non-null for old kernels).
        let r = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (zero: just look) and fills `out` with what is ready;
    /// returns how many. An interrupted wait returns 0.
    pub fn wait(&self, out: &mut [Ready], timeout: Duration) -> io::Result<usize> {
        const MAX: usize = 16;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let cap = out.len().min(MAX);
        // Round up, so a timer is never woken for a moment before it is due.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `evs` has room for `cap` events; the kernel writes at most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                evs.as_mut_ptr(),
                cap as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        for (o, e) in out.iter_mut().zip(&evs[..n]) {
            let events = e.events;
            *o = Ready {
                token: e.u64,
                error: events & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0,
            };
        }
        Ok(n)
    }
}

/// Wakes a [`Poller`] from another thread (an eventfd registered in it).
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call; a non-negative result is a fresh descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker {
            // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the eventfd readable until [`Waker::reset`].
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64, as eventfd requires. The only failure
        // (counter overflow, EAGAIN) means it is readable already.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Consumes pending wake-ups.
    pub fn reset(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN (nothing pending) is harmless.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Waits until `fd` can take a write, at most `timeout`; whether it can.
pub fn wait_writable(fd: RawFd, timeout: Duration) -> bool {
    wait_for(fd, libc::POLLOUT, timeout)
}

/// Waits until `fd` has input, at most `timeout`; whether it has.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    wait_for(fd, libc::POLLIN, timeout)
}

fn wait_for(fd: RawFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0 && p.revents & events != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waker_wakes_and_resets() {
        let p = Poller::new().unwrap();
        let w = Waker::new().unwrap();
        p.add(w.as_raw_fd(), 7).unwrap();
        let mut out = [Ready {
            token: 0,
            error: false,
        }; 4];
        assert_eq!(p.wait(&mut out, Duration::ZERO).unwrap(), 0);
        w.wake();
        w.wake();
        assert_eq!(p.wait(&mut out, Duration::from_secs(1)).unwrap(), 1);
        assert_eq!(out[0].token, 7);
        // Level-triggered: still ready until reset.
        assert_eq!(p.wait(&mut out, Duration::ZERO).unwrap(), 1);
        w.reset();
        assert_eq!(p.wait(&mut out, Duration::ZERO).unwrap(), 0);
        p.remove(w.as_raw_fd()).unwrap();
        w.wake();
        assert_eq!(p.wait(&mut out, Duration::ZERO).unwrap(), 0);
    }
}
