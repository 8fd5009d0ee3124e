//! The agent side of a simulated machine, and an in-memory queue server
//! that plays it: tasks wait in FIFO queues, workers register, pull, finish.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use flockd_core::Clock;
use flockd_core::Millis;
use flockd_core::{QueueObservation, QueueSource, QueueState, SourceError, Worker};

/// What the agent on a simulated machine does, against whatever plays the
/// queue server: [`SimQueue`] in simulations and tests, the in-process
/// ClearML-compatible server for `flockd dev`. The world calls these with
/// its own lock held: implementations must not call back into the world.
pub trait Agents: Send + Sync {
    /// The machine finished booting: its agent registers `worker`, serving
    /// `queues`.
    fn register(&self, worker: &str, queues: &[String], now: Millis);
    /// The (idle) agent asks for work: the oldest pending task of the first
    /// of `queues` that has one.
    fn pull(&self, worker: &str, queues: &[String], now: Millis) -> Option<PulledTask>;
    /// The task ran to the end.
    fn finish(&self, worker: &str, task: &str, now: Millis);
    /// The machine died under the task: it goes back to the front of its queue.
    fn requeue(&self, worker: &str, task: &str, now: Millis);
    /// The machine is gone. Its agent stops heartbeating; what the server
    /// does about the worker record is the server's business (ClearML keeps
    /// listing it until it times out).
    fn unregister(&self, worker: &str, now: Millis);
    /// When the next task after `after` becomes pending, if known ahead (a
    /// replayed trace), so the world can hand it to an idle agent at that
    /// exact moment rather than at its next step.
    fn next_arrival_after(&self, _after: Millis) -> Option<Millis> {
        None
    }
}

/// A task an agent took, with how long it will run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledTask {
    pub id: String,
    pub duration_ms: Millis,
}

/// One task's life in a [`SimQueue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub id: String,
    pub queue: String,
    pub enqueued_at: Millis,
    pub duration_ms: Millis,
    /// When a worker first took it, and which.
    pub first_started: Option<(Millis, String)>,
    pub finished_at: Option<Millis>,
    /// Times a dying machine sent it back to its queue.
    pub interruptions: u32,
}

impl TaskRecord {
    /// From enqueue to the first start (what a user waits before anything runs).
    pub fn wait_ms(&self) -> Option<Millis> {
        self.first_started.as_ref().map(|(t, _)| t.saturating_sub(self.enqueued_at))
    }
}

#[derive(Debug)]
struct WorkerRecord {
    queues: Vec<String>,
    task: Option<usize>,
    registered_at: Millis,
    /// Set when its machine died: listed (idle) until the worker timeout.
    gone_at: Option<Millis>,
}

#[derive(Debug, Default)]
struct Book {
    tasks: Vec<TaskRecord>,
    /// Enqueued for a future moment: (at, task index).
    future: BinaryHeap<Reverse<(Millis, usize)>>,
    pending: BTreeMap<String, VecDeque<usize>>,
    workers: BTreeMap<String, WorkerRecord>,
    unreachable: bool,
}

impl Book {
    fn promote(&mut self, now: Millis) {
        while let Some(Reverse((at, i))) = self.future.peek().copied() {
            if at > now {
                break;
            }
            self.future.pop();
            let queue = self.tasks[i].queue.clone();
            self.pending.entry(queue).or_default().push_back(i);
        }
    }

    fn task_index(id: &str) -> Option<usize> {
        id.strip_prefix("task-")?.parse::<usize>().ok()?.checked_sub(1)
    }

    fn expire(&mut self, now: Millis, timeout: Millis) {
        self.workers.retain(|_, w| w.gone_at.is_none_or(|g| now.saturating_sub(g) < timeout));
    }
}

/// An in-memory queue server: a [`QueueSource`] for the controller and the
/// [`Agents`] of simulated machines. Cheap to clone (one shared book).
#[derive(Clone)]
pub struct SimQueue {
    book: Arc<Mutex<Book>>,
    clock: Arc<dyn Clock>,
    worker_timeout_ms: Millis,
}

impl SimQueue {
    /// A worker whose machine died stays listed (idle) for 10 minutes, like
    /// ClearML's worker timeout, unless flockd unregisters it first.
    pub const DEFAULT_WORKER_TIMEOUT_MS: Millis = 600_000;

    pub fn new(clock: Arc<dyn Clock>) -> Self {
        SimQueue { book: Default::default(), clock, worker_timeout_ms: Self::DEFAULT_WORKER_TIMEOUT_MS }
    }

    pub fn with_worker_timeout(mut self, timeout_ms: Millis) -> Self {
        self.worker_timeout_ms = timeout_ms;
        self
    }

    /// Adds a task that becomes pending at `at` (now or later) and runs for
    /// `duration_ms` once a worker takes it. Returns its id (`task-000001`, …).
    pub fn enqueue(&self, queue: &str, at: Millis, duration_ms: Millis) -> String {
        let mut book = self.book.lock().unwrap();
        let index = book.tasks.len();
        let id = format!("task-{:06}", index + 1);
        book.tasks.push(TaskRecord {
            id: id.clone(),
            queue: queue.to_string(),
            enqueued_at: at,
            duration_ms,
            first_started: None,
            finished_at: None,
            interruptions: 0,
        });
        book.future.push(Reverse((at, index)));
        id
    }

