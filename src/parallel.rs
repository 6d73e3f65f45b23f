//! An ordered parallel pipeline: one producer thread hands jobs to `threads` workers with a
//! bounded number in flight, and the results are consumed in job order on the calling thread
//! (frame compression and decompression of archives), with reusable buffers.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Number of CPUs available to this process.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cancelled() -> Error {
    Error::invalid("internal: pipeline stopped")
}

/// Hands jobs to the workers; blocks while too many are in flight.
pub(crate) struct Feeder<J> {
    jobs: SyncSender<(u64, J)>,
    tokens: Receiver<()>,
    seq: u64,
}

impl<J> Feeder<J> {
    pub(crate) fn send(&mut self, job: J) -> Result<()> {
        self.tokens.recv().map_err(|_| cancelled())?;
        self.jobs.send((self.seq, job)).map_err(|_| cancelled())?;
        self.seq += 1;
        Ok(())
    }
}

/// Runs `produce` on its own thread, `threads` workers (each made by `make`) on the jobs it
/// sends, and `consume` on the results in job order on the calling thread.
pub(crate) fn pipeline<J, T, R, W, M, P, C>(
    threads: usize,
    make: M,
    produce: P,
    mut consume: C,
) -> Result<R>
where
    J: Send,
    T: Send,
    R: Send,
    W: FnMut(J) -> Result<T>,
    M: Fn() -> W + Sync,
    P: FnOnce(&mut Feeder<J>) -> Result<R> + Send,
    C: FnMut(T) -> Result<()>,
{
    let threads = threads.max(1);
    // Results are written in order: with few frames in flight, one slow (text) frame would
    // leave the other workers idle once they have raced through the fast (random, zero) ones.
    let inflight = (threads * 8 + 8).min(64).max(threads * 2 + 2);
    let (job_tx, job_rx) = sync_channel::<(u64, J)>(inflight);
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|s| {
        let (res_tx, res_rx) = channel::<(u64, Result<T>)>();
        let (tok_tx, tok_rx) = sync_channel::<()>(inflight);
        for _ in 0..inflight {
            let _ = tok_tx.send(());
        }
        for _ in 0..threads {
            let res_tx = res_tx.clone();
            let job_rx = &job_rx;
            let make = &make;
            s.spawn(move || {
                let mut work = make();
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok((seq, j)) = job else { break };
                    if res_tx.send((seq, work(j))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        let producer = s.spawn(move || {
            let mut f = Feeder {
                jobs: job_tx,
                tokens: tok_rx,
                seq: 0,
            };
            let r = produce(&mut f);
            (r, f.seq)
        });
        let mut result = Ok(());
        let mut next = 0u64;
        let mut pending = BTreeMap::new();
        'outer: for (seq, r) in res_rx.iter() {
            pending.insert(seq, r);
            while let Some(r) = pending.remove(&next) {
                next += 1;
                match r.and_then(&mut consume) {
                    Ok(()) => {
                        let _ = tok_tx.send(());
                    }
                    Err(e) => {
                        result = Err(e);
                        break 'outer;
                    }
                }
            }
        }
        drop(tok_tx);
        drop(res_rx);
        let (produced, sent) = producer
            .join()
            .map_err(|_| Error::invalid("internal: a worker thread panicked"))?;
        result?;
        let r = produced?;
        if next != sent {
            return Err(Error::invalid("internal: a frame was lost"));
        }
        Ok(r)
    })
}

/// Reusable buffers, so that big buffers are not allocated (and faulted in) per job.
#[derive(Default)]
pub(crate) struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    pub(crate) fn take(&self) -> Vec<u8> {
        let mut v = self
            .0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        v.clear();
        v
    }

    pub(crate) fn put(&self, v: Vec<u8>) {
        if let Ok(mut p) = self.0.lock() {
            p.push(v);
        }
    }
}