    /// Makes every call of the [`QueueSource`] fail (`false`) or work again.
    pub fn set_reachable(&self, reachable: bool) {
        self.book.lock().unwrap().unreachable = !reachable;
    }

    /// Every task so far, in enqueue order.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        self.book.lock().unwrap().tasks.clone()
    }

    /// Pending tasks (already due, not taken) of one queue.
    pub fn pending(&self, queue: &str) -> usize {
        let mut book = self.book.lock().unwrap();
        book.promote(self.clock.now());
        book.pending.get(queue).map_or(0, VecDeque::len)
    }

    /// The worker ids listed right now, sorted.
    pub fn worker_ids(&self) -> Vec<String> {
        let mut book = self.book.lock().unwrap();
        book.expire(self.clock.now(), self.worker_timeout_ms);
        book.workers.keys().cloned().collect()
    }

    /// Every task that was ever enqueued has finished.
    pub fn all_finished(&self) -> bool {
        self.book.lock().unwrap().tasks.iter().all(|t| t.finished_at.is_some())
    }

    fn check_reachable(book: &Book) -> Result<(), SourceError> {
        if book.unreachable {
            Err(SourceError::Unreachable("simulated outage of the queue server".into()))
        } else {
            Ok(())
        }
    }

    fn listed_workers(&self, book: &mut Book) -> Vec<Worker> {
        book.expire(self.clock.now(), self.worker_timeout_ms);
        let Book { workers, tasks, .. } = book;
        workers
            .iter()
            .map(|(id, w)| Worker {
                id: id.clone(),
                queues: w.queues.clone(),
                task: w.task.map(|i| tasks[i].id.clone()),
                registered_at: Some(w.registered_at),
            })
            .collect()
    }
}

#[async_trait]
impl QueueSource for SimQueue {
    async fn observe(&self, queues: &[String]) -> Result<QueueObservation, SourceError> {
        let now = self.clock.now();
        let mut book = self.book.lock().unwrap();
        Self::check_reachable(&book)?;
        book.promote(now);
        let states = queues
            .iter()
            .map(|name| {
                let pending = book.pending.get(name);
                QueueState {
                    name: name.clone(),
                    pending: pending.map_or(0, |p| p.len() as u32),
                    oldest_wait_ms: pending
                        .and_then(|p| p.iter().map(|&i| book.tasks[i].enqueued_at).min())
                        .map_or(0, |at| now.saturating_sub(at)),
                }
            })
            .collect();
        let workers = self.listed_workers(&mut book);
        Ok(QueueObservation { queues: states, workers })
    }

    async fn unregister_worker(&self, worker_id: &str) -> Result<(), SourceError> {
        let mut book = self.book.lock().unwrap();
        Self::check_reachable(&book)?;
        book.workers.remove(worker_id);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<Worker>, SourceError> {
        let mut book = self.book.lock().unwrap();
        Self::check_reachable(&book)?;
        Ok(self.listed_workers(&mut book))
    }
}

impl Agents for SimQueue {
    fn register(&self, worker: &str, queues: &[String], now: Millis) {
        let mut book = self.book.lock().unwrap();
        book.workers.insert(
            worker.to_string(),
            WorkerRecord { queues: queues.to_vec(), task: None, registered_at: now, gone_at: None },
        );
    }

    fn pull(&self, worker: &str, queues: &[String], now: Millis) -> Option<PulledTask> {
        let mut book = self.book.lock().unwrap();
        book.promote(now);
        let index = queues.iter().find_map(|q| book.pending.get_mut(q).and_then(VecDeque::pop_front))?;
        // An agent that flockd unregistered while it lived heartbeats back in.
        let record = book.workers.entry(worker.to_string()).or_insert_with(|| WorkerRecord {
            queues: queues.to_vec(),
            task: None,
            registered_at: now,
            gone_at: None,
        });
        record.task = Some(index);
        let task = &mut book.tasks[index];
        task.first_started.get_or_insert_with(|| (now, worker.to_string()));
        Some(PulledTask { id: task.id.clone(), duration_ms: task.duration_ms })
    }

    fn finish(&self, worker: &str, task: &str, now: Millis) {
        let mut book = self.book.lock().unwrap();
        if let Some(i) = Book::task_index(task) {
            book.tasks[i].finished_at = Some(now);
        }
        if let Some(w) = book.workers.get_mut(worker) {
            w.task = None;
        }
    }

    fn requeue(&self, worker: &str, task: &str, _now: Millis) {
        let mut book = self.book.lock().unwrap();
        let Some(i) = Book::task_index(task) else { return };
        book.tasks[i].interruptions += 1;
        let queue = book.tasks[i].queue.clone();
        book.pending.entry(queue).or_default().push_front(i);
        if let Some(w) = book.workers.get_mut(worker) {
            w.task = None;
        }
    }

    fn unregister(&self, worker: &str, now: Millis) {
        let mut book = self.book.lock().unwrap();
        if let Some(w) = book.workers.get_mut(worker) {
            w.task = None;
            w.gone_at = Some(now);
        }
    }

    fn next_arrival_after(&self, after: Millis) -> Option<Millis> {
        let mut book = self.book.lock().unwrap();
        book.promote(after);
        book.future.peek().map(|Reverse((at, _))| *at)
    }
}
